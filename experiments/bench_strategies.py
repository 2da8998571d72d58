"""Benchmark: every calibration strategy on the shared human-labelled relevance data.

    .venv/bin/python experiments/bench_strategies.py [--max-test 400] [--skip-dspy]

One grouped split of ../shared/data/relevance/dev.jsonl (by prompt); every strategy fits
on train, selects on dev and is scored on the same test rows: κ with its 95% group-
bootstrap interval, F1, selected rate, fit time and LM calls. Judges:

* the embedded SmolLM2 judge: raw, with post-hoc thresholds, with DSPy optimizers;
* the two recorded reference judges of the file (GPT-5.4, Gemma-4-31B): raw, thresholded,
  and stacked with the verifier;
* the trained verifiers alone (TF-IDF or MiniLM embeddings + logistic regression);
* stacking of everything: the embedded judge's probability, both recorded judges and a
  verifier's out-of-fold score.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from judgecal.calibration import CalibrationConfig
from judgecal.data import SplitSpec
from judgecal.evaluation import JudgeRecord, build_record, evaluate_record
from judgecal.experiment import ExperimentConfig, JudgeSection, prepare
from judgecal.lm import LMConfig
from judgecal.progress import rich_progress
from judgecal.strategies import STRATEGIES, FitContext, FitResult, FittedJudge, RecordedJudge, fit_strategy
from judgecal.verifier import embeddings_available

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "relevance" / "dev.jsonl"
DSPY_STRATEGIES = ("labeled_few_shot", "bootstrap_random_search", "mipro")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--max-train", type=int, default=400)
    parser.add_argument("--max-dev", type=int, default=120)
    parser.add_argument("--max-test", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-dspy", action="store_true", help="leave out the DSPy optimizers (the slowest)")
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    console = Console()
    if not args.data.exists():
        console.print(f"{args.data} is absent; this benchmark needs the shared relevance data")
        return 2

    config = ExperimentConfig(
        judge=JudgeSection(name="bench-strategies", task="relevance", data=args.data),
        lm=LMConfig(max_tokens=32),
        split=SplitSpec(
            dev=0.25,
            test=0.25,
            seed=args.seed,
            max_train_rows=args.max_train,
            max_dev_rows=args.max_dev,
            max_test_rows=args.max_test,
        ),
        calibration=CalibrationConfig(
            max_bootstrapped_demos=2, max_labeled_demos=4, num_candidate_programs=2, num_candidates=2, num_trials=4
        ),
    )
    prepared = prepare(config, log=lambda m: console.print(m, highlight=False))
    progress = rich_progress(console)
    task, split = prepared.task, prepared.split
    test = split.test.rows
    embedded = prepared.raw
    references = prepared.reference_judges

    def context(raw: FittedJudge) -> FitContext:
        ctx = prepared.context(progress, lambda m: console.print(m, highlight=False))
        ctx.raw = raw
        return ctx

    results: dict[str, tuple[FittedJudge, float, int]] = {}

    def run(label: str, strategy: str, raw: FittedJudge, params: dict | None = None) -> None:
        console.print(f"[bold]{label}[/]: fitting {strategy}")
        result: FitResult = fit_strategy(STRATEGIES[strategy], context(raw), params or {})
        results[label] = (result.judge, result.seconds, result.lm_calls)

    started = time.perf_counter()
    results["embedded raw"] = (embedded, 0.0, 0)
    run("embedded + threshold", "threshold", embedded)
    run("embedded + base_rate", "base_rate", embedded)
    if not args.skip_dspy:
        for name in DSPY_STRATEGIES:
            run(f"embedded + {name}", name, embedded)
    run("verifier (TF-IDF + LR)", "verifier", embedded)
    if embeddings_available():
        run("verifier (MiniLM embeddings + LR)", "embedding_verifier", embedded)
    for name in references:
        recorded = RecordedJudge(task, name, name)
        results[f"{name} raw"] = (recorded, 0.0, 0)
        run(f"{name} + threshold", "threshold", recorded)
        run(f"{name} + verifier stacked", "stacking", recorded, {"use_verifier": True, "use_references": False})
    run("stack: embedded + both references + verifier", "stacking", embedded, {"use_verifier": True})
    if embeddings_available():
        run(
            "stack: embedded + both references + MiniLM verifier",
            "stacking",
            embedded,
            {"use_verifier": True, "embeddings": True},
        )

    judges = {}
    costs = {}
    for label, (judge, seconds, calls) in results.items():
        verdicts = judge.predict(test, progress=progress, description=f"{label}: test")
        judges[label] = JudgeRecord(
            verdicts=[v.label for v in verdicts],
            probability=[v.probability_of(task.spec.positive) for v in verdicts],
        )
        costs[label] = (seconds, calls)
    record = build_record(
        "bench-strategies",
        "relevance",
        task.spec,
        test,
        judges,
        include_reference=False,
        data_fingerprint=split.data_fingerprint,
        split_fingerprint=split.fingerprint,
    )
    report = evaluate_record(record, baseline=None, candidate=None, n_resamples=args.resamples, seed=args.seed)

    table = Table(
        title=f"relevance: {len(test)} test rows in {report.groups} prompt groups, "
        f"human rate {report.human_rates['True']:.3f} (grouped split seed {args.seed})",
        title_justify="left",
    )
    for column in ("judge", "κ [95% interval]", "F1", "selected", "fit s", "LM calls"):
        table.add_column(column, justify="left" if column == "judge" else "right")
    for score in report.judges:
        kappa = score.metrics["kappa"]
        seconds, calls = costs[score.name]
        table.add_row(
            score.name,
            f"{kappa.value:.3f} [{kappa.low:.3f}, {kappa.high:.3f}]",
            f"{score.metrics['f1'].value:.3f}",
            f"{score.metrics['selected_rate'].value:.3f}",
            f"{seconds:.0f}",
            str(calls),
        )
    console.print(table)
    console.print(
        f"train {len(split.train)}, dev {len(split.dev)}, test {len(test)} rows; wall "
        f"{time.perf_counter() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

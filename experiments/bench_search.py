"""Benchmark of the search itself: nested evaluation on the shared relevance file.

    .venv/bin/python experiments/bench_search.py [--variants recorded,offline] [--outer-folds 7] [--first-folds 1]

Outer grouped folds by prompt: in each fold, the full search (``--strategies all``) runs on
the other prompts (split by prompt into train and dev), and the judge it selects is scored
on the fold's prompts, which nothing was fitted or selected on. Beside it, on the same
rows, every single strategy with its default settings (fitted the way ``--strategy``
fits it) and the reference judges' recorded verdicts. Two variants:

* ``recorded``: the raw judge is GPT-5.4's recorded verdict (``--recorded gpt-5.4``); the
  rows also carry Gemma-4-31B's.
* ``offline``: the embedded SmolLM2 judge, with the reference verdicts removed from the
  rows; nothing but the 135M model and the human labels.

Each row of the pooled table is a judge's verdicts on all rows, each from the fold that
held the row out: κ, F1 and selected rate with 95% group-bootstrap intervals over the
prompts, and the mean κ over folds. Wall time and LM calls are per variant (summed over
folds). With ``--checkpoint DIR`` each finished outer fold is saved, and a later run with
the same settings reads it back and goes on with the next: the offline variant takes hours.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import dspy
import numpy as np
from rich.console import Console
from rich.table import Table

from judgecal.backends.calls import LMCallCounter
from judgecal.backends.models import build_lm
from judgecal.backends.settings import LMConfig
from judgecal.calibrate.guard import RowGuard
from judgecal.calibrate.optimizers import CalibrationConfig
from judgecal.calibrate.selection import agreement
from judgecal.calibrate.strategies import resolve_strategies
from judgecal.data.rows import Dataset, load_rows
from judgecal.data.split import Split, SplitSpec
from judgecal.judges.fitted import MemoJudge, ProgramJudge, RecordedJudge
from judgecal.judges.program import JudgeProgram
from judgecal.judges.verifiers import grouped_folds
from judgecal.pipeline.calibration import final_fit
from judgecal.pipeline.config import ExperimentConfig, JudgeSection, SearchConfig
from judgecal.pipeline.results import Prepared
from judgecal.pipeline.search import search_prepared
from judgecal.report.agreement import evaluate_record
from judgecal.report.records import JudgeRecord, build_record
from judgecal.tasks.registry import resolve_task
from judgecal.workspace import LoadedModels, Workspace, set_process_environment

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "relevance" / "dev.jsonl"


def inner_split(rows: list[Any], test: list[Any], dataset: Dataset, seed: int) -> Split:
    """Train and dev by prompt from the outer training part; the outer fold is test."""
    groups = sorted({row.group for row in rows})
    order = np.random.default_rng(seed).permutation(len(groups))
    dev_groups = {groups[i] for i in order[: max(1, round(0.25 * len(groups)))]}
    return Split(
        train=dataset.subset([r for r in rows if r.group not in dev_groups]),
        dev=dataset.subset([r for r in rows if r.group in dev_groups]),
        test=dataset.subset(test),
        spec=SplitSpec(seed=seed),
        data_fingerprint=dataset.fingerprint,
    )


def run_variant(
    variant: str, dataset: Dataset, args: argparse.Namespace, console: Console, workspace: Workspace
) -> dict[str, Any]:
    task = resolve_task("relevance")
    if variant == "offline":
        dataset = dataset.subset([row.model_copy(update={"reference_judges": {}}) for row in dataset.rows])
        lm = build_lm(LMConfig(max_tokens=32), workspace.models)
        raw = MemoJudge(ProgramJudge(task, JudgeProgram(task.signature), lm, "relevance"))
        trials = args.trials_offline
    else:
        lm = None
        raw = MemoJudge(RecordedJudge(task, args.recorded, "relevance"))
        trials = args.trials_recorded
    config = ExperimentConfig(
        judge=JudgeSection(name=f"bench-{variant}", task="relevance", data=args.data),
        calibration=CalibrationConfig(max_select_rows=args.max_select_rows),
    )
    rows = list(dataset.rows)
    folds = grouped_folds(rows, args.outer_folds, args.seed)
    log = (lambda m: console.print(f"  {m}", highlight=False)) if args.verbose else (lambda m: None)
    settings = {
        "variant": variant,
        "data": dataset.fingerprint,
        **{key: getattr(args, key) for key in ("outer_folds", "seed", "recorded", "max_select_rows", "search")},
        "lm_singles": args.lm_singles,
        "trials": trials,
    }
    finished: list[dict[str, Any]] = []  # each outer fold: read back from --checkpoint, or run now
    for k, held in enumerate(folds[: args.first_folds]):
        saved = load_fold(args.checkpoint, settings, k)
        if saved is not None:
            console.print(f"{variant} fold {k + 1}/{len(folds)}: read from {args.checkpoint}", highlight=False)
            finished.append(saved)
            continue
        test = [rows[i] for i in held]
        held_set = set(held.tolist())
        split = inner_split([r for i, r in enumerate(rows) if i not in held_set], test, dataset, args.seed + k)
        guard = RowGuard.for_rows(test, [*split.train.rows, *split.dev.rows])
        prepared = Prepared(config, task, dataset, split, lm, raw, guard, False, workspace)
        search = SearchConfig(
            strategies=["all"],
            trials=trials,
            storage=f"sqlite:///{workspace.root / 'optuna.db'}",
            study_name=f"{variant}-fold{k}",
            seed=args.seed,
        )
        counter = LMCallCounter()
        selected = None
        search_seconds = None
        fold_started = time.perf_counter()
        with dspy.context(callbacks=[*dspy.settings.get("callbacks", []), counter]):
            judged = {}
            if args.search:
                report = search_prepared(prepared, search, track=False, log=log)
                assert report.calibration is not None and report.choice is not None
                judged["selected by the search"] = report.calibration.calibrated.verdicts
                selected = f"{report.choice.winner.strategy} (trial {report.choice.winner.number})"
                search_seconds = time.perf_counter() - fold_started
            specs = resolve_strategies("all", task, has_program=lm is not None)
            for spec in specs:
                if spec.calls_lm_to_fit and not args.lm_singles:
                    continue
                result = final_fit(spec, prepared, {}, log)
                judged[spec.name] = result.judge.predict(test)
        labels = {name: [v.label for v in verdicts] for name, verdicts in judged.items()}
        fold = {
            "predictions": {name: dict(zip([r.id for r in test], got, strict=True)) for name, got in labels.items()},
            "kappa": {name: agreement(task, [r.label for r in test], got) for name, got in labels.items()},
            "selected": selected,
            "seconds": time.perf_counter() - fold_started,
            "search_seconds": search_seconds,
            "lm_calls": counter.calls,
        }
        save_fold(args.checkpoint, settings, k, fold)
        finished.append(fold)
        outcome = (
            f"selected {selected}, outer κ {fold['kappa']['selected by the search']:.3f}, "
            f"search {fold['search_seconds']:.0f} s of "
            if selected
            else "single strategies only, "
        )
        console.print(
            f"{variant} fold {k + 1}/{len(folds)}: {len(test)} rows, {outcome}{fold['seconds']:.0f} s",
            highlight=False,
        )
    predictions: dict[str, dict[str, Any]] = {}
    per_fold: dict[str, list[float]] = {}
    for fold in finished:
        for name, by_id in fold["predictions"].items():
            predictions.setdefault(name, {}).update(by_id)
            per_fold.setdefault(name, []).append(fold["kappa"][name])
    judges = {name: JudgeRecord(verdicts=[by_id.get(row.id) for row in rows]) for name, by_id in predictions.items()}
    record = build_record(f"bench-{variant}", "relevance", task.spec, rows, judges)
    report = evaluate_record(record, baseline=None, candidate=None, n_resamples=args.resamples, seed=args.seed)
    return {
        "variant": variant,
        "report": report,
        "per_fold": per_fold,
        "selected": [fold["selected"] for fold in finished if fold["selected"]],
        "seconds": sum(fold["seconds"] for fold in finished),
        "lm_calls": sum(fold["lm_calls"] for fold in finished),
        "trials": trials,
    }


def fold_path(checkpoint: Path, settings: dict[str, Any], k: int) -> Path:
    return checkpoint / f"{settings['variant']}-fold{k}.json"


def load_fold(checkpoint: Path | None, settings: dict[str, Any], k: int) -> dict[str, Any] | None:
    """A finished outer fold from an earlier run with the same settings, or None.

    Folds are independent, so a run that stops (or a machine that is needed elsewhere)
    loses only the fold under way; the wall time reported is the sum over folds."""
    if checkpoint is None:
        return None
    path = fold_path(checkpoint, settings, k)
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    if saved["settings"] != settings:
        raise SystemExit(
            f"{path} was written with other settings ({saved['settings']}); use another --checkpoint folder"
        )
    return saved


def save_fold(checkpoint: Path | None, settings: dict[str, Any], k: int, fold: dict[str, Any]) -> None:
    if checkpoint is None:
        return
    checkpoint.mkdir(parents=True, exist_ok=True)
    path = fold_path(checkpoint, settings, k)
    path.with_suffix(".tmp").write_text(json.dumps({"settings": settings, "commit": commit(), **fold}, indent=1))
    path.with_suffix(".tmp").replace(path)


def commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def table(result: dict[str, Any]) -> Table:
    report = result["report"]
    searched = f"{result['trials']} trials per search" if result["selected"] else "no search"
    out = Table(
        title=f"{result['variant']}: {report.rows} rows, {report.groups} prompts; pooled outer-fold verdicts "
        f"(95% intervals over prompts); {searched}; "
        f"{result['seconds'] / 60:.1f} min, {result['lm_calls']} LM calls",
        title_justify="left",
    )
    for column in ("judge", "κ [95%]", "mean fold κ", "F1", "selected rate"):
        out.add_column(column, justify="left" if column == "judge" else "right")
    for score in sorted(report.judges, key=lambda s: -s.metrics["kappa"].value):
        name = score.name.replace("reference:", "recorded ")
        folds = result["per_fold"].get(score.name)
        out.add_row(
            name,
            f"{score.metrics['kappa'].value:.3f} [{score.metrics['kappa'].low:.3f}, {score.metrics['kappa'].high:.3f}]",
            "–" if folds is None else f"{np.mean(folds):.3f}",
            f"{score.metrics['f1'].value:.3f}",
            f"{score.metrics['selected_rate'].value:.3f}",
        )
    human = report.human_rates.get("True", float("nan"))
    out.caption = f"human rate {human:.3f}; selected per fold: " + ("; ".join(result["selected"]) or "no search")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--variants", default="recorded,offline")
    parser.add_argument("--outer-folds", type=int, default=7)
    parser.add_argument(
        "--first-folds", type=int, help="run only the first N outer folds (of --outer-folds), e.g. 1 to time one"
    )
    parser.add_argument("--trials-recorded", type=int, default=16)
    parser.add_argument("--trials-offline", type=int, default=12)
    parser.add_argument("--recorded", default="gpt-5.4")
    parser.add_argument("--max-select-rows", type=int, default=100)
    parser.add_argument(
        "--no-lm-singles",
        dest="lm_singles",
        action="store_false",
        help="skip the single-strategy rows of the DSPy optimizers (each judges every row with the model)",
    )
    parser.add_argument(
        "--no-search",
        dest="search",
        action="store_false",
        help="only the single strategies with their default settings, and the recorded verdicts (no search)",
    )
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="print every trial")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="folder where each finished outer fold is saved; a run with the same settings reads them "
        "back and goes on with the next fold",
    )
    args = parser.parse_args()
    console = Console()
    if not args.data.exists():
        console.print(f"{args.data} is absent; this benchmark needs the shared relevance data")
        return 2
    set_process_environment()
    Workspace.find().use_dspy_cache()  # the project's: a repeated benchmark is served from it
    dataset = load_rows(args.data, resolve_task("relevance").spec)
    models = LoadedModels()  # the embedded model and the encoder, loaded once for every variant
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for variant in args.variants.split(","):
            folder = Path(scratch) / variant
            (folder / "mlruns").mkdir(parents=True)
            result = run_variant(variant, dataset, args, console, Workspace(folder, models=models))
            console.print(table(result))
            results.append(result)
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "variant": r["variant"],
                        "seconds": r["seconds"],
                        "lm_calls": r["lm_calls"],
                        "selected": r["selected"],
                        "per_fold": r["per_fold"],
                        "pooled": {
                            s.name: {k: v.model_dump() for k, v in s.metrics.items()} for s in r["report"].judges
                        },
                    }
                    for r in results
                ],
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

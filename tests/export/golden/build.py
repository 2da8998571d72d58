"""Writes the saved bundles that ``tests/export/test_golden_bundles.py`` loads.

Each folder holds a bundle (``judge.json``) saved by judgecal as it was when the folder
was written, and ``expected.json``: rows and the verdicts that judge gave them then. The
test rebuilds every judge from its bundle and requires the same verdicts, so a change to
how judges are rebuilt from their state cannot change what a saved judge answers. Run it
again only to add a kind of judge (a folder that has its ``expected.json`` is kept), never
to make the test pass:

    python tests/export/golden/build.py

To see what this version would write without touching the committed folders, write them
elsewhere and compare: ``python tests/export/golden/build.py --out /tmp/golden``. The
judges are fitted in a workspace of their own, a temporary folder: its loaded models,
sentence embeddings and DSPy's response cache start empty, so no answer comes from an
earlier run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from judgecal.backends.models import build_lm  # noqa: E402
from judgecal.backends.settings import LMConfig  # noqa: E402
from judgecal.calibrate.guard import RowGuard  # noqa: E402
from judgecal.calibrate.optimizers import CalibrationConfig  # noqa: E402
from judgecal.calibrate.strategies import STRATEGIES, StrategyEnv, fit_judge  # noqa: E402
from judgecal.export.bundle import bundle_from_judge, save_bundle  # noqa: E402
from judgecal.judges.embeddings import SentenceEncoder  # noqa: E402
from judgecal.judges.fitted import MemoJudge, ProgramJudge, RecordedJudge  # noqa: E402
from judgecal.judges.program import JudgeProgram  # noqa: E402
from judgecal.workspace import Workspace, set_process_environment  # noqa: E402
from tests.helpers import PAIRWISE, RELEVANCE, demo_split, pair_rows, recorded_rows  # noqa: E402


def verdict_json(verdict) -> dict:
    return {
        "label": verdict.label,
        "confidence": verdict.confidence,
        "probabilities": verdict.probabilities,
        "error": verdict.error,
    }


def row_json(row) -> dict:
    return {"id": row.id, "inputs": row.inputs, "reference_judges": row.reference_judges}


def save(out: Path, name: str, judge, lm_config: LMConfig, rows) -> None:
    folder = out / name
    save_bundle(bundle_from_judge(judge, lm_config, calibration={"strategy": name}), folder)
    verdicts = judge.predict(list(rows))
    expected = {"rows": [row_json(r) for r in rows], "verdicts": [verdict_json(v) for v in verdicts]}
    (folder / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    print(name, [v.label for v in verdicts])


def recorded(out: Path, workspace: Workspace, task, dataset, source: str, strategies: list[tuple]) -> None:
    rows = list(dataset.rows)
    train, judged = rows[: len(rows) * 3 // 4], rows  # every row: cuts show in verdicts near them
    raw = MemoJudge(RecordedJudge(task, source, "golden"))
    references = tuple(sorted({n for r in rows for n in r.reference_judges}))
    encoder = SentenceEncoder.for_workspace(workspace)
    env = StrategyEnv(task=task, raw=raw, references=references, settings=CalibrationConfig(), encoder=encoder)
    for name, strategy, params in strategies:
        if (out / name / "expected.json").exists():
            continue
        result = fit_judge(STRATEGIES[strategy], env, params, train, None, RowGuard.for_rows([], train))
        save(out, name, result.judge, LMConfig(), judged)


def build(out: Path, workspace: Workspace) -> None:
    """Every golden folder that ``out`` lacks, its judge fitted in ``workspace``."""
    recorded(
        out,
        workspace,
        RELEVANCE,
        recorded_rows(),
        "strict",
        [
            ("recorded-threshold", "threshold", {}),
            ("recorded-base_rate", "base_rate", {}),
            ("tfidf-verifier", "verifier", {}),
            ("embedding-verifier", "embedding_verifier", {}),
            ("embedding-verifier-gradient-boosting", "embedding_verifier", {"head": "gradient_boosting"}),
            ("recorded-stacking", "stacking", {}),
            ("recorded-stacking-tfidf-embedding-gb", "stacking", {"verifiers": ("tfidf", "embedding_gb")}),
        ],
    )
    pairs = pair_rows()
    pairs_with_reference = replace(
        pairs,
        rows=tuple(
            r.model_copy(update={"reference_judges": {"first": "A" if i % 3 else r.label}})
            for i, r in enumerate(pairs.rows)
        ),
    )
    recorded(
        out,
        workspace,
        PAIRWISE,
        pairs_with_reference,
        "first",
        [("pairwise-tfidf-verifier", "verifier", {}), ("pairwise-recorded-stacking", "stacking", {})],
    )

    # Judges that call the embedded model: a compiled program, a cut on its P(yes), both orders.
    lm_config = LMConfig(max_tokens=32)
    lm = build_lm(lm_config, workspace.models)
    _dataset, split = demo_split("relevance", "relevance_demo.jsonl", 16)
    raw = MemoJudge(ProgramJudge(RELEVANCE, JudgeProgram(RELEVANCE.signature), lm, "golden"))
    env = StrategyEnv(task=RELEVANCE, raw=raw, lm=lm, settings=CalibrationConfig(max_labeled_demos=2))
    train, dev, test = list(split.train.rows), list(split.dev.rows), list(split.test.rows)[:6]
    guard = RowGuard.for_rows(test, [*train, *dev])
    for strategy in ("labeled_few_shot", "threshold"):
        if (out / f"embedded-{strategy}" / "expected.json").exists():
            continue
        result = fit_judge(STRATEGIES[strategy], env, {}, train, dev if strategy != "threshold" else None, guard)
        save(out, f"embedded-{strategy}", result.judge, lm_config, test)
    if (out / "embedded-order_swap" / "expected.json").exists():
        return
    _, pair_split = demo_split("pairwise", "pandalm/pandalm_test.jsonl", 8)
    raw_pairs = MemoJudge(ProgramJudge(PAIRWISE, JudgeProgram(PAIRWISE.signature), lm, "golden"))
    env = StrategyEnv(task=PAIRWISE, raw=raw_pairs, lm=lm)
    pair_train, pair_test = list(pair_split.train.rows), list(pair_split.test.rows)[:4]
    result = fit_judge(STRATEGIES["order_swap"], env, {}, pair_train, None, RowGuard.for_rows(pair_test, pair_train))
    save(out, "embedded-order_swap", result.judge, lm_config, pair_test)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the golden bundles and the verdicts they give.")
    parser.add_argument("--out", type=Path, default=HERE, help="where to write the folders (default: beside this file)")
    args = parser.parse_args(argv)
    set_process_environment()
    with tempfile.TemporaryDirectory(prefix="golden-workspace-") as root:
        workspace = Workspace(Path(root))
        workspace.use_dspy_cache()
        build(args.out.resolve(), workspace)


if __name__ == "__main__":
    main()

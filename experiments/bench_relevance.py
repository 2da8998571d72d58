"""Benchmark: raw vs calibrated embedded judge on the shared human-labelled relevance data.

    .venv/bin/python experiments/bench_relevance.py [--max-dev 80] [--max-test 300]

Splits ../shared/data/relevance/dev.jsonl by prompt group, calibrates on train/dev,
and prints the test-split table (95% group-bootstrap intervals) beside the recorded
reference judges (GPT-5.4, Gemma-4-31B) on the same test rows, with wall time and
prefix-reuse figures. The run is recorded in MLflow like any calibration (experiment
judgecal/bench-relevance), judge card included.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console

from judgecal.backends.settings import LMConfig
from judgecal.calibrate.optimizers import CalibrationConfig
from judgecal.data.split import SplitSpec
from judgecal.pipeline.calibration import run_calibration
from judgecal.pipeline.config import ExperimentConfig, JudgeSection
from judgecal.progress import rich_progress
from judgecal.report.card import terminal_table

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "relevance" / "dev.jsonl"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--optimizer", default="bootstrap_random_search")
    parser.add_argument("--candidates", type=int, default=2, help="random-search candidate programs")
    parser.add_argument("--max-dev", type=int, default=80, help="dev rows the optimizer selects on")
    parser.add_argument("--max-test", type=int, default=300, help="test rows reported on")
    parser.add_argument("--max-train", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-track", action="store_true")
    args = parser.parse_args()
    console = Console()
    if not args.data.exists():
        console.print(f"{args.data} is absent; this benchmark needs the shared relevance data")
        return 2

    config = ExperimentConfig(
        judge=JudgeSection(name="bench-relevance", task="relevance", data=args.data),
        lm=LMConfig(max_tokens=32),
        split=SplitSpec(
            dev=0.25,
            test=0.25,
            seed=args.seed,
            max_train_rows=args.max_train,
            max_dev_rows=args.max_dev,
            max_test_rows=args.max_test,
        ),
        calibration=CalibrationConfig(optimizer=args.optimizer, seed=args.seed, num_candidate_programs=args.candidates),
    )
    started = time.perf_counter()
    report = run_calibration(
        config,
        progress=rich_progress(console),
        track=not args.no_track,
        log=lambda message: console.print(message, highlight=False),
    )
    wall = time.perf_counter() - started

    if report.agreement is not None:
        console.print(terminal_table(report.agreement))
        if report.agreement.comparison is not None:
            console.print(report.agreement.comparison.statement, highlight=False)
    stats = getattr(getattr(report.lm, "engine", None), "stats", None)
    console.print(
        f"wall {wall:.0f} s · raw test {report.raw.seconds:.0f} s · calibration {report.calibration_seconds:.0f} s "
        f"({report.calibration_lm_calls} LM calls) · calibrated test {report.calibrated.seconds:.0f} s"
        + (f" · prompt tokens reused {stats.reuse_rate:.0%}" if stats is not None else "")
    )
    run = report.tracked.run_id if report.tracked is not None else "(not tracked)"
    console.print(f"calibrated program: {report_demos(report)} demos; run {run}")
    return 0


def report_demos(report) -> int:
    return sum(len(p.demos) for p in report.calibrated_program.predictors()) if report.calibrated_program else 0


if __name__ == "__main__":
    sys.exit(main())

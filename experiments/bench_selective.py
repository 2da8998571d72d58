"""Does a selective judge keep its targets on prompts it never saw? Nested evaluation on the
shared relevance file.

    .venv/bin/python experiments/bench_selective.py [--variants recorded,offline] [--outer-folds 7]

Outer grouped folds by prompt, as in ``bench_search.py``. In each outer training part the band
is chosen exactly as a calibration with ``[selective]`` chooses it: the ``[split] calibration``
share of the part's prompts is held back, the stack (``--strategy stacking``: the judge's
probability, the recorded judges, the TF-IDF and MiniLM verifiers) is fitted on the rest, and
``select_band`` chooses the band on the held-back rows (targets precision(true) >= 0.70,
precision(false) >= 0.95, delta 0.1 unless given). The judge, in its band, then answers the
outer fold's prompts: where no band met the targets it answers every row, as a calibration
exports it. Two variants, as in ``bench_search.py``:

* ``recorded``: the raw judge is GPT-5.4's recorded verdict; Gemma-4-31B's joins the stack.
* ``offline``: the embedded SmolLM2 judge, the reference verdicts removed from the rows (it
  judges every row once: about 45 minutes of CPU on 2 cores).

Each setting is a row of the table, on the same folds: the defaults, ``allow_never = true``,
``groups = "independent"``, both, a larger calibration share (settings with one share
share one fitted stack), and the band tested by a fixed sequence instead of Holm's procedure
(``procedure = "fixed-sequence"`` from 1, 2 and 4 starts, and with ``allow_never``).
Pooled over the folds, each row from the fold that held it out: coverage and each verdict's
precision with 95% group-bootstrap intervals over the prompts, each target's status on the
pooled rows, and in how many folds a band was found and each target held (the fold's
precision at or above the target, or the verdict never given).
``--checkpoint DIR`` keeps each finished fold, as ``bench_search.py`` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from bench_search import DEFAULT_DATA, inner_split, load_fold, save_fold
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from judgecal.backends.models import build_lm
from judgecal.backends.settings import LMConfig
from judgecal.calibrate.guard import RowGuard
from judgecal.calibrate.optimizers import CalibrationConfig
from judgecal.calibrate.strategies import resolve_strategies
from judgecal.data.rows import Dataset, LabeledRow, load_rows
from judgecal.data.split import Split
from judgecal.judges.fitted import FittedJudge, MemoJudge, ProgramJudge, RecordedJudge, positive_probability
from judgecal.judges.program import JudgeProgram
from judgecal.judges.verdict import Verdict, answer_key
from judgecal.judges.verifiers import grouped_folds
from judgecal.pipeline.calibration import cross_fit_verdicts, final_fit, select_band, strategy_params
from judgecal.pipeline.config import ExperimentConfig, JudgeSection, SelectiveConfig
from judgecal.pipeline.results import Prepared
from judgecal.report.selective import selective_report
from judgecal.stats.selective import BandChoice
from judgecal.tasks.registry import Task, resolve_task
from judgecal.workspace import LoadedModels, Workspace, set_process_environment

TASK = "relevance"
KEYS = ("true", "false")  # the relevance task's verdicts as spelled in JSON, positive first


DEFAULT_SHARE = 0.2  # [split] calibration's default with [selective]


class Setting(BaseModel):
    """One row of the table: the [selective] keys and the [split] calibration share a user sets."""

    name: str
    calibration: float = DEFAULT_SHARE
    groups: str = "design_effect"
    allow_never: bool = False
    procedure: str = "holm"
    starts: int = 1


SETTINGS = {
    "default": Setting(name="default"),
    "allow_never": Setting(name="allow_never = true", allow_never=True),
    "independent": Setting(name='groups = "independent"', groups="independent"),
    "allow_never_independent": Setting(
        name='allow_never = true, groups = "independent"', groups="independent", allow_never=True
    ),
    "calibration_35": Setting(name="[split] calibration = 0.35", calibration=0.35),
    **{
        f"fixed_sequence_{starts}": Setting(
            name=f'procedure = "fixed-sequence", starts = {starts}', procedure="fixed-sequence", starts=starts
        )
        for starts in (1, 2, 4)
    },
    "fixed_sequence_allow_never": Setting(
        name='procedure = "fixed-sequence", starts = 1, allow_never = true',
        procedure="fixed-sequence",
        starts=1,
        allow_never=True,
    ),
}


def calibration_split(
    part: Sequence[LabeledRow], test: Sequence[LabeledRow], dataset: Dataset, share: float, seed: int
) -> Split:
    """The outer training part as a calibration splits its data: ``share`` of its prompts
    (at least one) held back for the band, the rest into train and dev by prompt; the
    outer fold is test."""
    groups = sorted({row.group for row in part})
    order = np.random.default_rng(seed).permutation(len(groups))
    held = {groups[i] for i in order[: max(1, round(share * len(groups)))]}
    rest = [row for row in part if row.group not in held]
    split = inner_split(rest, list(test), dataset, seed)
    return dataclasses.replace(split, calibration=dataset.subset([row for row in part if row.group in held]))


def fold_outcome(
    choice: BandChoice, rows: Sequence[LabeledRow], verdicts: Sequence[Verdict], task: Task
) -> dict[str, Any]:
    """One setting on one outer fold: per row what the judge said (a verdict's key, or
    None where it abstained) and its P(true), and the fold's coverage and precisions."""
    said = [None if v.label is None else answer_key(v.label) for v in verdicts]
    human = [answer_key(row.label) for row in rows]
    scores = positive_probability(verdicts, task)
    never = {a.verdict for a in (choice.band.answers if choice.band else []) if a.threshold is None}
    precision: dict[str, float | None] = {}
    held: dict[str, bool] = {}
    for key in KEYS:
        given = [h == key for s, h in zip(said, human, strict=True) if s == key]
        precision[key] = float(np.mean(given)) if given else None
        target = choice.guarantee.precision[key]
        held[key] = key in never or not given or precision[key] >= target  # type: ignore[operator]
    return {
        "found": choice.found,
        "choice": choice.model_dump(mode="json"),
        "rows": {row.id: [s, float(p)] for row, s, p in zip(rows, said, scores, strict=True)},
        "coverage": float(np.mean([s is not None for s in said])),
        "precision": precision,
        "held": held,
    }


def run_fold(
    k: int,
    test: list[LabeledRow],
    part: list[LabeledRow],
    dataset: Dataset,
    raw: FittedJudge,
    lm: Any,
    args: argparse.Namespace,
    workspace: Workspace,
    console: Console,
) -> dict[str, Any]:
    """Every setting on one outer fold; one stack fitted per calibration share (with
    ``--band-rows cross-fit``: one stack on the whole part, and its out-of-fold verdicts,
    shared by every setting)."""
    task = resolve_task(TASK)
    spec = resolve_strategies("stacking", task, has_program=lm is not None)[0]
    log = (lambda m: console.print(f"  {m}", highlight=False)) if args.verbose else (lambda m: None)
    outcomes: dict[str, Any] = {}
    started = time.perf_counter()
    settings = [SETTINGS[name] for name in args.settings.split(",")]
    cross_fit = args.band_rows == "cross-fit"
    for share in sorted({s.calibration for s in settings}):
        if cross_fit:
            split = inner_split(part, test, dataset, args.seed + k)
            guard = RowGuard.for_rows(test, [*split.train.rows, *split.dev.rows])
        else:
            split = calibration_split(part, test, dataset, share, args.seed + k)
            assert split.calibration is not None
            guard = RowGuard.for_rows(test, [*split.train.rows, *split.dev.rows], split.calibration.rows)
        config = ExperimentConfig(
            judge=JudgeSection(name="bench-selective", task=TASK, data=args.data),
            calibration=CalibrationConfig(strategy="stacking"),
        )
        prepared = Prepared(config, task, dataset, split, lm, raw, guard, False, workspace)
        result = final_fit(spec, prepared, strategy_params(spec, config.calibration), log)
        stack = MemoJudge(result.judge)  # every setting of this share scores the same rows
        on_test = stack.predict(test)
        out_of_fold = None
        for name, setting in SETTINGS.items():
            if setting not in settings or setting.calibration != share:
                continue
            selective = SelectiveConfig(
                precision={"true": args.precision_true, "false": args.precision_false},
                delta=args.delta,
                groups=setting.groups,  # type: ignore[arg-type]
                allow_never=setting.allow_never,
                procedure=setting.procedure,  # type: ignore[arg-type]
                starts=setting.starts,
                rows=args.band_rows,
                folds=args.folds,
            )
            asked = dataclasses.replace(prepared, config=config.model_copy(update={"selective": selective}))
            if cross_fit and out_of_fold is None:
                out_of_fold = cross_fit_verdicts(asked, result, args.folds, log)
            banded = select_band(asked, dataclasses.replace(result, judge=stack), log, out_of_fold=out_of_fold)
            assert banded.band is not None
            answered = banded.result.judge.answer(on_test) if banded.selective else on_test  # type: ignore[attr-defined]
            outcomes[name] = fold_outcome(banded.band, test, answered, task)
    return fold_record(outcomes, time.perf_counter() - started)


def fold_record(outcomes: dict[str, Any], seconds: float) -> dict[str, Any]:
    """What a fold's checkpoint holds beside its settings (``bench_search.save_fold`` keeps
    those under ``settings``, so the outcomes are under a key of their own)."""
    return {"outcomes": outcomes, "seconds": seconds}


def checkpoint_settings(variant: str, dataset: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    """What a saved fold must have been run with to be read back."""
    keys = ("outer_folds", "seed", "recorded", "settings", "precision_true", "precision_false", "delta", "band_rows")
    keys += ("folds",) if args.band_rows == "cross-fit" else ()
    return {"variant": f"selective-{variant}", "data": dataset.fingerprint, **{key: getattr(args, key) for key in keys}}


def run_variant(
    variant: str, dataset: Dataset, args: argparse.Namespace, console: Console, workspace: Workspace
) -> dict[str, Any]:
    task = resolve_task(TASK)
    if variant == "offline":
        dataset = dataset.subset([row.model_copy(update={"reference_judges": {}}) for row in dataset.rows])
        lm = build_lm(LMConfig(max_tokens=32), workspace.models)
        raw: FittedJudge = MemoJudge(ProgramJudge(task, JudgeProgram(task.signature), lm, TASK))
    else:
        lm = None
        raw = MemoJudge(RecordedJudge(task, args.recorded, TASK))
    rows = list(dataset.rows)
    folds = grouped_folds(rows, args.outer_folds, args.seed)
    settings = checkpoint_settings(variant, dataset, args)
    finished = []
    for k, held in enumerate(folds):
        saved = load_fold(args.checkpoint, settings, k)
        if saved is None:
            held_set = set(held.tolist())
            test = [rows[i] for i in held]
            part = [r for i, r in enumerate(rows) if i not in held_set]
            saved = run_fold(k, test, part, dataset, raw, lm, args, workspace, console)
            save_fold(args.checkpoint, settings, k, saved)
            where = f"{saved['seconds']:.0f} s"
        else:
            where = f"read from {args.checkpoint}"
        finished.append(saved)
        found = ", ".join(f"{name} {'band' if o['found'] else 'no band'}" for name, o in saved["outcomes"].items())
        console.print(f"{variant} fold {k + 1}/{len(folds)}: {found}; {where}", highlight=False)
    return {
        "variant": variant,
        "rows": len(rows),
        "seconds": sum(fold["seconds"] for fold in finished),
        "settings": {
            name: pool([fold["outcomes"][name] for fold in finished], rows, args) for name in args.settings.split(",")
        },
    }


def pool(folds: list[dict[str, Any]], rows: Sequence[LabeledRow], args: argparse.Namespace) -> dict[str, Any]:
    """One setting over the folds: each row's answer from the fold that held it out, with
    group-bootstrap intervals over the prompts; per target, its status on the pooled rows
    and the folds where it held."""
    said = {row_id: got for fold in folds for row_id, got in fold["rows"].items()}
    kept = [row for row in rows if row.id in said]
    choice = BandChoice.model_validate(folds[0]["choice"])
    labels = [True, False]
    verdicts = [None if said[row.id][0] is None else said[row.id][0] == "true" for row in kept]
    report = selective_report(
        choice,
        labels=labels,
        human=[row.label for row in kept],
        verdicts=verdicts,
        scores=np.array([said[row.id][1] for row in kept]),
        groups=[row.group for row in kept],
        n_resamples=args.resamples,
        seed=args.seed,
    )
    targets = choice.guarantee.precision
    status = {}
    for key in KEYS:
        estimate = report.precision[key]
        if report.answered[key] == 0:
            status[key] = "never given"
        elif estimate.value < targets[key]:
            status[key] = "missed"
        else:
            status[key] = "held" if estimate.low >= targets[key] else "not settled"
    banded = [fold for fold in folds if fold["found"]]
    coverage = report.coverage
    aim = all(status[key] in ("held", "never given") for key in KEYS) and coverage.value >= args.coverage_aim
    return {
        "folds": len(folds),
        "bands": sum(fold["found"] for fold in folds),
        "coverage": coverage.model_dump(),
        "answered": report.answered,
        "precision": {key: e.model_dump() for key, e in report.precision.items()},
        "status": status,
        "held_in_folds": {key: sum(fold["held"][key] for fold in folds) for key in KEYS},
        "fold_coverage": [fold["coverage"] for fold in folds],
        "band_folds": band_folds(banded, {row.id: row for row in rows}),
        "targets": targets,
        "aim_met": aim,
    }


def band_folds(folds: list[dict[str, Any]], by_id: dict[str, LabeledRow]) -> dict[str, Any]:
    """The folds where a band was found, pooled without intervals: what the band itself did,
    apart from the folds where the judge answered every row."""
    said = [(got[0], answer_key(by_id[row_id].label)) for fold in folds for row_id, got in fold["rows"].items()]
    precision = {}
    for key in KEYS:
        given = [human == key for verdict, human in said if verdict == key]
        precision[key] = float(np.mean(given)) if given else None
    return {
        "folds": len(folds),
        "rows": len(said),
        "coverage": float(np.mean([verdict is not None for verdict, _ in said])) if said else None,
        "answered": {key: sum(verdict == key for verdict, _ in said) for key in KEYS},
        "precision": precision,
    }


def interval(estimate: dict[str, float]) -> str:
    if not np.isfinite(estimate["value"]):
        return "–"
    return f"{estimate['value']:.3f} [{estimate['low']:.3f}, {estimate['high']:.3f}]"


def table(result: dict[str, Any], args: argparse.Namespace) -> Table:
    out = Table(
        title=f"{result['variant']}, band rows {band_rows_words(args)}: {result['rows']} rows; targets "
        f"precision(true) >= {args.precision_true}, precision(false) >= {args.precision_false}, delta {args.delta}; "
        f"pooled outer folds (95% intervals over "
        f"prompts); {result['seconds'] / 60:.1f} min",
        title_justify="left",
    )
    columns = ("setting", "bands", "coverage", "precision true (rows)", "precision false (rows)", "held in folds")
    for column in (*columns, "folds with a band: coverage, precision true / false"):
        out.add_column(column, justify="left" if column == "setting" else "right")
    for name, pooled in result["settings"].items():
        n = pooled["folds"]
        cells = [
            f"{interval(pooled['precision'][key])} ({pooled['answered'][key]}): {pooled['status'][key]}" for key in KEYS
        ]
        held = ", ".join(f"{key} {pooled['held_in_folds'][key]}/{n}" for key in KEYS)
        band = pooled["band_folds"]
        alone = (
            "–"
            if not band["folds"]
            else f"{band['coverage']:.3f}, "
            + " / ".join("never" if band["precision"][key] is None else f"{band['precision'][key]:.3f}" for key in KEYS)
        )
        out.add_row(
            escape(SETTINGS[name].name), f"{pooled['bands']}/{n}", interval(pooled["coverage"]), *cells, held, alone
        )
    met = [escape(SETTINGS[name].name) for name, pooled in result["settings"].items() if pooled["aim_met"]]
    out.caption = f"both targets held on the pooled rows with coverage >= {args.coverage_aim}: " + (
        "; ".join(met) or "none"
    )
    return out


def band_rows_words(args: argparse.Namespace) -> str:
    if args.band_rows == "cross-fit":
        return f"cross-fit ({args.folds} grouped folds of the training part)"
    return "split (a calibration share of the training part)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's options (``--data``, ``--outer-folds``, ``--seed``, ``--json``,
    ``--checkpoint`` as ``bench_search.py``'s), for its own command line or another's."""
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--variants", default="recorded,offline")
    parser.add_argument("--outer-folds", type=int, default=7)
    parser.add_argument("--recorded", default="gpt-5.4")
    parser.add_argument(
        "--settings",
        help="rows of the table, from: " + ", ".join(SETTINGS) + " (default: all; with --band-rows cross-fit, all "
        "but the calibration shares)",
    )
    parser.add_argument(
        "--band-rows",
        choices=("split", "cross-fit"),
        default="split",
        help="[selective] rows: the band chosen on a calibration share of the training part's prompts, or on the "
        "out-of-fold verdicts of grouped cross-fitting over all of them",
    )
    parser.add_argument("--folds", type=int, default=5, help="[selective] folds, with --band-rows cross-fit")
    parser.add_argument("--precision-true", type=float, default=0.70)
    parser.add_argument("--precision-false", type=float, default=0.95)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--coverage-aim", type=float, default=0.65)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="print every step of each fit")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="folder where each finished outer fold is saved; a run with the same settings reads them "
        "back and goes on with the next fold",
    )


def run_selective(args: argparse.Namespace, console: Console | None = None) -> dict[str, Any]:
    """Every variant in ``args.variants``, each printed as a table; the numbers as JSON."""
    console = console or Console()
    cross_fit = args.band_rows == "cross-fit"
    if args.settings is None:
        args.settings = ",".join(n for n, s in SETTINGS.items() if not cross_fit or s.calibration == DEFAULT_SHARE)
    unknown = [name for name in args.settings.split(",") if name not in SETTINGS]
    if unknown:
        raise SystemExit(f"--settings: unknown {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    shares = [name for name in args.settings.split(",") if cross_fit and SETTINGS[name].calibration != DEFAULT_SHARE]
    if shares:
        raise SystemExit(
            f"--settings: {', '.join(shares)} sets a calibration share, which --band-rows cross-fit has not"
        )
    set_process_environment()
    Workspace.find().use_dspy_cache()  # the project's: a repeated benchmark is served from it
    dataset = load_rows(args.data, resolve_task(TASK).spec)
    models = LoadedModels()
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for variant in args.variants.split(","):
            folder = Path(scratch) / variant
            (folder / "mlruns").mkdir(parents=True)
            result = run_variant(variant, dataset, args, console, Workspace(folder, models=models))
            console.print(table(result, args))
            results.append(result)
    return {"part": "selective", "variants": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args()
    if not args.data.exists():
        Console().print(f"{args.data} is absent; this benchmark needs the shared relevance data")
        return 2
    out = run_selective(args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

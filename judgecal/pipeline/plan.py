"""``judgecal plan``'s pilot and its results: reading pilot labels with the judges'
verdicts, planning with :mod:`judgecal.stats.planning`, writing ``plan.json`` and the
curve, and logging both to a child of the pilot's MLflow run.

A pilot is one of:

- an MLflow run (``runs:/<run id>``) or its evaluation record (``evaluation.json``, or a
  folder holding it): the test rows with the raw and the calibrated judge's verdicts;
- a labelled rows file (JSONL or CSV, the rows ``judgecal calibrate`` reads: ``id``,
  ``group``, ``label`` and the task's inputs) whose verdicts are its ``reference_judges``,
  or a verdicts file from ``judgecal judge`` joined to it by ``id`` (the judge
  ``verdicts``).

A band's plan (``--coverage``) reads a selective calibration's run, or its
``evaluation.json`` with ``selective.json`` beside it: the test rows' P(yes) from the
calibrated judge before its band, and how the run chose its band.

Rows where a judge gave no verdict because it abstained or was only recorded on some
rows are left out and counted; a live judge that failed on a row counts as a
disagreement there, as in every report.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from judgecal.artifacts import EVALUATION_FILE, SELECTIVE_FILE
from judgecal.data.rows import DataError, LabelValue, load_rows, load_verdicts, read_jsonl
from judgecal.report.records import EvaluationRecord, label_space, read_record
from judgecal.stats.metrics import LabelSpace
from judgecal.stats.planning import GroupTypes, SizePlan
from judgecal.stats.selective import BandChoice
from judgecal.stats.selective_planning import BandRule, ScoredPilot, SelectivePlan
from judgecal.workspace import Workspace

VERDICTS_JUDGE = "verdicts"
PLAN_FILE = "plan.json"
PLAN_PLOT = "plan.png"


@dataclass(frozen=True)
class Pilot:
    """Labelled rows with verdicts: category indices of the human label and of each
    judge's verdict (``INVALID`` = the last category), and each row's group code."""

    source: str
    space: LabelSpace
    judges: tuple[str, ...]
    human: np.ndarray  # (rows,)
    verdicts: np.ndarray  # (judges, rows)
    groups: np.ndarray  # (rows,) codes 0..G-1
    left_out: int  # rows without a verdict from one of the judges (abstained or not recorded)

    @property
    def n_groups(self) -> int:
        return int(self.groups.max()) + 1

    @property
    def n_rows(self) -> int:
        return len(self.human)

    def types(self) -> GroupTypes:
        return GroupTypes.from_pilot(self.human, self.verdicts, self.groups, self.space.size)


def is_run(source: str) -> bool:
    return source.startswith("runs:/")


def run_id_of(source: str) -> str:
    """``runs:/<id>`` or ``runs:/<id>/anything`` → ``<id>``."""
    run_id = source.removeprefix("runs:/").strip("/").split("/")[0]
    if not run_id:
        raise ValueError(f"{source}: expected runs:/<run id>")
    return run_id


def read_pilot(
    source: str,
    judges: Sequence[str | None],
    *,
    task: str | None = None,
    verdicts: Path | None = None,
    workspace: Workspace | None = None,
) -> Pilot:
    """The pilot at ``source`` with the verdicts of ``judges`` (names; None = the default
    for that place: see :func:`default_judges`)."""
    if is_run(source):
        record = read_record(_download_record(source, workspace or Workspace.find()))
        return pilot_from_record(record, judges, source=source)
    path = Path(source)
    if path.is_dir() or path.name == EVALUATION_FILE or path.suffix == ".json":
        return pilot_from_record(read_record(path), judges, source=source)
    if task is None:
        raise ValueError(f"{source}: a rows file is read with --task (relevance, pairwise, attribute or module:Sig)")
    return pilot_from_rows(path, task, judges, verdicts=verdicts)


def _download_record(source: str, workspace: Workspace, artifact: str = EVALUATION_FILE) -> Path:
    import mlflow

    run_id = run_id_of(source)
    workspace.open_tracking()
    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact)
    except Exception as error:  # MLflow raises several types for a missing run or artifact
        raise FileNotFoundError(f"{source}: no MLflow run with {artifact} ({error})") from None
    return Path(local)


def default_judges(available: Sequence[str], judges: Sequence[str | None], where: str) -> list[str]:
    """Fill in the judges not named: the planned judge is ``calibrated`` where there is
    one, else the only judge there is; a comparison's baseline is ``raw`` when the
    planned judge is ``calibrated``. A name not there stops with the names that are."""
    planned, *rest = judges
    if planned is None:
        if "calibrated" in available:
            planned = "calibrated"
        elif len(available) == 1:
            planned = available[0]
        elif not available:
            raise ValueError(
                f"{where}: no judge's verdicts on these rows: give a judge's verdicts with --verdicts FILE"
            )
        else:
            raise ValueError(f"{where}: several judges ({', '.join(available)}); name one with --judge")
    baseline = rest[0] if rest else None
    if baseline is None and planned == "calibrated" and "raw" in available and len(judges) > 1:
        baseline = "raw"
    chosen = [planned] + ([baseline] if baseline is not None else [])
    for name in chosen:
        if name not in available:
            raise ValueError(f"{where}: no judge {name!r} (judges: {', '.join(available) or 'none'})")
    return chosen


def pilot_from_record(record: EvaluationRecord, judges: Sequence[str | None], *, source: str) -> Pilot:
    """A pilot from an evaluation record's test rows."""
    names = default_judges(list(record.judges), judges, source)
    space = record.space
    keep = np.ones(len(record.ids), bool)
    columns = []
    for name in names:
        judged = record.judges[name]
        given = [v is not None for v in judged.verdicts]
        if judged.recorded:
            keep &= np.array(given, bool)
        if judged.abstained is not None:
            keep &= ~np.array(judged.abstained, bool)
        columns.append(judged.verdicts)
    return _pilot(source, space, names, record.human, columns, record.groups, keep)


def pilot_from_rows(path: Path, task: str, judges: Sequence[str | None], *, verdicts: Path | None) -> Pilot:
    """A pilot from labelled rows: verdicts from ``reference_judges``, or joined by id
    from a verdicts file (the judge ``verdicts``)."""
    from judgecal.tasks.registry import resolve_task

    spec = resolve_task(task).spec
    rows = load_rows(path, spec)
    by_judge: dict[str, list[LabelValue | None]] = {}
    for name in sorted({name for row in rows for name in row.reference_judges}):
        by_judge[name] = [row.reference_judges.get(name) for row in rows]
    abstained = np.zeros(len(rows), bool)
    if verdicts is not None:
        found = load_verdicts(verdicts, spec)
        _refuse_unknown_ids(verdicts, {row.id for row in rows}, path)
        by_judge[VERDICTS_JUDGE] = [found.get(row.id, (None, None))[0] for row in rows]
        abstained = np.array([row.id in found and found[row.id][0] is None for row in rows], bool)
    if verdicts is not None and judges and judges[0] is None:
        judges = [VERDICTS_JUDGE, *judges[1:]]  # the judge whose verdicts were given
    names = default_judges(list(by_judge), judges, str(path))
    keep = ~abstained
    for name in names:
        keep &= np.array([v is not None for v in by_judge[name]], bool)
    return _pilot(
        str(path),
        label_space(spec),
        names,
        [row.label for row in rows],
        [by_judge[name] for name in names],
        [row.group for row in rows],
        keep,
    )


def _refuse_unknown_ids(verdicts: Path, known: set[str], rows_file: Path) -> None:
    """A verdict for a row the pilot does not hold is a verdicts file for other rows:
    stop at its line rather than plan on a partial join."""
    for line, record in read_jsonl(verdicts):
        if str(record.get("id")) not in known:
            raise DataError(
                f"id {record.get('id')!r} is not a row of {rows_file}", path=verdicts, line=line, field="id"
            )


def _pilot(
    source: str,
    space: LabelSpace,
    names: Sequence[str],
    human: Sequence[LabelValue | None],
    columns: Sequence[Sequence[LabelValue | None]],
    groups: Sequence[str],
    keep: np.ndarray,
) -> Pilot:
    kept = np.flatnonzero(keep)
    codes: dict[str, int] = {}
    group_codes = np.array([codes.setdefault(groups[i], len(codes)) for i in kept], dtype=np.int64)
    if len(codes) < 2:
        raise ValueError(f"{source}: a plan resamples groups and the pilot has {len(codes)} with verdicts; it needs 2")
    return Pilot(
        source=source,
        space=space,
        judges=tuple(names),
        human=space.index([human[i] for i in kept]),
        verdicts=np.stack([space.index([column[i] for i in kept]) for column in columns]),
        groups=group_codes,
        left_out=int(len(keep) - len(kept)),
    )


@dataclass(frozen=True)
class SelectivePilot:
    """A selective run's test rows as its calibrated judge scored them (before the band),
    and how the run chose its band."""

    source: str
    scored: ScoredPilot
    rule: BandRule
    band_rows: str  # where the run's band rows came from: a split, or cross-fitting
    left_out: int  # rows without a probability


def read_selective_pilot(source: str, *, workspace: Workspace | None = None) -> SelectivePilot:
    """The pilot of a band's plan: a selective calibration's run (``runs:/<id>``) or its
    ``evaluation.json`` with ``selective.json`` beside it (or a folder holding both)."""
    if is_run(source):
        workspace = workspace or Workspace.find()
        record = read_record(_download_record(source, workspace))
        try:
            saved_path = _download_record(source, workspace, SELECTIVE_FILE)
        except FileNotFoundError:
            raise ValueError(
                f"{source}: no {SELECTIVE_FILE} in the run: it was calibrated without [selective]"
            ) from None
    else:
        path = Path(source)
        record = read_record(path)
        saved_path = (path if path.is_dir() else path.parent) / SELECTIVE_FILE
        if not saved_path.exists():
            raise ValueError(f"{source}: no {SELECTIVE_FILE} beside it: the run was calibrated without [selective]")
    return _selective_pilot(source, record, _read_band(saved_path))


def _read_band(path: Path) -> BandChoice:
    """The band's rule from a run's ``selective.json``; a damaged file is one located error."""
    from pydantic import ValidationError

    from judgecal.report.selective import read_selective

    try:
        return read_selective(json.loads(path.read_text(encoding="utf-8")))[1]
    except json.JSONDecodeError as error:
        raise DataError(f"not JSON ({error.msg})", path=path, line=error.lineno) from None
    except (KeyError, TypeError, ValidationError) as error:
        reason = "missing" if isinstance(error, KeyError) else "not a band as judgecal saves it"
        raise DataError(reason, path=path, field="band") from None


def _selective_pilot(source: str, record: EvaluationRecord, choice: BandChoice) -> SelectivePilot:
    """The calibrated judge's P(yes) on the record's rows, and the band's rule."""
    from judgecal.judges.verdict import answer_key

    if record.positive is None:
        raise ValueError(f"{source}: a band's plan needs P(yes) per row; the task's labels are not yes / no")
    judged = record.judges.get("calibrated")
    probability = judged.probability if judged is not None else None
    if probability is None or all(value is None for value in probability):
        raise ValueError(f"{source}: the calibrated judge's probabilities are not in {EVALUATION_FILE}")
    kept = [i for i, value in enumerate(probability) if value is not None]
    codes: dict[str, int] = {}
    groups = np.array([codes.setdefault(record.groups[i], len(codes)) for i in kept], dtype=np.int64)
    if len(codes) < 2:
        raise ValueError(f"{source}: a plan resamples groups and the pilot has {len(codes)} with probabilities")
    negative = next(label for label in record.labels if label != record.positive)
    keys = (answer_key(record.positive), answer_key(negative))
    guarantee = choice.guarantee
    rule = BandRule(
        keys=keys,
        targets={key: guarantee.precision[key] for key in keys},
        delta=guarantee.delta,
        groups=guarantee.groups,
        allow_never=guarantee.allow_never,
        candidates=np.asarray(choice.candidates.thresholds, float),
        procedure=guarantee.procedure or "holm",
        starts=guarantee.starts or 1,
    )
    scored = ScoredPilot(
        probability=np.array([probability[i] for i in kept], float),
        positive=np.array([record.human[i] == record.positive for i in kept], bool),
        groups=groups,
    )
    return SelectivePilot(source, scored, rule, choice.calibration_rows.source, len(record.ids) - len(kept))


class PlanReport(BaseModel):
    """What ``judgecal plan`` found, as ``plan.json`` holds it."""

    model_config = ConfigDict(frozen=True)

    format: str = "judgecal.plan"
    source: str  # the pilot, or "rates" when planned from expected rates
    judges: list[str]
    pilot_groups: int | None
    pilot_rows: int | None
    rows_per_group: float
    left_out: int
    plans: list[SizePlan | SelectivePlan]
    assumptions: str


def write_plan(report: PlanReport, folder: Path) -> tuple[Path, Path]:
    """``plan.json`` and the curve of every plan (``plan.png``) in ``folder``."""
    from judgecal.report.plots import size_curves

    folder.mkdir(parents=True, exist_ok=True)
    document = folder / PLAN_FILE
    document.write_text(json.dumps(report.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    panels = [_panel(plan) for plan in report.plans]
    plot = size_curves(panels, folder / PLAN_PLOT, title=f"labels needed ({report.source})")
    return document, plot


def _panel(plan: SizePlan | SelectivePlan) -> dict[str, object]:
    """A plan's curve as plain numbers: the simulated sizes, the fitted curve, the
    target and the size chosen."""
    from scipy.stats import norm

    sizes = np.array([p.groups for p in plan.curve] or [plan.groups], float)
    smooth = np.geomspace(sizes.min(), sizes.max(), 100)
    a, b = plan.fitted
    if isinstance(plan, SelectivePlan):
        simulated = np.array([p.power for p in plan.curve] or [np.nan])
        fitted = norm.cdf(a + b * np.sqrt(smooth))
        label = f"share of calibration sets with a band answering ≥ {plan.coverage:.0%}"
    elif plan.goal == "width":
        simulated = np.array([p.width for p in plan.curve]) / 2
        fitted = np.exp(a + b * np.log(smooth)) / 2
        label = f"± half-width of the {plan.confidence:.0%} interval of {plan.quantity}"
    else:
        simulated = np.array([p.power for p in plan.curve])
        fitted = norm.cdf(a + b * np.sqrt(smooth))
        label = f"power to show {plan.quantity} > {plan.null:g}"
    return {
        "label": label,
        "sizes": sizes,
        "simulated": simulated,
        "smooth_sizes": smooth,
        "fitted": fitted,
        "target": plan.target,
        "chosen": plan.groups,
    }


def log_plan(source: str, files: Sequence[Path], report: PlanReport, workspace: Workspace) -> str:
    """A child run of the pilot's run holding ``plan.json``, the curve and each plan's
    groups and rows as metrics: the pilot's run keeps its own metrics untouched. Returns
    the child's run id."""
    from mlflow import MlflowClient

    parent = run_id_of(source)
    client = MlflowClient(tracking_uri=workspace.tracking_uri)
    experiment_id = client.get_run(parent).info.experiment_id
    child = client.create_run(
        experiment_id,
        run_name=f"plan ({len(report.plans)} decisions)",
        tags={"mlflow.parentRunId": parent, "judgecal.kind": "plan"},
    )
    run_id = child.info.run_id
    for plan in report.plans:
        key = "plan_selective" if plan.goal == "selective" else f"plan_{plan.goal}_{plan.quantity.replace(' ', '_')}"
        client.log_metric(run_id, f"{key}_groups", plan.groups)
        client.log_metric(run_id, f"{key}_rows", plan.rows)
    for path in files:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return run_id

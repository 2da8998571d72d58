"""Re-checking a deployed judge, one batch of freshly labelled rows at a time.

Each call of :func:`check_batch` judges one batch, measures agreement and κ on it (95%
group-bootstrap intervals), adds one observation per group of the batch (the share of its
rows the judge got right: rows of one prompt are not independent, groups are taken to
be) to an anytime-valid confidence sequence over every batch so far
(:mod:`judgecal.stats.sequential`), and raises an alarm once its upper bound is below the
level the judge was registered with. Looking after every batch does not raise the chance
of a false alarm above ``alpha``. A selective judge's monitor follows each verdict's
precision and its coverage too, each with a sequence of its own, alpha split over them
all (:mod:`judgecal.pipeline.selective_monitor`). It also compares the batch with the
judge's reference sample (:mod:`judgecal.export.reference`).

The :class:`MonitorState` file (JSON, replaced atomically) is the record of what was
counted: a batch enters it only after its MLflow step is logged, so a monitor stopped at
any point resumes without counting a batch twice (a batch interrupted after logging is
logged again at the same step when it is checked again). A batch already counted (same
rows, whatever the file name) is refused.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from judgecal.artifacts import MONITOR_PLOT, MONITOR_STATE_FILE
from judgecal.data.rows import DataError, LabeledRow, load_rows
from judgecal.export.bundle import JudgeBundle
from judgecal.export.flavor import LoadedJudge
from judgecal.export.reference import NO_REFERENCE, check_rows
from judgecal.judges.verdict import Verdict, answer_key
from judgecal.pipeline.monitor_state import (
    BatchCheck,
    MonitorState,
    batch_fingerprint,
    read_state,
    write_state,
)
from judgecal.pipeline.selective_monitor import (
    Followed,
    fallen,
    follow,
    followed_observations,
    followed_quantities,
    given_targets,
)
from judgecal.report.agreement import evaluate_record
from judgecal.report.records import JudgeRecord, build_record
from judgecal.stats.sequential import DEFAULT_ALPHA, confidence_sequence, grid_with, group_shares
from judgecal.stats.shift import TooFewPrompts
from judgecal.stats.uncertainty import Estimate
from judgecal.workspace import Workspace

BATCH_RESAMPLES = 1000
LOGGED_MODEL_ID = re.compile(r"m-[0-9a-f]{32}")
"""A logged model's own id (``models:/m-<id>``, as the MLflow UI lists it): no registered version."""


@dataclass
class MonitorOutcome:
    """What one call did: the state after it, the batch it added and notes for the user."""

    state: MonitorState
    batch: BatchCheck
    notes: list[str] = field(default_factory=list)

    @property
    def alarm(self) -> bool:
        return self.state.alarm_batch is not None


def reference_level(bundle: JudgeBundle, threshold: float | None) -> tuple[float, str]:
    """The agreement the upper bound is checked against, and where it comes from: the
    threshold given; for a selective judge the lowest precision its band guarantees for a
    verdict it gives (a verdict it never gives is never observed); else the low end of the
    95% interval of what the sequence tracks, the mean over its test groups of each group's
    share right, or of its row-weighted agreement in an older bundle (the point estimate
    itself is noisy: a judge exactly as good as its test rows showed would, half of the
    time, sit below it and alarm sooner or later)."""
    if threshold is not None:
        return threshold, "--threshold"
    evaluation = bundle.evaluation or {}
    targets = given_targets(bundle)
    if targets:
        given = ", ".join(f"'{verdict}' {target:.2f}" for verdict, target in targets.items())
        return min(targets.values()), f"the lowest precision the selective judge's band guarantees ({given})"
    share = evaluation.get("group_share") or {}
    if share.get("low") is not None and np.isfinite(share["low"]):
        return float(share["low"]), (
            "the low end of the 95% interval of the mean over its test groups of the share of each group's rows "
            "it got right, what the sequence tracks"
        )
    for name in ("accuracy", "agreement"):  # a bundle saved before group_share was recorded
        estimate = (evaluation.get("metrics") or {}).get(name)
        if estimate and estimate.get("low") is not None and np.isfinite(estimate["low"]):
            return float(estimate["low"]), f"the low end of the 95% interval of its {name} on its test rows"
    for name in ("test.accuracy", "test.agreement"):
        value = bundle.metrics.get(name)
        if value is not None:
            return float(value), f"its {name.removeprefix('test.')} on its test rows"
    raise ValueError(f"judge {bundle.name!r} records no agreement on test rows to compare with; give --threshold LEVEL")


def new_state(loaded: LoadedJudge, threshold: float | None, alpha: float) -> MonitorState:
    level, source = reference_level(loaded.bundle, threshold)
    selective = loaded.judge.kind == "selective"
    return MonitorState(
        judge=loaded.source,
        judge_name=loaded.bundle.name,
        bundle_digest=loaded.digest,
        level=level,
        level_source=source,
        alpha=alpha,
        followed=_beside_agreement(followed_quantities(loaded.bundle), level) if selective else [],
    )


def _beside_agreement(followed: list[Followed], level: float) -> list[Followed]:
    """The sequences a selective judge's monitor follows beside its agreement. A band that
    gives one verdict only makes that verdict's precision the agreement of the rows answered,
    observation for observation; at the same level it would be one sequence counted twice,
    spending a share of alpha on nothing, so it is left to the agreement's."""
    given = [q for q in followed if q.verdict is not None]
    if len(given) == 1 and given[0].level == level:
        return [q for q in followed if q.verdict is None]
    return followed


FOLLOWED_LATER = (
    "this monitor was started before a selective judge's verdicts and coverage were followed each on its own: it "
    "follows the agreement of the rows answered, at its alpha, as it started; start a new state file to follow "
    "each verdict's precision and the coverage"
)
COVERAGE_NOT_FOLLOWED = (
    "the judge's bundle records no interval for its coverage on test rows (none recorded, or every test row "
    "answered), so its coverage is reported batch by batch but not followed"
)


def _selective_notes(loaded: LoadedJudge, state: MonitorState) -> list[str]:
    """For a selective judge: a state of the earlier layout, on every batch; coverage not
    followed, on the first."""
    if loaded.judge.kind != "selective":
        return []
    if state.schema_version < 2:
        return [FOLLOWED_LATER]
    if not state.batches and all(q.verdict is not None for q in state.followed):
        return [COVERAGE_NOT_FOLLOWED]
    return []


def _refuse_seen(state: MonitorState, batch: Path, fingerprint: str) -> None:
    for seen in state.batches:
        if seen.fingerprint == fingerprint:
            raise DataError(
                f"these rows were already checked as batch {seen.index} ({seen.file}, {seen.checked_at}); "
                "a batch is counted once",
                path=batch,
            )


def measure_batch(
    rows: list[LabeledRow], verdicts: list[Verdict], loaded: LoadedJudge, *, seed: int = 0
) -> dict[str, Any]:
    """Agreement and κ with 95% group-bootstrap intervals on the rows answered, the
    selective judge's coverage and each verdict's precision, one observation per group."""
    judge = loaded.judge
    spec = judge.task.spec
    positive = spec.positive
    record = build_record(
        judge.name,
        judge.task.reference,
        spec,
        rows,
        {
            "calibrated": JudgeRecord(
                verdicts=[v.label for v in verdicts],
                probability=[v.probability_of(positive) for v in verdicts] if positive is not None else None,
                confidence=[v.confidence for v in verdicts],
                abstained=[v.abstained for v in verdicts] if any(v.abstained for v in verdicts) else None,
            )
        },
        include_reference=False,
    )
    answered = [i for i, v in enumerate(verdicts) if not v.abstained]
    metrics = _agreement_estimates(record, seed)
    correct = np.array([verdicts[i].label == rows[i].label for i in answered], dtype=bool)
    precision = {}
    for label in spec.labels:
        said = [i for i in answered if verdicts[i].label == label]
        precision[answer_key(label)] = float(np.mean([rows[i].label == label for i in said])) if said else None
    selective = judge.kind == "selective"
    return {
        "rows": len(rows),
        "groups": len({r.group for r in rows}),
        "answered": len(answered),
        "agreement": metrics[0],
        "kappa": metrics[1],
        "coverage": len(answered) / len(rows) if selective else None,
        "precision": precision,
        "observations": group_shares(correct, [rows[i].group for i in answered]),
    }


def _agreement_estimates(record: Any, seed: int) -> tuple[Estimate, Estimate]:
    """(agreement, κ) of the judge on the batch; a batch of one group gets no interval."""
    name = "accuracy" if record.positive is not None else "agreement"
    kappa = "weighted_kappa" if record.ordinal else "kappa"
    if len(set(record.groups)) < 2:
        from judgecal.stats.metrics import label_metrics

        keep = [i for i, a in enumerate(record.judges["calibrated"].abstained or [False] * len(record.ids)) if not a]
        values = label_metrics(
            record.space, [record.human[i] for i in keep], [record.judges["calibrated"].verdicts[i] for i in keep]
        )
        nan = float("nan")
        return Estimate(value=values[name], low=nan, high=nan), Estimate(value=values[kappa], low=nan, high=nan)
    report = evaluate_record(record, baseline=None, candidate=None, n_resamples=BATCH_RESAMPLES, seed=seed)
    score = report.judge("calibrated")
    return score.metrics[name], score.metrics[kappa]


def check_batch(
    loaded: LoadedJudge,
    batch: Path,
    state_path: Path,
    *,
    threshold: float | None = None,
    alpha: float | None = None,
    workspace: Workspace | None = None,
    track: bool = True,
) -> MonitorOutcome:
    """Judge ``batch``, add it to the monitor kept in ``state_path`` and log it as the next
    step of the monitor's MLflow run. Refuses a batch already counted, a state file of
    another judge, and a level or alpha other than the one the monitor started with."""
    state = _opened_state(loaded, state_path, threshold, alpha)
    rows = list(load_rows(batch, loaded.judge.task.spec).rows)
    fingerprint = batch_fingerprint(rows)
    _refuse_seen(state, batch, fingerprint)
    verdicts = loaded.judge.predict(rows)
    measured = measure_batch(rows, verdicts, loaded)
    observations = state.observations + measured["observations"]
    bounds = confidence_sequence(observations, alpha=state.sequence_alpha, grid=grid_with(state.level))
    observed = followed_observations(state.followed, rows, verdicts)
    steps = follow(state.followed, [b.sequences for b in state.batches], observed, state.sequence_alpha)
    notes = _selective_notes(loaded, state)
    try:
        shift = check_rows(loaded.bundle.reference, rows, verdicts, loaded.judge.task.spec)
    except TooFewPrompts as why:
        shift = None
        notes.append(f"shift not checked: {why}")
    if shift is None and loaded.bundle.reference is None and not state.batches:
        notes.append(NO_REFERENCE)  # said once, on the first batch
    checked = BatchCheck(
        index=len(state.batches) + 1,
        file=str(batch),
        fingerprint=fingerprint,
        checked_at=datetime.now(UTC).isoformat(timespec="seconds"),
        mean=bounds.mean[-1] if observations else float("nan"),
        upper=bounds.upper[-1] if observations else 1.0,
        lower=bounds.lower[-1] if observations else 0.0,
        shift=shift,
        sequences=steps,
        **measured,
    )
    if track:
        state = _ensure_run(state, state_path, workspace)
    fell = checked.upper < state.level or bool(fallen(state.followed, steps))
    alarm = state.alarm_batch or (checked.index if fell else None)
    after = state.model_copy(update={"batches": [*state.batches, checked], "alarm_batch": alarm})
    if track:
        log_batch(after)
    write_state(after, state_path)
    return MonitorOutcome(state=after, batch=checked, notes=notes)


def _opened_state(loaded: LoadedJudge, path: Path, threshold: float | None, alpha: float | None) -> MonitorState:
    """The monitor's state, new (``alpha`` by default :data:`DEFAULT_ALPHA`) or read back
    and checked against what was asked now."""
    state = read_state(path)
    if state is None:
        return new_state(loaded, threshold, DEFAULT_ALPHA if alpha is None else alpha)
    if state.bundle_digest != loaded.digest:
        raise DataError(
            f"this monitor checks the judge bundle {state.bundle_digest[:19]}… but {loaded.source} is now "
            f"{loaded.digest[:19]}…; a changed judge starts a new state file",
            path=path,
            field="bundle_digest",
        )
    for key, value in (("level", threshold), ("alpha", alpha)):
        if value is not None and value != getattr(state, key):
            raise DataError(
                f"this monitor started with {key} {getattr(state, key)}; it is fixed when a monitor starts "
                "(changing it after looking would void the error level), so start a new state file",
                path=path,
                field=key,
            )
    return state


def _ensure_run(state: MonitorState, state_path: Path, workspace: Workspace | None) -> MonitorState:
    """The monitor's MLflow run, made on its first tracked batch and written to the state
    file at once, so that a crash cannot make a second one; the registered version of a
    ``models:/`` judge is found then too."""
    from judgecal.pipeline.tracking import ensure_experiment

    experiment_id = ensure_experiment(workspace or Workspace.find(), state.judge_name)
    if state.run_id is not None:
        return state
    state = state.model_copy(
        update={"run_id": _start_run(state, state_path, experiment_id), "registered": _registered_version(state.judge)}
    )
    write_state(state, state_path)
    return state


def _start_run(state: MonitorState, state_path: Path, experiment_id: str) -> str:
    import mlflow

    client = mlflow.MlflowClient()
    run = client.create_run(
        experiment_id,
        run_name=f"monitor: {state_path.name}",
        tags={
            "judgecal.monitor": state.judge,
            "judgecal.bundle_digest": state.bundle_digest,
            "mlflow.note.content": _description(state),
        },
    )
    for key, value in (("judge", state.judge), ("level", state.level), ("alpha", state.alpha)):
        client.log_param(run.info.run_id, key, value)
    client.log_param(run.info.run_id, "level_source", state.level_source[:500])
    return run.info.run_id


def _standing(state: MonitorState) -> str:
    """The description's first line after a batch: the alarm and what fell, or that none has."""
    if state.alarm_batch is None:
        return f"No alarm after {len(state.batches)} batches."
    what = "; ".join(state.fallen()) or "its agreement"
    return f"**ALARM since batch {state.alarm_batch}**: below its level: {what}."


def _description(state: MonitorState) -> str:
    """The run's description: what raises the alarm."""
    confidence = confidence_percent(state.sequence_alpha)
    text = (
        f"Re-checks {state.judge} batch after batch. Alarm when the anytime-valid {confidence} "
        f"upper bound on its agreement falls below {state.level:.3f} ({state.level_source})"
    )
    if not state.followed:
        return text + "."
    each = [f"{q.words} below {q.level:.3f}" for q in state.followed]
    either = ", ".join([*each[:-1], f"or {each[-1]}"])
    n = 1 + len(state.followed)
    return (
        f"{text}, {either}: {n} sequences, each at alpha {state.alpha:g} / {n} (Bonferroni), so that any false "
        f"alarm has a chance of at most {state.alpha:g}."
    )


def _registered_version(reference: str) -> tuple[str, str] | None:
    """(name, version) of a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` judge; None
    for any other, a logged model's own ``models:/m-<id>`` included."""
    import mlflow

    if not reference.startswith("models:/"):
        return None
    body = reference.removeprefix("models:/")
    if LOGGED_MODEL_ID.fullmatch(body.split("/")[0]):
        return None
    if "@" in body:
        name, alias = body.split("@", 1)
        return name, str(mlflow.MlflowClient().get_model_version_by_alias(name, alias.split("/")[0]).version)
    name, _, version = body.partition("/")
    return name, version.split("/")[0]


def log_batch(state: MonitorState) -> None:
    """The newest batch's metrics at its step, the plot and the state file, the alarm tag,
    and the last check on the registered version."""
    import mlflow

    client = mlflow.MlflowClient()
    batch = state.batches[-1]
    assert state.run_id is not None
    metrics: dict[str, float | None] = {
        "batch.rows": batch.rows,
        "batch.agreement": batch.agreement.value,
        "batch.agreement_low": batch.agreement.low,
        "batch.agreement_high": batch.agreement.high,
        "batch.kappa": None if batch.only_verdict else batch.kappa.value,
        "sequence.mean": batch.mean,
        "sequence.upper": batch.upper,
        "sequence.lower": batch.lower,
        "sequence.level": state.level,
    }
    if batch.coverage is not None:
        metrics["batch.coverage"] = batch.coverage
    metrics |= {f"batch.precision.{k}": v for k, v in batch.precision.items() if v is not None}
    metrics |= _followed_metrics(state, batch)
    if batch.shift is not None:
        metrics |= {"shift.auc": batch.shift.auc, "shift.unlike_share": batch.shift.unlike_share}
        metrics |= {"shift.null_auc": batch.shift.null_auc, "shift.null_unlike_share": batch.shift.null_unlike_share}
    for key, value in metrics.items():
        if value is not None and np.isfinite(value):
            client.log_metric(state.run_id, key, float(value), step=batch.index)
    alarm = f"since batch {state.alarm_batch}" if state.alarm_batch else "none"
    client.set_tag(state.run_id, "judgecal.monitor.alarm", alarm)
    if state.followed:
        client.set_tag(state.run_id, "judgecal.monitor.fallen", "; ".join(state.fallen()) or "none")
    client.set_tag(state.run_id, "mlflow.note.content", f"{_standing(state)}\n\n{_description(state)}")
    # Finished after each batch, named by where it stands, the alarm first: the runs list
    # answers at a glance (it shows a name's first 20-odd characters).
    name = f"ALARM since batch {state.alarm_batch}" if state.alarm_batch else f"ok after {len(state.batches)} batches"
    client.set_terminated(state.run_id, "FINISHED")  # its end time: the run lasts from first batch to last
    client.update_run(state.run_id, name=f"monitor: {name}")
    with tempfile.TemporaryDirectory() as scratch:
        client.log_artifact(state.run_id, str(_plot(state, Path(scratch) / MONITOR_PLOT)))
        copy = Path(scratch) / MONITOR_STATE_FILE
        copy.write_text(state.model_dump_json(indent=2), encoding="utf-8")
        client.log_artifact(state.run_id, str(copy))
    if state.registered is not None:
        name, version = state.registered
        client.set_model_version_tag(name, version, "judgecal.monitor.last_check", last_check(state))
        client.set_model_version_tag(name, version, "judgecal.monitor.alarm", alarm)


def _followed_metrics(state: MonitorState, batch: BatchCheck) -> dict[str, float | None]:
    """Each followed sequence's running mean, bounds and level at this batch."""
    metrics: dict[str, float | None] = {}
    for quantity in state.followed:
        step = batch.sequences.get(quantity.name)
        if step is not None:
            key = f"sequence.{quantity.name}"
            metrics |= {f"{key}.mean": step.mean, f"{key}.upper": step.upper, f"{key}.lower": step.lower}
            metrics[f"{key}.level"] = quantity.level
    return metrics


def last_check(state: MonitorState) -> str:
    batch = state.batches[-1]
    alarm = f"ALARM since batch {state.alarm_batch}" if state.alarm_batch else "no alarm"
    if state.alarm_batch and state.followed:
        alarm += f" ({'; '.join(state.fallen())} below level)"
    return (
        f"{batch.checked_at}: {len(state.batches)} batches, agreement {batch.mean:.3f} (upper bound "
        f"{batch.upper:.3f}, level {state.level:.3f}), {alarm}; run {state.run_id}"
    )


def _plot(state: MonitorState, path: Path) -> Path:
    from judgecal.report.plots import SequencePanel, monitor_sequence

    batches = state.batches
    panels = [
        SequencePanel(
            quantity="agreement with people",
            short="agreement",
            values=[(b.agreement.value, b.agreement.low, b.agreement.high) for b in batches],
            upper=[b.upper for b in batches],
            lower=[b.lower for b in batches],
            level=state.level,
        )
    ]
    nan = float("nan")
    for quantity in state.followed:
        steps = [b.sequences.get(quantity.name) for b in batches]
        own = [b.coverage if quantity.verdict is None else b.precision.get(quantity.verdict) for b in batches]
        panels.append(
            SequencePanel(
                quantity="coverage" if quantity.verdict is None else f"precision of '{quantity.verdict}'",
                short="coverage" if quantity.verdict is None else "precision",
                values=[(nan if v is None else v, nan, nan) for v in own],
                upper=[1.0 if s is None else s.upper for s in steps],
                lower=[0.0 if s is None else s.lower for s in steps],
                level=quantity.level,
            )
        )
    return monitor_sequence(
        [b.index for b in batches],
        panels,
        path,
        title=f"{state.judge_name}: {'agreement' if len(panels) == 1 else 'each sequence'} batch after batch, "
        f"anytime-valid {confidence_percent(state.sequence_alpha)} bounds",
    )


def confidence_percent(alpha: float) -> str:
    """1 - alpha as a percentage, to the digits it has: 95%, 98.75%."""
    return f"{100 * (1 - alpha):.4g}%"

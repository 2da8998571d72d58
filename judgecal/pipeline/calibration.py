"""One calibration, end to end: data → split → raw judge → calibrated judge → test
metrics → MLflow run with the judge bundle and model.

An experiment is described by a TOML file (see ``experiments/*.toml``); every field can
be overridden from the command line. The steps, in order (ARCHITECTURE.md lists them):
:func:`prepare`, :func:`final_fit`, :func:`select_band`, :func:`evaluate`, then, when tracking,
:func:`~judgecal.pipeline.tracking.track_calibration` and
:func:`~judgecal.pipeline.publish.export_judge`. Each returns what it made.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Sequence
from typing import Any

from judgecal.backends.calls import LMCallCounter
from judgecal.backends.models import build_lm
from judgecal.calibrate.guard import RowGuard
from judgecal.calibrate.optimizers import CalibrationConfig, strategy_name
from judgecal.calibrate.selective import NoProbabilitiesError, SelectiveJudge
from judgecal.calibrate.strategies import STRATEGIES, FitResult, StrategySpec, fit_judge, resolve_strategies
from judgecal.data.rows import DataError, Dataset, LabeledRow, load_rows, load_verdicts
from judgecal.data.split import Split, split_by_group
from judgecal.judges.fitted import (
    FittedJudge,
    MemoJudge,
    ProgramJudge,
    RecordedJudge,
    label_probabilities,
    positive_probability,
    unwrap,
)
from judgecal.judges.program import JudgeProgram, score_verdicts
from judgecal.judges.verdict import Verdict
from judgecal.judges.verifiers import grouped_folds
from judgecal.pipeline.config import ExperimentConfig
from judgecal.pipeline.publish import export_judge
from judgecal.pipeline.results import Banded, CalibrationReport, Prepared, SideResult
from judgecal.pipeline.tracking import ensure_experiment, track_calibration
from judgecal.progress import ProgressFactory, library_logs_quiet
from judgecal.report.agreement import evaluate_record
from judgecal.report.records import REFERENCE_PREFIX, EvaluationRecord, JudgeRecord, build_record, label_space
from judgecal.report.selective import SelectiveReport, selective_report
from judgecal.tasks.registry import Task, resolve_task
from judgecal.workspace import Workspace, set_process_environment


def prepare(config: ExperimentConfig, workspace: Workspace, *, log: Any = print) -> Prepared:
    """Load and split the rows, build the LM (unless verdicts are recorded; an in-process
    model is loaded in the workspace) and the raw judge; DSPy's response cache goes to the
    workspace."""
    task = resolve_task(config.judge.task)
    dataset = load_rows(config.judge.data, task.spec, limit=config.judge.limit)
    split = split_by_group(dataset, config.split)
    sizes = split.sizes
    held = f", calibration {sizes['calibration']}" if "calibration" in sizes else ""
    log(
        f"{config.judge.name}: {len(dataset)} rows from {workspace.project_path(dataset.source)} → "
        f"train {sizes['train']}, dev {sizes['dev']}, test {sizes['test']}{held} (grouped, seed {config.split.seed})"
    )
    workspace.use_dspy_cache()
    if config.judge.recorded and config.judge.verdicts:
        raise DataError("give either judge.recorded or judge.verdicts, not both", field="judge")
    lm = None
    if config.judge.verdicts is not None:
        verdicts = load_verdicts(config.judge.verdicts, task.spec)
        raw: FittedJudge = RecordedJudge(task, str(config.judge.verdicts), config.judge.name, verdicts)
    elif config.judge.recorded is not None:
        known = {name for row in dataset.rows for name in row.reference_judges}
        if config.judge.recorded not in known:
            found = ", ".join(sorted(known)) or "none"
            raise DataError(
                f"no recorded judge {config.judge.recorded!r} in the rows (found: {found})",
                path=dataset.source,
                field="reference_judges",
            )
        raw = RecordedJudge(task, config.judge.recorded, config.judge.name)
    else:
        lm = build_lm(config.lm, workspace.models)
        threads = config.calibration.num_threads  # rows judged at once by a remote model
        raw = ProgramJudge(task, JudgeProgram(task.signature), lm, config.judge.name, num_threads=threads)
    order_swap = config.order_swap if config.order_swap is not None else task.spec.is_pairwise
    gate = _gate_rows(config, task, dataset, split)
    calibration = split.calibration.rows if split.calibration is not None else ()
    guard = RowGuard.for_rows([*split.test.rows, *gate], [*split.train.rows, *split.dev.rows], calibration)
    return Prepared(config, task, dataset, split, lm, MemoJudge(raw), guard, order_swap, workspace, gate_rows=gate)


def _gate_rows(config: ExperimentConfig, task: Task, dataset: Dataset, split: Split) -> tuple[LabeledRow, ...]:
    """Rows for the champion gate: ``--gate-data`` (which must not repeat an id of the data),
    else the split's gate share."""
    if config.judge.gate_data is None:
        return split.gate.rows if split.gate is not None else ()
    fresh = load_rows(config.judge.gate_data, task.spec)
    known = {row.id for row in dataset.rows}
    repeated = next((row for row in fresh.rows if row.id in known), None)
    if repeated is not None:
        raise DataError(
            f"id {repeated.id!r} is also in the calibration data; gate rows must be fresh",
            path=config.judge.gate_data,
            line=repeated.line,
            field="id",
        )
    return fresh.rows


def judge_split(
    judge: FittedJudge,
    task: Task,
    rows: Sequence[LabeledRow],
    *,
    order_swap: bool,
    progress: ProgressFactory | None,
    label: str,
) -> SideResult:
    started = time.perf_counter()
    verdicts = judge.predict(rows, progress=progress, description=f"{label}: judging test")
    swapped = None
    if order_swap:
        swapped = judge.predict_swapped(rows, progress=progress, description=f"{label}: judging swapped")
    metrics = score_verdicts(task, rows, verdicts, swapped)
    return SideResult(verdicts, swapped, metrics, time.perf_counter() - started)


def strategy_params(spec: StrategySpec, config: CalibrationConfig) -> dict[str, Any]:
    """Settings a strategy takes from the experiment file (the search suggests its own):
    ``[calibration] params``, and ``C`` for the verifiers."""
    params: dict[str, Any] = {}
    if spec.family == "verifier" and "C" in config.model_fields_set:
        params["C"] = config.C
    params.update(config.params)
    return params


def final_fit(spec: StrategySpec, prepared: Prepared, params: dict[str, Any], log: Any = print) -> FitResult:
    """The judge that is reported on test and exported. A strategy that calls the model to
    fit is compiled on train and selects its candidates on dev; any other is fitted on
    train + dev together (its own decision cut chosen on out-of-fold predictions)."""
    split = prepared.split
    env = prepared.env(log)
    if spec.selects_on_dev:
        return fit_judge(spec, env, params, split.train.rows, split.dev.rows, prepared.guard)
    rows = [*split.train.rows, *split.dev.rows]
    return fit_judge(spec, env, params, rows, None, prepared.guard, step="fit on train + dev")


def select_band(
    prepared: Prepared, result: FitResult, log: Any = print, *, out_of_fold: Sequence[Verdict] | None = None
) -> Banded:
    """With [selective]: the band where the fitted judge abstains, and the judge wrapped in
    it. Chosen on the calibration rows (neither fitting, selection nor the search saw them;
    candidate thresholds placed by its scores on train + dev), or with ``rows =
    "cross-fit"`` on the out-of-fold verdicts of train + dev (:func:`cross_fit_verdicts`,
    or ``out_of_fold`` when the caller has them). When no band meets the targets the run
    says which verdict fell short and the judge stays as it was fitted."""
    settings = prepared.config.selective
    if settings is None:
        return Banded(result, result.judge)
    import dspy

    from judgecal.backends.calls import LMCallCounter

    split, name = prepared.split, prepared.config.judge.name
    fitting = [*split.train.rows, *split.dev.rows]
    prepared.guard.check(fitting, "selective: place candidate thresholds")
    judge = SelectiveJudge(
        result.judge,
        precision=settings.precision,
        delta=settings.delta,
        groups=settings.groups,
        allow_never=settings.allow_never,
        procedure=settings.procedure,
        starts=settings.starts,
    )
    counter, started = LMCallCounter(), time.perf_counter()
    with dspy.context(callbacks=[*dspy.settings.get("callbacks", []), counter]):
        if settings.rows == "cross-fit":
            if out_of_fold is None:
                out_of_fold = cross_fit_verdicts(prepared, result, settings.folds, log)
            judge.fit_out_of_fold(fitting, out_of_fold, settings.folds)
        else:
            assert split.calibration is not None, "a [selective] experiment holds calibration rows back"
            judge.fit(split.calibration.rows, fitting)
    cost = {"seconds": result.seconds + time.perf_counter() - started, "lm_calls": result.lm_calls + counter.calls}
    choice = judge.choice_
    log(f"{name}: selective judging: {choice.guarantee.statement}")
    reported = judge if choice.found else result.judge
    return Banded(dataclasses.replace(result, judge=reported, **cost), result.judge, choice)


def cross_fit_verdicts(prepared: Prepared, result: FitResult, folds: int, log: Any = print) -> list[Verdict]:
    """Each train + dev row judged by ``result``'s strategy, with its settings, fitted on the
    other grouped folds (groups = prompts): the rows a cross-fitted band is chosen on. A
    strategy that calls the model to fit, or a search's winner (chosen on these rows), is
    refused."""
    spec = STRATEGIES[result.strategy]
    refuse_cross_fit(spec, prepared)
    rows = [*prepared.split.train.rows, *prepared.split.dev.rows]
    parts = grouped_folds(rows, folds, prepared.config.split.seed)
    log(
        f"{prepared.config.judge.name}: selective judging: cross-fitting {spec.name} on {len(parts)} grouped folds "
        f"of train + dev ({len(rows)} rows, {len({row.group for row in rows})} groups)"
    )
    env = prepared.env(log)
    out: dict[int, Verdict] = {}
    for k, held in enumerate(parts):
        left_out = set(held.tolist())
        fold_rows = [row for i, row in enumerate(rows) if i not in left_out]
        step = f"cross-fit {k + 1}/{len(parts)}"
        fitted = fit_judge(spec, env, result.params, fold_rows, None, prepared.guard, step=step).judge
        held_rows = [rows[i] for i in held]
        verdicts = fitted.predict(held_rows, description=f"selective: {step}, scoring its held-out rows")
        out |= dict(zip(held.tolist(), verdicts, strict=True))
    return [out[i] for i in range(len(rows))]


def refuse_cross_fit(spec: StrategySpec, prepared: Prepared) -> None:
    """Before any work: a cross-fitted band fits the strategy once per fold, which a strategy
    that calls the model to fit would pay for in calls, and needs rows nothing chose the
    judge on, which a search's winner was chosen on."""
    settings = prepared.config.selective
    if settings is None or settings.rows != "cross-fit":
        return
    if spec.calls_lm_to_fit or prepared.config.search is not None:
        why = f"{spec.name!r} calls the model to fit" if spec.calls_lm_to_fit else "a search chooses its winner on them"
        raise ValueError(
            f'selective rows = "cross-fit" refits the judge on folds of train + dev, but {why}: use rows = "split"'
        )


def refuse_without_probabilities(spec: StrategySpec, prepared: Prepared) -> None:
    """Before any work: a selective judge needs probabilities, and a post-hoc strategy over
    recorded verdicts without any gives 0/1 only."""
    raw = unwrap(prepared.raw)
    if prepared.config.selective is None or spec.family != "post-hoc" or not isinstance(raw, RecordedJudge):
        return
    if raw.verdicts is None or all(probability is None for _, probability in raw.verdicts.values()):
        name = raw.source if raw.verdicts is None else raw.name  # the recorded judge, else the file's
        raise NoProbabilitiesError(
            f"selective judging needs probabilities; '{name}' gives 0/1 verdicts only: stack it "
            "(--strategy stacking) or give a probability per row"
        )


def run_calibration(
    config: ExperimentConfig,
    *,
    workspace: Workspace | None = None,
    progress: ProgressFactory | None = None,
    track: bool = True,
    log: Any = print,
) -> CalibrationReport:
    """Calibrate one judge with one strategy and record it; test is used only for the report.
    ``workspace``: where the run's store, caches and loaded models are (default: the
    project's, :meth:`Workspace.find`)."""
    set_process_environment()
    workspace = workspace or Workspace.find()
    prepared = prepare(config, workspace, log=log)
    # A tracking store that cannot be reached, or a deleted experiment, fails now, not after the work.
    experiment_id = ensure_experiment(workspace, config.judge.name) if track else None
    [spec] = resolve_strategies(
        [strategy_name(config.calibration)], prepared.task, has_program=isinstance(unwrap(prepared.raw), ProgramJudge)
    )
    refuse_without_probabilities(spec, prepared)
    refuse_cross_fit(spec, prepared)
    where = "train, selecting on dev" if spec.selects_on_dev else "train + dev"
    log(f"{config.judge.name}: calibrating with {spec.name} ({spec.description}) on {where}")
    meter = LMCallCounter()
    with library_logs_quiet(), meter.counting():
        result = final_fit(spec, prepared, strategy_params(spec, config.calibration), log)
        banded = select_band(prepared, result, log)
        return report_and_record(prepared, banded, progress=progress, experiment_id=experiment_id, log=log, meter=meter)


def report_and_record(
    prepared: Prepared,
    banded: Banded,
    *,
    progress: ProgressFactory | None,
    experiment_id: str | None,
    log: Any,
    run_id: str | None = None,
    description_extra: str = "",
    meter: LMCallCounter | None = None,
) -> CalibrationReport:
    """The calibrated judge beside the raw one on test, its verdicts on the gate rows, and
    (with an ``experiment_id`` to record it in) its MLflow run, exported judge and registry
    version. ``meter``: the counter of the run's LM calls, read once test and gate are judged."""
    report = evaluate(prepared, banded, progress)
    if meter is not None:
        report = dataclasses.replace(report, usage=meter.usage(prepared.prices))
    if experiment_id is None:
        return report
    tracked = track_calibration(report, prepared, experiment_id, run_id=run_id, description_extra=description_extra)
    tracked, registry = export_judge(report, prepared, tracked, log=log)
    return dataclasses.replace(report, tracked=tracked, registry=registry)


def evaluate(prepared: Prepared, banded: Banded, progress: ProgressFactory | None) -> CalibrationReport:
    """The raw and the calibrated judge on the test rows (the only use of them), their
    agreement with humans, the calibrated judge's verdicts on the gate rows, and a selective
    judge's coverage and precision there. The usual metrics are the calibrated judge's
    before its band, on every test row; the selective judge's are on the rows it answers."""
    task, split = prepared.task, prepared.split
    raw = judge_split(
        prepared.raw, task, split.test.rows, order_swap=prepared.order_swap, progress=progress, label="raw"
    )
    calibrated = judge_split(
        banded.base, task, split.test.rows, order_swap=prepared.order_swap, progress=progress, label="calibrated"
    )
    report = assemble_report(prepared, raw, calibrated, banded.result, gate_record(prepared, banded.base, progress))
    selective = selective_on_test(prepared, banded, calibrated) if banded.selective else None
    return dataclasses.replace(report, band=banded.band, selective=selective)


def selective_on_test(prepared: Prepared, banded: Banded, calibrated: SideResult) -> SelectiveReport:
    """The selective judge's answers on the test rows (the band read over the verdicts the
    judge gave before it), against the human labels, with group-bootstrap intervals."""
    judge, task, rows = banded.result.judge, prepared.task, prepared.split.test.rows
    assert isinstance(judge, SelectiveJudge) and banded.band is not None
    answers = judge.answer(calibrated.verdicts)
    if task.spec.positive is not None:
        scores = positive_probability(calibrated.verdicts, task)
    else:
        scores = label_probabilities(calibrated.verdicts, task)
    return selective_report(
        banded.band,
        labels=task.spec.labels,
        human=[row.label for row in rows],
        verdicts=[answer.label for answer in answers],
        scores=scores,
        groups=[row.group for row in rows],
        n_resamples=prepared.config.report.n_resamples,
        seed=prepared.config.report.seed,
    )


def gate_record(prepared: Prepared, judge: FittedJudge, progress: ProgressFactory | None) -> EvaluationRecord | None:
    """The calibrated judge's verdicts on the gate rows, for the registry's champion gate."""
    rows = prepared.gate_rows
    if not rows:
        return None
    verdicts = judge.predict(rows, progress=progress, description="calibrated: judging gate rows")
    return build_record(
        prepared.config.judge.name,
        prepared.task.reference,
        prepared.task.spec,
        rows,
        {"calibrated": JudgeRecord(verdicts=[v.label for v in verdicts])},
        include_reference=False,
        data_fingerprint=prepared.split.data_fingerprint,
        split_fingerprint=gate_fingerprint(rows),
    ).model_copy(update={"split": "gate"})


def gate_fingerprint(rows: Sequence[LabeledRow]) -> str:
    return hashlib.sha256("\n".join(sorted(row.id for row in rows)).encode()).hexdigest()


def assemble_report(
    prepared: Prepared,
    raw: SideResult,
    calibrated: SideResult,
    result: FitResult,
    gate: EvaluationRecord | None = None,
) -> CalibrationReport:
    config, task, split = prepared.config, prepared.task, prepared.split
    metric_names = list(label_space(task.spec).metric_names())
    if prepared.order_swap:
        metric_names.append("order_consistency")
    record = build_record(
        config.judge.name,
        task.reference,
        task.spec,
        split.test.rows,
        {"raw": judge_record(task, raw), "calibrated": judge_record(task, calibrated)},
        data_fingerprint=split.data_fingerprint,
        split_fingerprint=split.fingerprint,
    )
    raw_judge = unwrap(prepared.raw)
    if isinstance(raw_judge, RecordedJudge) and raw_judge.verdicts is None:
        record.judges.pop(f"{REFERENCE_PREFIX}{raw_judge.source}", None)  # the same verdicts as "raw"
    agreement = evaluate_record(record, n_resamples=config.report.n_resamples, seed=config.report.seed)
    return CalibrationReport(
        config=config,
        task=task,
        split=split,
        raw=raw,
        calibrated=calibrated,
        calibration_seconds=result.seconds,
        calibration_lm_calls=result.lm_calls,
        strategy=result.strategy,
        metric_names=metric_names,
        lm=prepared.lm,
        calibrated_judge=result.judge,
        record=record,
        agreement=agreement,
        started_at=prepared.started_at,
        gate=gate,
    )


def judge_record(task: Task, side: SideResult) -> JudgeRecord:
    """A judge's verdicts with P(positive) (binary) and P(verdict), for the record, and
    which rows it abstained on when it did."""
    positive = task.spec.positive
    probability = None
    if positive is not None:
        probability = [v.probability_of(positive) for v in side.verdicts]
    abstained = [v.abstained for v in side.verdicts]
    return JudgeRecord(
        verdicts=[v.label for v in side.verdicts],
        probability=probability,
        confidence=[v.confidence for v in side.verdicts],
        swapped=[v.label for v in side.swapped] if side.swapped is not None else None,
        abstained=abstained if any(abstained) else None,
    )

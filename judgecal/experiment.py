"""One calibration, end to end: data → split → raw judge → calibrated judge → test
metrics → MLflow run with the judge bundle and model.

An experiment is described by a TOML file (see ``experiments/*.toml``); every field can
be overridden from the command line.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from judgecal.calibration import CalibrationConfig, strategy_name
from judgecal.card import write_card
from judgecal.data import DataError, Dataset, LabeledRow, Split, SplitSpec, load_rows, load_verdicts, split_by_group
from judgecal.evaluation import (
    REFERENCE_PREFIX,
    AgreementReport,
    EvaluationRecord,
    JudgeRecord,
    build_record,
    evaluate_record,
    label_space,
)
from judgecal.export import bundle_digest, bundle_from_judge, log_judge_model, save_bundle
from judgecal.judges import JudgeProgram, ProgressFactory, Verdict, score_verdicts
from judgecal.lm import LMConfig, build_lm, configure_dspy_cache
from judgecal.paths import dspy_cache_dir, embedding_cache_dir, workspace_root
from judgecal.strategies import (
    FitResult,
    FittedJudge,
    MemoJudge,
    NotPortableError,
    ProgramJudge,
    RecordedJudge,
    RowGuard,
    StrategyEnv,
    StrategySpec,
    fit_judge,
    resolve_strategies,
    unwrap,
)
from judgecal.tasks import Task, resolve_task
from judgecal.tracking import configure_tracking, ensure_experiment, flat_params
from judgecal.verifier import configure_embedding_cache

EVALUATION_FILE = "evaluation.json"


class JudgeSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Names the MLflow experiment (judgecal/<name>) and the bundle.")
    task: str = Field(description="'relevance', 'pairwise', 'attribute' or 'module:Signature'.")
    data: Path = Field(description="Labelled rows (JSONL or CSV); relative to the config file.")
    limit: int | None = Field(default=None, gt=0, description="Use only the first N rows.")
    recorded: str | None = Field(
        default=None,
        description="Calibrate verdicts the rows already hold (reference_judges.<name>) instead of a live model.",
    )
    register_as: str | None = Field(
        default=None,
        description="Register the calibrated judge under this MLflow model name; 'champion' moves to it only "
        "when it beats the current champion significantly on the same test rows.",
    )
    verdicts: Path | None = Field(
        default=None,
        description="Calibrate verdicts from a JSONL file of {id, verdict, probability?} instead of a live model.",
    )
    gate_data: Path | None = Field(
        default=None,
        description="Fresh labelled rows for the registry's champion gate, instead of a [split] gate share.",
    )


class ReportConfig(BaseModel):
    """How intervals are computed for the report and the judge card."""

    model_config = ConfigDict(extra="forbid")

    n_resamples: int = Field(default=2000, ge=100, description="Group-bootstrap resamples.")
    seed: int = 0


class SearchConfig(BaseModel):
    """Which strategies to search, for how many trials, and where the study lives."""

    model_config = ConfigDict(extra="forbid")

    strategies: list[str] = Field(default_factory=lambda: ["all"])
    trials: int = Field(
        default=12, ge=1, description="Distinct finished trials the study should reach (repeats do not count)."
    )
    storage: str | None = Field(default=None, description="Optuna storage URL (default: sqlite in mlruns/).")
    study_name: str | None = Field(default=None, description="Default: <judge name>-<split fingerprint>.")
    seed: int = Field(default=0, description="Sampler seed; the same seed gives the same sequence of trials.")
    worker: int = Field(
        default=0, ge=0, description="This worker's number in a shared study: its sampler seed is seed + worker."
    )
    folds: int = Field(default=5, ge=2, description="Grouped folds of train + dev for cross-validated selection.")
    dev_chunk: int = Field(default=16, ge=1, description="Dev rows judged between pruning checks (LM strategies).")
    prune_p: float = Field(
        default=0.1, gt=0, lt=1, description="Wilcoxon p-value below which an LM trial worse than the best is pruned."
    )
    max_repeats: int = Field(
        default=25, ge=1, description="Stop after this many proposals in a row repeat settings already tried."
    )
    heartbeat_interval: int = Field(default=30, ge=1, description="Seconds between a worker's heartbeats.")
    grace_period: int = Field(default=90, ge=2, description="Seconds without heartbeat before a trial is failed.")


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    judge: JudgeSection
    lm: LMConfig = Field(default_factory=LMConfig)
    split: SplitSpec = Field(default_factory=SplitSpec)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    order_swap: bool | None = Field(
        default=None, description="Also judge pairs with responses swapped (default: pairwise tasks)."
    )
    report: ReportConfig = Field(default_factory=ReportConfig)
    search: SearchConfig | None = Field(
        default=None, description="A [search] section makes the calibration an Optuna search over strategies."
    )


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read a TOML experiment; ``overrides`` use dotted keys (``{"lm.model": "openai/gpt-4o"}``)."""
    path = Path(path)
    if not path.exists():
        raise DataError("no such experiment file", path=path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        where = re.search(r"\(at line (\d+), column (\d+)\)", str(error))
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(error))
        line = int(where.group(1)) if where else None
        column = f" (column {where.group(2)})" if where else ""
        raise DataError(f"invalid TOML: {message}{column}", path=path, line=line) from None
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = document
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    for key in ("data", "verdicts", "gate_data"):
        value = document.get("judge", {}).get(key)
        if value is not None and not Path(value).is_absolute() and (overrides or {}).get(f"judge.{key}") is None:
            document["judge"][key] = str((path.parent / value).resolve())
    try:
        return ExperimentConfig.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise DataError(first["msg"], path=path, field=where) from None


@dataclass
class SideResult:
    """One judge's verdicts on the test split and their agreement with humans."""

    verdicts: list[Verdict]
    swapped: list[Verdict] | None
    metrics: dict[str, float]
    seconds: float


@dataclass
class Prepared:
    """Everything a calibration starts from: rows split by group, the raw judge, the guard
    that keeps test rows out of fitting and selection."""

    config: ExperimentConfig
    task: Task
    dataset: Dataset
    split: Split
    lm: Any
    raw: FittedJudge
    guard: RowGuard
    order_swap: bool
    root: Path
    started_at: float = field(default_factory=time.time)
    gate_rows: tuple[LabeledRow, ...] = ()

    @property
    def reference_judges(self) -> tuple[str, ...]:
        return tuple(sorted({name for row in self.dataset.rows for name in row.reference_judges}))

    def env(self, log: Any = print) -> StrategyEnv:
        """What strategies are built from; the raw judge's answers are kept per row."""
        return StrategyEnv(
            task=self.task,
            raw=self.raw,
            lm=self.lm,
            settings=self.config.calibration,
            references=self.reference_judges,
            log=log,
        )


def prepare(config: ExperimentConfig, *, root: Path | None = None, log: Any = print) -> Prepared:
    """Load and split the rows, build the LM (unless verdicts are recorded) and the raw judge."""
    root = root or workspace_root()
    task = resolve_task(config.judge.task)
    dataset = load_rows(config.judge.data, task.spec, limit=config.judge.limit)
    split = split_by_group(dataset, config.split)
    sizes = split.sizes
    log(
        f"{config.judge.name}: {len(dataset)} rows from {project_path(dataset.source, root)} → "
        f"train {sizes['train']}, dev {sizes['dev']}, test {sizes['test']} (grouped, seed {config.split.seed})"
    )
    configure_dspy_cache(dspy_cache_dir(root))
    configure_embedding_cache(embedding_cache_dir(root))
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
        lm = build_lm(config.lm)
        raw = ProgramJudge(task, JudgeProgram(task.signature), lm, config.judge.name)
    pairwise = {"response_a", "response_b"} <= set(task.spec.input_names)
    order_swap = config.order_swap if config.order_swap is not None else pairwise
    gate = _gate_rows(config, task, dataset, split)
    guard = RowGuard.for_rows([*split.test.rows, *gate], [*split.train.rows, *split.dev.rows])
    return Prepared(config, task, dataset, split, lm, MemoJudge(raw), guard, order_swap, root, gate_rows=gate)


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


@dataclass
class CalibrationReport:
    config: ExperimentConfig
    task: Task
    split: Split
    raw: SideResult
    calibrated: SideResult
    calibration_seconds: float
    calibration_lm_calls: int
    strategy: str = ""
    run_id: str | None = None
    experiment_id: str | None = None
    tracking_uri: str | None = None
    metric_names: list[str] = field(default_factory=list)
    lm: Any = None
    calibrated_judge: FittedJudge | None = None
    record: EvaluationRecord | None = None
    agreement: AgreementReport | None = None
    registry: Any = None
    started_at: float = field(default_factory=time.time)
    gate: EvaluationRecord | None = None
    model_uri: str | None = None
    not_exported: str | None = None

    @property
    def calibrated_program(self) -> JudgeProgram | None:
        return self.calibrated_judge.program if isinstance(self.calibrated_judge, ProgramJudge) else None

    @property
    def delta(self) -> dict[str, float]:
        return {
            name: self.calibrated.metrics[name] - self.raw.metrics[name]
            for name in self.metric_names
            if name in self.raw.metrics and name in self.calibrated.metrics
        }

    def table(self) -> list[tuple[str, float, float, float]]:
        delta = self.delta
        return [(m, self.raw.metrics[m], self.calibrated.metrics[m], delta[m]) for m in self.metric_names if m in delta]


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
    if spec.calls_lm_to_fit:
        return fit_judge(spec, env, params, split.train.rows, split.dev.rows, prepared.guard)
    rows = [*split.train.rows, *split.dev.rows]
    return fit_judge(spec, env, params, rows, None, prepared.guard, step="fit on train + dev")


def run_calibration(
    config: ExperimentConfig,
    *,
    progress: ProgressFactory | None = None,
    track: bool = True,
    tracking_uri: str | None = None,
    root: Path | None = None,
    log: Any = print,
) -> CalibrationReport:
    """Calibrate one judge with one strategy and record it; test is used only for the report."""
    prepared = prepare(config, root=root, log=log)
    if track:  # a tracking store that cannot be reached fails now, not after the work
        configure_tracking(tracking_uri, prepared.root)
        ensure_experiment(config.judge.name, prepared.root)
    [spec] = resolve_strategies(
        [strategy_name(config.calibration)], prepared.task, has_program=isinstance(unwrap(prepared.raw), ProgramJudge)
    )
    where = "train, selecting on dev" if spec.calls_lm_to_fit else "train + dev"
    log(f"{config.judge.name}: calibrating with {spec.name} ({spec.description}) on {where}")
    result = final_fit(spec, prepared, strategy_params(spec, config.calibration), log)
    return report_and_record(prepared, result, progress=progress, track=track, tracking_uri=tracking_uri, log=log)


def report_and_record(
    prepared: Prepared,
    result: FitResult,
    *,
    progress: ProgressFactory | None,
    track: bool,
    tracking_uri: str | None,
    log: Any,
    run_id: str | None = None,
    description_extra: str = "",
) -> CalibrationReport:
    """The calibrated judge beside the raw one on test, its verdicts on the gate rows, and
    (when tracking) its MLflow run and registry version."""
    task, split, config = prepared.task, prepared.split, prepared.config
    raw = judge_split(
        prepared.raw, task, split.test.rows, order_swap=prepared.order_swap, progress=progress, label="raw"
    )
    calibrated = judge_split(
        result.judge, task, split.test.rows, order_swap=prepared.order_swap, progress=progress, label="calibrated"
    )
    report = assemble_report(prepared, raw, calibrated, result)
    report.gate = gate_record(prepared, result.judge, progress)
    if not track:
        return report
    track_calibration(
        report,
        result.judge,
        prepared,
        tracking_uri=tracking_uri,
        run_id=run_id,
        description_extra=description_extra,
    )
    if report.not_exported:
        log(report.not_exported)
    if config.judge.register_as and report.run_id and report.model_uri:
        from judgecal import summary
        from judgecal.registry import register_judge

        words = report.agreement.comparison.statement if report.agreement and report.agreement.comparison else ""
        title = summary.title(report.agreement, config.judge.name) if report.agreement else config.judge.name
        report.registry = register_judge(
            report.run_id,
            report.model_uri or f"runs:/{report.run_id}/judge",
            config.judge.register_as,
            report.gate,
            gate_rows=list(prepared.gate_rows),
            summary=f"{title}. {words}",
            n_resamples=config.report.n_resamples,
            seed=config.report.seed,
        )
        log(report.registry.reason)
    return report


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
    import hashlib

    return hashlib.sha256("\n".join(sorted(row.id for row in rows)).encode()).hexdigest()


def assemble_report(
    prepared: Prepared, raw: SideResult, calibrated: SideResult, result: FitResult
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
    )


def judge_record(task: Task, side: SideResult) -> JudgeRecord:
    """A judge's verdicts with P(positive) (binary) and P(verdict), for the record."""
    positive = task.spec.positive
    probability = None
    if positive is not None:
        probability = [v.probability_of(positive) for v in side.verdicts]
    return JudgeRecord(
        verdicts=[v.label for v in side.verdicts],
        probability=probability,
        confidence=[v.confidence for v in side.verdicts],
        swapped=[v.label for v in side.swapped] if side.swapped is not None else None,
    )


def calibration_params(report: CalibrationReport, prepared: Prepared) -> dict[str, str]:
    config, split = report.config, report.split
    params = {
        "judge.model": config.judge.recorded
        or (project_path(config.judge.verdicts, prepared.root) if config.judge.verdicts else config.lm.model),
        "strategy": report.strategy,
        "seed": config.calibration.seed,
        "data.path": project_path(prepared.dataset.source, prepared.root),
        "data.fingerprint": split.data_fingerprint,
        "split.fingerprint": split.fingerprint,
        **{f"split.{name}_rows": size for name, size in split.sizes.items()},
        "split.seed": config.split.seed,
        "split.dev_fraction": config.split.dev,
        "split.test_fraction": config.split.test,
        **flat_params("lm", config.lm.model_dump(exclude={"model"})),
        **flat_params("calibration", config.calibration.model_dump(exclude={"strategy", "seed"})),
    }
    return {k: str(v) for k, v in params.items()}


def project_path(path: str | Path, root: Path) -> str:
    """A path as the project sees it: relative to the workspace when inside it, else only
    the file's name (the data fingerprint identifies the content)."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(root.resolve()))
    except ValueError:
        return resolved.name


def track_calibration(
    report: CalibrationReport,
    judge: FittedJudge,
    prepared: Prepared,
    *,
    tracking_uri: str | None,
    run_name: str | None = None,
    extra_params: dict[str, Any] | None = None,
    run_id: str | None = None,
    description_extra: str = "",
) -> str:
    """Record one calibration as an MLflow run (or into the existing run ``run_id``): named
    by its result, described by its verdict, with headline metrics, every metric in one
    table, the judge card, the bundle and the model."""
    import mlflow

    from judgecal import summary

    config = report.config
    report.tracking_uri = configure_tracking(tracking_uri, prepared.root)
    experiment_id = ensure_experiment(config.judge.name, prepared.root)
    client = mlflow.MlflowClient()
    agreement = report.agreement
    name = run_name or (summary.short_title(agreement) if agreement else "") or config.judge.name
    if run_id is None:
        run_id = client.create_run(experiment_id, start_time=int(report.started_at * 1000), run_name=name).info.run_id
    else:
        client.update_run(run_id, name=name)
    mlflow.set_experiment(experiment_id=experiment_id)  # start_run refuses a run of another active experiment
    with mlflow.start_run(run_id=run_id):
        tags = {
            "judgecal.task": report.task.reference,
            "judgecal.judge": config.judge.name,
            "judgecal.strategy": report.strategy,
        }
        if agreement is not None:
            tags["mlflow.note.content"] = summary.description(agreement, extra=description_extra)
            if agreement.comparison is not None:
                tags["judgecal.outcome"] = agreement.comparison.outcome
        mlflow.set_tags(tags)
        params = {**calibration_params(report, prepared), **{k: str(v) for k, v in (extra_params or {}).items()}}
        earlier = client.get_run(run_id).data.params
        changed = sorted(k for k, v in params.items() if k in earlier and earlier[k] != v)
        if changed:  # a resumed search may select another strategy; MLflow keeps params as first logged
            mlflow.set_tag("judgecal.params_now", json.dumps({k: params[k] for k in changed})[:5000])
        mlflow.log_params({k: v for k, v in params.items() if k not in earlier})
        mlflow.log_metrics(tracked_metrics(report))
        if agreement is not None:
            mlflow.log_table(summary.metric_table(agreement), "metrics.json")
        log_judge_artifacts(report, judge, prepared)
    report.run_id = run_id
    report.experiment_id = experiment_id
    return run_id


def log_judge_artifacts(report: CalibrationReport, judge: FittedJudge, prepared: Prepared) -> None:
    """Program, evaluation record, report, judge card, bundle and MLflow model of the active run."""
    import mlflow

    config = report.config
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        program = getattr(judge, "program", None)
        if program is not None:
            program_path = folder / "program.json"
            program_path.write_text(json.dumps(program.dump_state(), indent=2, ensure_ascii=False))
            mlflow.log_artifact(str(program_path))
        mlflow.log_dict(
            {name: [row.id for row in part.rows] for name, part in report.split.parts().items()}
            | {"gate": [row.id for row in prepared.gate_rows]},
            "rows.json",
        )
        if report.gate is not None:
            mlflow.log_dict(report.gate.model_dump(mode="json"), "gate.json")
        if report.record is not None and report.agreement is not None:
            mlflow.log_dict(report.record.model_dump(mode="json"), EVALUATION_FILE)
            mlflow.log_dict(report.agreement.model_dump(mode="json"), "report.json")
            card_folder = folder / "card"
            write_card(report.agreement, report.record, card_folder)
            mlflow.log_artifacts(str(card_folder), artifact_path="card")
        try:
            bundle = bundle_from_judge(
                judge,
                config.lm,
                calibration={"strategy": report.strategy, **config.calibration.model_dump(exclude={"strategy"})},
                metrics={f"test.{k}": v for k, v in report.calibrated.metrics.items()},
                evaluation=bundle_evaluation(report),
                data_fingerprint=report.split.data_fingerprint,
                split_fingerprint=report.split.fingerprint,
            )
        except NotPortableError as reason:
            report.not_exported = f"no judge bundle or model was exported: {reason}"
            mlflow.set_tag("judgecal.exported", report.not_exported)
            return
        bundle_dir = folder / "bundle"
        save_bundle(bundle, bundle_dir)
        mlflow.set_tag("judgecal.bundle_digest", bundle_digest(bundle))
        mlflow.log_artifacts(str(bundle_dir), artifact_path="bundle")
        info = log_judge_model(bundle_dir, input_names=list(report.task.spec.input_names))
        report.model_uri = info.model_uri


def bundle_evaluation(report: CalibrationReport) -> dict[str, Any] | None:
    """What a bundle says about its own quality: test metrics with intervals, the
    comparison with the raw judge, the human ceiling."""
    agreement = report.agreement
    if agreement is None:
        return None
    calibrated = agreement.judge("calibrated")
    return {
        "split": agreement.split,
        "rows": agreement.rows,
        "groups": agreement.groups,
        "metrics": {name: estimate.model_dump() for name, estimate in calibrated.metrics.items()},
        "confidence": {name: estimate.model_dump() for name, estimate in calibrated.confidence_metrics.items()},
        "comparison": agreement.comparison.model_dump() if agreement.comparison else None,
        "human_ceiling": agreement.ceiling.model_dump() if agreement.ceiling else None,
        "fraction_of_ceiling": calibrated.fraction_of_ceiling.model_dump() if calibrated.fraction_of_ceiling else None,
    }


def tracked_metrics(report: CalibrationReport) -> dict[str, float]:
    """The headline metrics (raw, calibrated and Δ of κ and the task's main measure, the
    p-value, ...) and the costs; every other number is in ``metrics.json`` and
    ``report.json``."""
    from judgecal import summary

    metrics: dict[str, float] = {}
    if report.agreement is not None:
        metrics.update(summary.headline_metrics(report.agreement))
    else:
        for name in report.metric_names:
            metrics[f"raw.{name}"] = report.raw.metrics[name]
            metrics[f"calibrated.{name}"] = report.calibrated.metrics[name]
        metrics.update({f"delta.{name}": value for name, value in report.delta.items()})
    metrics.update(
        {
            "cost.fit_seconds": report.calibration_seconds,
            "cost.fit_lm_calls": float(report.calibration_lm_calls),
            "cost.raw_test_seconds": report.raw.seconds,
            "cost.calibrated_test_seconds": report.calibrated.seconds,
        }
    )
    stats = getattr(getattr(report.lm, "engine", None), "stats", None)
    if stats is not None:
        metrics["cost.prompt_tokens"] = float(stats.prompt_tokens)
        metrics["cost.prompt_tokens_reused_rate"] = stats.reuse_rate
    return {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}

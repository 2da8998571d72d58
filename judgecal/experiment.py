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
from judgecal.export import bundle_from_judge, log_judge_model, save_bundle
from judgecal.judges import JudgeProgram, ProgressFactory, Verdict, score_verdicts
from judgecal.lm import LMConfig, build_lm, configure_dspy_cache
from judgecal.paths import dspy_cache_dir, workspace_root
from judgecal.strategies import (
    FitResult,
    FittedJudge,
    MemoJudge,
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
    search: SearchConfig = Field(default_factory=SearchConfig)


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
    for key in ("data", "verdicts"):
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
        f"{config.judge.name}: {len(dataset)} rows from {dataset.source} → "
        f"train {sizes['train']}, dev {sizes['dev']}, test {sizes['test']} (grouped, seed {config.split.seed})"
    )
    configure_dspy_cache(dspy_cache_dir(root))
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
    guard = RowGuard.for_rows(split.test.rows, [*split.train.rows, *split.dev.rows])
    return Prepared(config, task, dataset, split, lm, MemoJudge(raw), guard, order_swap, root)


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
    task, split = prepared.task, prepared.split
    [spec] = resolve_strategies(
        [strategy_name(config.calibration)], task, has_program=isinstance(unwrap(prepared.raw), ProgramJudge)
    )
    raw = judge_split(
        prepared.raw, task, split.test.rows, order_swap=prepared.order_swap, progress=progress, label="raw"
    )
    where = "train, selecting on dev" if spec.calls_lm_to_fit else "train + dev"
    log(f"{config.judge.name}: calibrating with {spec.name} ({spec.description}) on {where}")
    result = final_fit(spec, prepared, strategy_params(spec, config.calibration), log)
    calibrated = judge_split(
        result.judge, task, split.test.rows, order_swap=prepared.order_swap, progress=progress, label="calibrated"
    )
    report = assemble_report(prepared, raw, calibrated, result)
    if track:
        track_calibration(report, result.judge, prepared, tracking_uri=tracking_uri)
        if config.judge.register_as and report.run_id and report.record is not None:
            from judgecal.registry import register_judge

            report.registry = register_judge(
                report.run_id,
                config.judge.register_as,
                report.record,
                n_resamples=config.report.n_resamples,
                seed=config.report.seed,
            )
            log(report.registry.reason)
    return report


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
        "model": config.judge.recorded or (str(config.judge.verdicts) if config.judge.verdicts else config.lm.model),
        "strategy": report.strategy,
        "seed": config.calibration.seed,
        "data.path": prepared.dataset.source,
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


def track_calibration(
    report: CalibrationReport,
    judge: FittedJudge,
    prepared: Prepared,
    *,
    tracking_uri: str | None,
    nested: bool = False,
    run_name: str | None = None,
    extra_params: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> str:
    """Record one calibration as an MLflow run (nested under the active run when asked, or
    into the existing run ``run_id``)."""
    import mlflow

    config = report.config
    report.tracking_uri = configure_tracking(tracking_uri, prepared.root)
    experiment_id = ensure_experiment(config.judge.name, prepared.root)
    run_name = run_name or f"{report.strategy}-seed{config.calibration.seed}"
    started = (
        mlflow.start_run(run_id=run_id)
        if run_id
        else mlflow.start_run(experiment_id=experiment_id, run_name=run_name, nested=nested)
    )
    with started as run:
        mlflow.set_tags(
            {
                "judgecal.task": report.task.reference,
                "judgecal.judge": config.judge.name,
                "judgecal.strategy": report.strategy,
            }
        )
        mlflow.log_params(
            {**calibration_params(report, prepared), **{k: str(v) for k, v in (extra_params or {}).items()}}
        )
        mlflow.log_metrics(tracked_metrics(report))
        agreement = report.agreement
        if agreement is not None and agreement.comparison is not None:
            mlflow.set_tags(
                {
                    "judgecal.outcome": agreement.comparison.outcome,
                    "judgecal.statement": agreement.comparison.statement[:5000],
                }
            )
        log_judge_artifacts(report, judge, prepared)
        report.run_id = run.info.run_id
        report.experiment_id = experiment_id
        return run.info.run_id


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
        if report.record is not None and report.agreement is not None:
            mlflow.log_dict(report.record.model_dump(mode="json"), EVALUATION_FILE)
            mlflow.log_dict(report.agreement.model_dump(mode="json"), "report.json")
            card_folder = folder / "card"
            write_card(report.agreement, report.record, card_folder)
            mlflow.log_artifacts(str(card_folder), artifact_path="card")
        if isinstance(unwrap(judge), RecordedJudge) and unwrap(judge).verdicts is not None:
            return  # verdicts from a file: nothing portable to export
        bundle = bundle_from_judge(
            judge,
            config.lm,
            calibration={"strategy": report.strategy, **config.calibration.model_dump(exclude={"strategy"})},
            metrics={f"test.{k}": v for k, v in report.calibrated.metrics.items()},
            evaluation=bundle_evaluation(report),
            data_fingerprint=report.split.data_fingerprint,
            split_fingerprint=report.split.fingerprint,
        )
        bundle_dir = folder / "bundle"
        save_bundle(bundle, bundle_dir)
        mlflow.log_artifacts(str(bundle_dir), artifact_path="bundle")
        log_judge_model(bundle_dir, input_names=list(report.task.spec.input_names))


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
    """``raw.<m>``, ``calibrated.<m>``, ``delta.<m>`` with ``.low`` / ``.high`` interval ends,
    reference judges, the human ceiling and costs, as MLflow metrics."""
    metrics: dict[str, float] = {}
    agreement = report.agreement
    if agreement is not None:
        for score in agreement.judges:
            prefix = score.name.replace(REFERENCE_PREFIX, "reference.")
            for name, estimate in {**score.metrics, **score.confidence_metrics}.items():
                metrics[f"{prefix}.{name}"] = estimate.value
                metrics[f"{prefix}.{name}.low"] = estimate.low
                metrics[f"{prefix}.{name}.high"] = estimate.high
            if score.fraction_of_ceiling is not None:
                metrics[f"{prefix}.fraction_of_ceiling"] = score.fraction_of_ceiling.value
        if agreement.comparison is not None:
            for name, estimate in agreement.comparison.deltas.items():
                metrics[f"delta.{name}"] = estimate.value
                metrics[f"delta.{name}.low"] = estimate.low
                metrics[f"delta.{name}.high"] = estimate.high
            if agreement.comparison.mcnemar is not None:
                metrics["delta.mcnemar_p"] = agreement.comparison.mcnemar.p_value
        if agreement.ceiling is not None:
            metrics["human.alpha"] = agreement.ceiling.alpha.value
            metrics["human.annotator_vs_rest_kappa"] = agreement.ceiling.annotator_vs_rest_kappa.value
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

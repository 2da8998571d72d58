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

from judgecal.calibration import CalibrationConfig, calibrate_program
from judgecal.card import write_card
from judgecal.data import DataError, Dataset, LabeledRow, Split, SplitSpec, load_rows, split_by_group
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
from judgecal.judges import Judge, JudgeProgram, ProgressFactory, Verdict, score_verdicts
from judgecal.lm import LMConfig, build_lm, configure_dspy_cache
from judgecal.paths import dspy_cache_dir, workspace_root
from judgecal.tasks import Task, resolve_task
from judgecal.tracking import configure_tracking, ensure_experiment, flat_params

EVALUATION_FILE = "evaluation.json"


class JudgeSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Names the MLflow experiment (judgecal/<name>) and the bundle.")
    task: str = Field(description="'relevance', 'pairwise', 'attribute' or 'module:Signature'.")
    data: Path = Field(description="Labelled rows (JSONL or CSV); relative to the config file.")
    limit: int | None = Field(default=None, gt=0, description="Use only the first N rows.")


class ReportConfig(BaseModel):
    """How intervals are computed for the report and the judge card."""

    model_config = ConfigDict(extra="forbid")

    n_resamples: int = Field(default=2000, ge=100, description="Group-bootstrap resamples.")
    seed: int = 0


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
    data = document.get("judge", {}).get("data")
    if data is not None and not Path(data).is_absolute() and (overrides or {}).get("judge.data") is None:
        document["judge"]["data"] = str((path.parent / data).resolve())
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
class CalibrationReport:
    config: ExperimentConfig
    task: Task
    split: Split
    raw: SideResult
    calibrated: SideResult
    calibration_seconds: float
    calibration_lm_calls: int
    run_id: str | None = None
    experiment_id: str | None = None
    tracking_uri: str | None = None
    bundle_path: Path | None = None
    metric_names: list[str] = field(default_factory=list)
    lm: Any = None
    calibrated_program: JudgeProgram | None = None
    record: EvaluationRecord | None = None
    agreement: AgreementReport | None = None
    card_path: Path | None = None

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
    judge: Judge, rows: Sequence[LabeledRow], *, order_swap: bool, progress: ProgressFactory | None, label: str
) -> SideResult:
    started = time.perf_counter()
    verdicts = judge.predict(rows, progress=progress, description=f"{label}: judging test")
    swapped = None
    if order_swap:
        swapped = judge.predict_swapped(rows, progress=progress, description=f"{label}: judging swapped")
    metrics = score_verdicts(judge.task, rows, verdicts, swapped)
    return SideResult(verdicts, swapped, metrics, time.perf_counter() - started)


def run_calibration(
    config: ExperimentConfig,
    *,
    progress: ProgressFactory | None = None,
    track: bool = True,
    tracking_uri: str | None = None,
    root: Path | None = None,
    log: Any = print,
) -> CalibrationReport:
    """Calibrate one judge and record it; the test split is used only for the final report."""
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
    lm = build_lm(config.lm)
    order_swap = config.order_swap if config.order_swap is not None else set(task.spec.labels) >= {"A", "B"}

    raw_judge = Judge(task, JudgeProgram(task.signature), lm=lm, name=config.judge.name)
    raw = judge_split(raw_judge, split.test.rows, order_swap=order_swap, progress=progress, label="raw")

    log(f"{config.judge.name}: calibrating with {config.calibration.optimizer} on train, selecting on dev")
    result = calibrate_program(task, lm, split.train.rows, split.dev.rows, config.calibration)
    _assert_no_test_rows(result.program, split.test)
    calibrated_judge = Judge(task, result.program, lm=lm, name=config.judge.name)
    calibrated = judge_split(
        calibrated_judge, split.test.rows, order_swap=order_swap, progress=progress, label="calibrated"
    )
    metric_names = list(label_space(task.spec).metric_names())
    if order_swap:
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
    agreement = evaluate_record(record, n_resamples=config.report.n_resamples, seed=config.report.seed)
    report = CalibrationReport(
        config=config,
        task=task,
        split=split,
        raw=raw,
        calibrated=calibrated,
        calibration_seconds=result.seconds,
        calibration_lm_calls=result.lm_calls,
        metric_names=metric_names,
        lm=lm,
        calibrated_program=result.program,
        record=record,
        agreement=agreement,
    )
    if track:
        _track(report, calibrated_judge, dataset, tracking_uri=tracking_uri, root=root)
    return report


def judge_record(task: Task, side: SideResult) -> JudgeRecord:
    """A live judge's verdicts with P(positive) (binary) and P(verdict), for the record."""
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


def _assert_no_test_rows(program: JudgeProgram, test: Dataset) -> None:
    """Demos must come from train: a test row among them would leak the report's labels."""
    test_ids = {row.id for row in test.rows}
    for predictor in program.predictors():
        for demo in predictor.demos:
            row_id = demo.get("row_id") if hasattr(demo, "get") else None
            if row_id in test_ids:
                raise AssertionError(f"test row {row_id!r} was used as a demo")


def _track(report: CalibrationReport, judge: Judge, dataset: Dataset, *, tracking_uri: str | None, root: Path) -> None:
    import mlflow

    config = report.config
    report.tracking_uri = configure_tracking(tracking_uri, root)
    experiment_id = ensure_experiment(config.judge.name, root)
    run_name = f"{config.calibration.optimizer}-seed{config.calibration.seed}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.set_tags({"judgecal.task": report.task.reference, "judgecal.judge": config.judge.name})
        params = {
            "model": config.lm.model,
            "optimizer": config.calibration.optimizer,
            "seed": config.calibration.seed,
            "data.path": dataset.source,
            "data.fingerprint": report.split.data_fingerprint,
            "split.fingerprint": report.split.fingerprint,
            **{f"split.{name}_rows": size for name, size in report.split.sizes.items()},
            "split.seed": config.split.seed,
            "split.dev_fraction": config.split.dev,
            "split.test_fraction": config.split.test,
            **flat_params("lm", config.lm.model_dump(exclude={"model"})),
            **flat_params("calibration", config.calibration.model_dump(exclude={"optimizer", "seed"})),
        }
        mlflow.log_params({k: str(v) for k, v in params.items()})
        mlflow.log_metrics(tracked_metrics(report))
        agreement = report.agreement
        if agreement is not None and agreement.comparison is not None:
            mlflow.set_tags(
                {
                    "judgecal.outcome": agreement.comparison.outcome,
                    "judgecal.statement": agreement.comparison.statement[:5000],
                }
            )

        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            program_path = folder / "program.json"
            program_path.write_text(json.dumps(judge.program.dump_state(), indent=2, ensure_ascii=False))
            mlflow.log_artifact(str(program_path))
            if report.record is not None and agreement is not None:
                mlflow.log_dict(report.record.model_dump(mode="json"), EVALUATION_FILE)
                mlflow.log_dict(agreement.model_dump(mode="json"), "report.json")
                card_folder = folder / "card"
                write_card(agreement, report.record, card_folder)
                mlflow.log_artifacts(str(card_folder), artifact_path="card")
            bundle = bundle_from_judge(
                judge,
                config.lm,
                calibration=config.calibration.model_dump(),
                metrics={f"test.{k}": v for k, v in report.calibrated.metrics.items()},
                data_fingerprint=report.split.data_fingerprint,
                split_fingerprint=report.split.fingerprint,
            )
            bundle_dir = folder / "bundle"
            save_bundle(bundle, bundle_dir)
            mlflow.log_artifacts(str(bundle_dir), artifact_path="bundle")
            log_judge_model(bundle_dir, input_names=list(report.task.spec.input_names))
        report.run_id = run.info.run_id
        report.experiment_id = experiment_id


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
            "cost.calibration_seconds": report.calibration_seconds,
            "cost.calibration_lm_calls": float(report.calibration_lm_calls),
            "cost.raw_test_seconds": report.raw.seconds,
            "cost.calibrated_test_seconds": report.calibrated.seconds,
        }
    )
    stats = getattr(getattr(report.lm, "engine", None), "stats", None)
    if stats is not None:
        metrics["cost.prompt_tokens"] = float(stats.prompt_tokens)
        metrics["cost.prompt_tokens_reused_rate"] = stats.reuse_rate
    return {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}

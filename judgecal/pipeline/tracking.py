"""MLflow tracking: one experiment per judge, one run per calibration.

By default the store is local and self-contained: ``mlruns/mlflow.db`` (SQLite) with
artifacts under ``mlruns/artifacts/``, both resolved from the workspace rather than the
working directory. Point ``MLFLOW_TRACKING_URI`` (or ``--tracking-uri``) at an MLflow
server to share runs between machines. The workspace points MLflow at the store, once per
run (:meth:`~judgecal.workspace.Workspace.open_tracking`); :func:`ensure_experiment` does
it before anything else touches the store.

:func:`track_calibration` records a calibration and returns the :class:`TrackedRun`; what
is exported into the run (bundle, model, registry) is :mod:`judgecal.pipeline.publish`'s.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from judgecal.artifacts import (
    CARD_DIR,
    EVALUATION_FILE,
    GATE_FILE,
    METRICS_TABLE,
    PROGRAM_FILE,
    REPORT_FILE,
    ROWS_FILE,
    SELECTIVE_FILE,
)
from judgecal.pipeline.results import CalibrationReport, Prepared, TrackedRun
from judgecal.report.card import write_card
from judgecal.report.selective import description_lines, selective_metrics
from judgecal.workspace import Workspace


def calibration_params(report: CalibrationReport, prepared: Prepared) -> dict[str, str]:
    config, split, workspace = report.config, report.split, prepared.workspace
    params = {
        "judge.model": config.judge.recorded
        or (workspace.project_path(config.judge.verdicts) if config.judge.verdicts else config.lm.model),
        "strategy": report.strategy,
        "seed": config.calibration.seed,
        "data.path": workspace.project_path(prepared.dataset.source),
        "data.fingerprint": split.data_fingerprint,
        "split.fingerprint": split.fingerprint,
        **{f"split.{name}_rows": size for name, size in split.sizes.items()},
        "split.seed": config.split.seed,
        "split.dev_fraction": config.split.dev,
        "split.test_fraction": config.split.test,
        **flat_params("lm", config.lm.model_dump(exclude={"model"})),
        **flat_params("calibration", config.calibration.model_dump(exclude={"strategy", "seed"})),
    }
    if config.selective is not None:
        params["split.calibration_fraction"] = config.split.calibration
        params.update(flat_params("selective", config.selective.model_dump()))
    return {k: str(v) for k, v in params.items()}


def track_calibration(
    report: CalibrationReport,
    prepared: Prepared,
    experiment_id: str,
    *,
    run_id: str | None = None,
    description_extra: str = "",
) -> TrackedRun:
    """Record one calibration as an MLflow run of the experiment (or into the existing run
    ``run_id``): named by its result, described by its verdict, with headline metrics,
    every metric in one table, the program, the rows of each part, the records and the
    judge card. The store and the active experiment are those :func:`ensure_experiment` set."""
    import mlflow

    from judgecal.report import summary

    config = report.config
    client = mlflow.MlflowClient()
    agreement = report.agreement
    name = (summary.short_title(agreement) if agreement else "") or config.judge.name
    if run_id is None:
        run_id = client.create_run(experiment_id, start_time=int(report.started_at * 1000), run_name=name).info.run_id
    else:
        client.update_run(run_id, name=name)
    with mlflow.start_run(run_id=run_id):
        tags = {
            "judgecal.task": report.task.reference,
            "judgecal.judge": config.judge.name,
            "judgecal.strategy": report.strategy,
        }
        if agreement is not None:
            extra = "\n".join(description_lines(report.selective, report.band))
            extra = "\n\n".join(part for part in (extra, description_extra) if part)
            tags["mlflow.note.content"] = summary.description(agreement, extra=extra)
            if agreement.comparison is not None:
                tags["judgecal.outcome"] = agreement.comparison.outcome
        mlflow.set_tags(tags)
        params = calibration_params(report, prepared)
        earlier = client.get_run(run_id).data.params
        changed = sorted(k for k, v in params.items() if k in earlier and earlier[k] != v)
        if changed:  # a resumed search may select another strategy; MLflow keeps params as first logged
            mlflow.set_tag("judgecal.params_now", json.dumps({k: params[k] for k in changed})[:5000])
        mlflow.log_params({k: v for k, v in params.items() if k not in earlier})
        mlflow.log_metrics(tracked_metrics(report))
        if agreement is not None:
            mlflow.log_table(summary.metric_table(agreement), METRICS_TABLE)
        log_run_artifacts(report, prepared)
    return TrackedRun(run_id=run_id, experiment_id=experiment_id, tracking_uri=prepared.workspace.tracking_uri)


def log_run_artifacts(report: CalibrationReport, prepared: Prepared) -> None:
    """Program, rows of each part, gate record, evaluation record, report and judge card,
    into the active run."""
    import mlflow

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        program = getattr(report.calibrated_judge, "program", None)
        if program is not None:
            program_path = folder / PROGRAM_FILE
            program_path.write_text(json.dumps(program.dump_state(), indent=2, ensure_ascii=False))
            mlflow.log_artifact(str(program_path))
        mlflow.log_dict(
            {name: [row.id for row in part.rows] for name, part in report.split.parts().items()}
            | {"gate": [row.id for row in prepared.gate_rows]},
            ROWS_FILE,
        )
        if report.gate is not None:
            mlflow.log_dict(report.gate.model_dump(mode="json"), GATE_FILE)
        if report.band is not None:
            selective = report.selective.model_dump(mode="json") if report.selective is not None else None
            mlflow.log_dict({"band": report.band.model_dump(mode="json"), "test": selective}, SELECTIVE_FILE)
        if report.record is not None and report.agreement is not None:
            mlflow.log_dict(report.record.model_dump(mode="json"), EVALUATION_FILE)
            mlflow.log_dict(report.agreement.model_dump(mode="json"), REPORT_FILE)
            card_folder = folder / CARD_DIR
            write_card(
                report.agreement,
                report.record,
                card_folder,
                selective=report.selective,
                band=report.band,
                usage=report.usage,
            )
            mlflow.log_artifacts(str(card_folder), artifact_path=CARD_DIR)


def tracked_metrics(report: CalibrationReport) -> dict[str, float]:
    """The headline metrics (raw, calibrated and Δ of κ and the task's main measure, the
    p-value, ...) and the costs; every other number is in ``metrics.json`` and
    ``report.json``."""
    from judgecal.report import summary

    metrics: dict[str, float] = {}
    if report.agreement is not None:
        metrics.update(summary.headline_metrics(report.agreement))
    else:
        for name in report.metric_names:
            metrics[f"raw.{name}"] = report.raw.metrics[name]
            metrics[f"calibrated.{name}"] = report.calibrated.metrics[name]
        metrics.update({f"delta.{name}": value for name, value in report.delta.items()})
    if report.selective is not None:
        metrics.update(selective_metrics(report.selective))
    metrics.update(
        {
            "cost.fit_seconds": report.calibration_seconds,
            "cost.fit_lm_calls": float(report.calibration_lm_calls),
            "cost.raw_test_seconds": report.raw.seconds,
            "cost.calibrated_test_seconds": report.calibrated.seconds,
        }
    )
    if report.usage is not None:
        metrics.update(report.usage.metrics())
    stats = getattr(getattr(report.lm, "engine", None), "stats", None)
    if stats is not None:
        metrics["cost.prompt_tokens"] = float(stats.prompt_tokens)
        metrics["cost.prompt_tokens_reused_rate"] = stats.reuse_rate
    return {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}


EXPERIMENT_PREFIX = "judgecal"


def experiment_name(judge_name: str) -> str:
    return f"{EXPERIMENT_PREFIX}/{judge_name}"


class DeletedExperimentError(ValueError):
    """The judge's MLflow experiment exists but was deleted: MLflow keeps the name, so a new
    one cannot take it until the old one is restored or removed for good."""


def ensure_experiment(workspace: Workspace, judge_name: str) -> str:
    """The judge's experiment id, in the workspace's store (MLflow is pointed at it here,
    once per run); a new local experiment keeps artifacts under ``mlruns/``. A deleted
    experiment stops the run before any work, saying how to restore it."""
    import mlflow

    workspace.open_tracking()
    name = experiment_name(judge_name)
    with workspace.store_lock():
        experiment_id = _ensure_experiment(mlflow, name, judge_name, workspace)
    # MLflow's active experiment, set here at the start of the run: start_run refuses a run
    # of another experiment, and log_model files the model under the active one.
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


# MLflow 3 opens an experiment in its GenAI view (traces) unless told the experiment is
# model development; judgecal's runs are in the runs view.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def _ensure_experiment(mlflow: Any, name: str, judge_name: str, workspace: Workspace) -> str:
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        if existing.lifecycle_stage == "deleted":
            from judgecal.redact import redact_url

            raise DeletedExperimentError(
                f"MLflow experiment {name!r} (id {existing.experiment_id}) is deleted in the store "
                f"{redact_url(workspace.tracking_uri)}; restore it with `mlflow experiments restore "
                f"--experiment-id {existing.experiment_id}` (MLFLOW_TRACKING_URI set to that store), or "
                "calibrate under another judge name (--name)"
            )
        if existing.tags.get("mlflow.experimentKind") != EXPERIMENT_KIND["mlflow.experimentKind"]:
            mlflow.MlflowClient().set_experiment_tag(existing.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
        return existing.experiment_id
    artifact_location = None
    if workspace.tracking_uri.startswith("sqlite:"):
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", judge_name).strip("-") or "judge"
        artifact_location = (workspace.artifacts_dir / slug).resolve().as_uri()
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.create_experiment(name, artifact_location=artifact_location, tags=EXPERIMENT_KIND)
    except MlflowException as error:  # a worker on another machine created it a moment ago
        created = mlflow.get_experiment_by_name(name)
        if error.error_code != "RESOURCE_ALREADY_EXISTS" or created is None:
            raise
        return created.experiment_id


def flat_params(prefix: str, values: dict[str, Any]) -> dict[str, str]:
    """Nested settings as dotted MLflow params (values truncated to MLflow's limit)."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(flat_params(name, value))
        else:
            flat[name] = str(value)[:6000]
    return flat


def ui_command(workspace: Workspace, host: str, port: int) -> list[str]:
    """``mlflow ui`` on the workspace's store, with its artifacts where runs put them (a
    new local store's folder is made first)."""
    import sys

    uri, artifacts = workspace.tracking_uri, workspace.artifacts_dir.resolve()
    if uri.startswith("sqlite:"):
        workspace.store_dir.mkdir(parents=True, exist_ok=True)
    return [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--default-artifact-root",
        artifacts.as_uri(),
        "--artifacts-destination",
        str(artifacts),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def ui_environment() -> dict[str, str]:
    """Settings without which ``mlflow ui`` hangs at start-up on an offline machine
    (MLflow's job runner and LiteLLM's cost-map fetch deadlock on an import lock)."""
    return {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }

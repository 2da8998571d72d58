"""MLflow tracking: one experiment per judge, one run per calibration.

By default the store is local and self-contained: ``mlruns/mlflow.db`` (SQLite) with
artifacts under ``mlruns/artifacts/``, both resolved from the workspace rather than the
working directory. Point ``MLFLOW_TRACKING_URI`` (or ``--tracking-uri``) at an MLflow
server to share runs between machines.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from judgecal.paths import store_dir, store_lock

EXPERIMENT_PREFIX = "judgecal"


def default_tracking_uri(root: Path | None = None) -> str:
    store = store_dir(root)
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def tracking_uri(explicit: str | None = None, root: Path | None = None) -> str:
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)


def configure_tracking(explicit: str | None = None, root: Path | None = None) -> str:
    """Point MLflow at the store; quiet the SQLite schema migration it logs on first use."""
    import logging

    import mlflow

    uri = tracking_uri(explicit, root)
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.store.tracking.sqlalchemy_store"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:"):
        mlflow.set_registry_uri(uri)
        with store_lock(root):
            mlflow.search_experiments(max_results=1)  # creates or migrates the schema, one process at a time
    return uri


class TrackingUnavailableError(ValueError):
    """The MLflow tracking server does not answer: found before any model is called."""


def check_server(uri: str, timeout: float = 5.0) -> None:
    """One request to the server's health endpoint: an unreachable server is reported in
    seconds, not after the work and MLflow's retries."""
    import urllib.error
    import urllib.request

    from judgecal.redact import redact_url

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        problem = f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        problem = str(getattr(error, "reason", error))
    raise TrackingUnavailableError(
        f"the MLflow tracking server at {redact_url(uri)} does not answer ({problem}); start it, or pass "
        "another --tracking-uri, or --no-track"
    )


def experiment_name(judge_name: str) -> str:
    return f"{EXPERIMENT_PREFIX}/{judge_name}"


def ensure_experiment(judge_name: str, root: Path | None = None) -> str:
    """The judge's experiment id; a new local experiment keeps artifacts under ``mlruns/``."""
    import mlflow

    name = experiment_name(judge_name)
    with store_lock(root):
        return _ensure_experiment(mlflow, name, judge_name, root)


# MLflow 3 opens an experiment in its GenAI view (traces) unless told the experiment is
# model development; judgecal's runs are in the runs view.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def _ensure_experiment(mlflow: Any, name: str, judge_name: str, root: Path | None) -> str:
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        if existing.lifecycle_stage == "deleted":
            raise RuntimeError(
                f"MLflow experiment {name!r} is deleted; restore it in the UI or pick another judge name"
            )
        if existing.tags.get("mlflow.experimentKind") != EXPERIMENT_KIND["mlflow.experimentKind"]:
            mlflow.MlflowClient().set_experiment_tag(existing.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
        return existing.experiment_id
    artifact_location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", judge_name).strip("-") or "judge"
        artifact_location = (store_dir(root) / "artifacts" / slug).resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=artifact_location, tags=EXPERIMENT_KIND)


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


def ui_environment() -> dict[str, str]:
    """Settings without which ``mlflow ui`` hangs at start-up on an offline machine
    (MLflow's job runner and LiteLLM's cost-map fetch deadlock on an import lock)."""
    return {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }

"""``load_judge("models:/...")`` and ``runs:/...`` resolve against the project's own store
in a plain Python session, as ``judgecal judge`` does; ``tracking_uri=`` picks another."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from judgecal.calibrate.trained import VerifierJudge
from judgecal.data.split import SplitSpec, split_by_group
from judgecal.export.flavor import load_judge, log_model
from tests.helpers import RELEVANCE, recorded_rows


def register_champion(name: str, uri: str) -> str:
    """A verifier judge registered as ``name@champion`` in the store at ``uri``; its run id."""
    import mlflow

    split = split_by_group(recorded_rows(), SplitSpec(dev=0.25, test=0.25, seed=1))
    judge = VerifierJudge(task=RELEVANCE, name=name).fit(split.train.rows, split.dev.rows)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    store = Path(uri.removeprefix("sqlite:///")).parent
    experiment = mlflow.create_experiment(name, artifact_location=(store / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        info = log_model(judge)
    version = mlflow.register_model(info.model_uri, name)
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version.version)
    return run.info.run_id


def test_a_plain_python_session_loads_the_projects_champion(isolated_workspace: Path) -> None:
    run_id = register_champion("relevance", f"sqlite:///{isolated_workspace / 'mlruns' / 'mlflow.db'}")
    notebooks = isolated_workspace / "notebooks"  # below the project: the store is found upwards
    notebooks.mkdir()
    environment = {
        key: value
        for key, value in os.environ.items()
        if key
        not in ("JUDGECAL_HOME", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    }
    code = (
        "import judgecal\n"
        f"for uri in ('models:/relevance@champion', 'runs:/{run_id}/judge'):\n"
        "    judge = judgecal.load_judge(uri)\n"
        "    print(judge(prompt='Help me with cooking.', attribute='The user cares about cooking.').label)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=notebooks, env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() in (["True", "True"], ["False", "False"])
    assert "Downloading artifacts" not in result.stderr, "MLflow's download bar was printed while loading"
    assert not (notebooks / "mlflow.db").exists() and not (notebooks / "mlruns").exists()


def test_tracking_uri_chooses_another_store(isolated_workspace: Path, tmp_path: Path, monkeypatch) -> None:
    other = f"sqlite:///{tmp_path / 'other.db'}"
    register_champion("shared-judge", other)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # set by MLflow above; a fresh session has none
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    judge = load_judge("models:/shared-judge@champion", tracking_uri=other)
    assert judge.name == "shared-judge"
    with pytest.raises(FileNotFoundError, match=r"no such judge in the MLflow store sqlite:///.*mlruns/mlflow\.db"):
        load_judge("models:/shared-judge@champion")

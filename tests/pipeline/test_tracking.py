"""What a person sees in MLflow: a run named by its result, a description with the
verdict, a handful of headline metrics, every metric in one table, a card whose plots are
embedded, paths that belong to the project, and a UI that stops when asked."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from judgecal.calibrate.optimizers import CalibrationConfig
from judgecal.data.split import SplitSpec
from judgecal.pipeline.calibration import run_calibration
from judgecal.pipeline.config import ExperimentConfig, JudgeSection
from judgecal.workspace import Workspace
from tests.conftest import write_jsonl
from tests.helpers import recorded_rows
from tests.services import free_port, port_open, wait_until


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    import mlflow

    root = tmp_path_factory.mktemp("tracked")
    (root / "mlruns").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUDGECAL_HOME", str(root))
        data = write_jsonl(root / "rows.jsonl", [row.to_record() for row in recorded_rows(n_groups=16).rows])
        config = ExperimentConfig(
            judge=JudgeSection(name="tracked", task="relevance", data=data, recorded="loose"),
            split=SplitSpec(dev=0.25, test=0.25, seed=1),
            calibration=CalibrationConfig(strategy="verifier"),
        )
        report = run_calibration(config, workspace=Workspace(root), log=lambda m: None)
        mlflow.set_tracking_uri(report.tracked.tracking_uri)
        yield report, mlflow.MlflowClient().get_run(report.tracked.run_id), root


@pytest.fixture
def tracked(tracked_run):
    """The module's run, with MLflow pointed at its store (each test's teardown forgets it)."""
    import mlflow

    mlflow.set_tracking_uri(tracked_run[0].tracked.tracking_uri)
    return tracked_run


def test_the_run_is_named_by_its_result_and_described_by_its_verdict(tracked) -> None:
    report, run, _ = tracked
    kappa = report.agreement.judge("calibrated").metrics["kappa"].value
    raw = report.agreement.judge("raw").metrics["kappa"].value
    assert run.info.run_name == f"κ {raw:.2f} → {kappa:.2f} Δ{kappa - raw:+.2f}"
    note = run.data.tags["mlflow.note.content"]
    assert report.agreement.comparison.statement in note
    assert "| kappa |" in note and "| selected_rate |" in note


def test_only_headline_metrics_are_top_level_and_every_metric_is_in_one_table(tracked) -> None:
    import mlflow

    _, run, _ = tracked
    metrics = run.data.metrics
    assert {"raw.kappa", "calibrated.kappa", "delta.kappa", "delta.kappa.low", "delta.kappa.high", "p_value"} <= set(
        metrics
    )
    assert len([m for m in metrics if not m.startswith(("cost.", "lm."))]) <= 16  # costs apart
    mlflow.set_experiment(experiment_id=run.info.experiment_id)
    table = mlflow.load_table("metrics.json", run_ids=[run.info.run_id])
    assert {"raw", "calibrated", "Δ calibrated − raw"} <= set(table["judge"])
    assert {"mcc", "alpha", "brier"} <= set(table["metric"])


def test_the_run_lasts_as_long_as_the_calibration(tracked) -> None:
    report, run, _ = tracked
    assert run.info.start_time == int(report.started_at * 1000)
    assert run.info.end_time is not None and run.info.end_time >= run.info.start_time


def test_the_judge_card_embeds_its_plots(tracked) -> None:
    import mlflow

    _, run, _ = tracked
    local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="card"))
    page = (local / "judge_card.html").read_text()
    images = [part.split('"')[0] for part in page.split('src="data:image/png;base64,')[1:]]
    assert len(images) >= 3
    assert all(base64.b64decode(image)[:8] == b"\x89PNG\r\n\x1a\n" for image in images)
    assert page.count("<tr>") >= 12  # the agreement table is whole


def test_params_hold_no_path_of_this_machine(tracked) -> None:
    _, run, root = tracked
    assert run.data.params["data.path"] == "rows.jsonl"
    assert not [k for k, v in run.data.params.items() if str(root) in v or v.startswith("/")]


def test_experiments_open_in_the_runs_view(tracked) -> None:
    import mlflow

    _, run, _ = tracked
    experiment = mlflow.MlflowClient().get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_bundle_digest_tag_is_the_digest_of_the_judge_the_run_logged(tracked) -> None:
    from judgecal import load_judge

    report, run, _ = tracked
    judge = load_judge(f"runs:/{run.info.run_id}/judge", tracking_uri=report.tracked.tracking_uri)
    assert run.data.tags["judgecal.bundle_digest"] == judge.digest
    assert judge.digest.startswith("sha256:")


def test_the_logged_models_own_uri_loads_the_same_judge(tracked) -> None:
    """The MLflow UI lists the judge as a logged model, ``models:/m-<id>``: that URI loads it too."""
    from judgecal import load_judge

    report, run, _ = tracked
    assert report.tracked.model_uri.startswith("models:/m-")
    judge = load_judge(report.tracked.model_uri, tracking_uri=report.tracked.tracking_uri)
    assert judge.digest == run.data.tags["judgecal.bundle_digest"]


def test_no_credential_of_the_judge_models_url_reaches_mlflow(isolated_workspace: Path) -> None:
    """A password and a key inside lm.api_base are hidden in every param, tag and artifact
    of the run, the logged model included: nothing in the store holds them."""
    import mlflow

    from judgecal.backends.settings import LMConfig

    root = isolated_workspace
    data = write_jsonl(root / "rows.jsonl", [row.to_record() for row in recorded_rows(n_groups=16).rows])
    config = ExperimentConfig(
        judge=JudgeSection(name="credentials", task="relevance", data=data, recorded="loose"),
        lm=LMConfig(model="openai/judge", api_base="https://u:s3cr3t@gpu-box/v1?api-key=k3y-9a7f"),
        split=SplitSpec(dev=0.25, test=0.25, seed=1),
        calibration=CalibrationConfig(strategy="verifier"),
    )
    report = run_calibration(config, workspace=Workspace(root), log=lambda m: None)
    tracked = report.tracked
    assert tracked is not None and tracked.model_uri is not None
    mlflow.set_tracking_uri(tracked.tracking_uri)
    run = mlflow.MlflowClient().get_run(tracked.run_id)
    recorded = [*run.data.params.items(), *run.data.tags.items()]
    assert run.data.params["lm.api_base"] == "https://u:***@gpu-box/v1?api-key=***"
    assert not [(k, v) for k, v in recorded if "s3cr3t" in v or "k3y-9a7f" in v]
    bundle = Path(mlflow.artifacts.download_artifacts(run_id=tracked.run_id, artifact_path="bundle"))
    text = (bundle / "judge.json").read_text()
    assert "https://u:***@gpu-box/v1?api-key=***" in text and "s3cr3t" not in text and "k3y-9a7f" not in text
    files = [path for path in (root / "mlruns").rglob("*") if path.is_file()]
    assert any(path.name == "MLmodel" for path in files)  # the logged model is in the store too
    leaking = [path for path in files if b"s3cr3t" in path.read_bytes() or b"k3y-9a7f" in path.read_bytes()]
    assert not leaking


@pytest.mark.slow
@pytest.mark.service
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_judgecal_ui_stops_its_server_when_stopped(tmp_path: Path, stop: signal.Signals) -> None:
    (tmp_path / "mlruns").mkdir()
    port = free_port()
    log = tmp_path / "ui.log"  # a file, not a pipe: nothing can block on a full pipe buffer
    with log.open("wb") as output:
        ui = subprocess.Popen(
            [sys.executable, "-m", "judgecal.cli", "ui", "--port", str(port)],
            env={**os.environ, "JUDGECAL_HOME": str(tmp_path)},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: ui.poll() is not None or port_open(port), "the UI listens or exits")
        assert port_open(port), f"the UI did not start:\n{log.read_text()}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
            assert response.status == 200
        ui.send_signal(stop)
        try:
            ui.wait(timeout=600)
        except subprocess.TimeoutExpired:
            pytest.fail(f"judgecal ui did not stop on {stop.name}:\n{log.read_text()[-3000:]}")
        # Its server's workers may take a moment after it to let the port go; a server
        # left running keeps it.
        wait_until(lambda: not port_open(port), "the MLflow server stops with judgecal ui", timeout=120)
        assert "#/experiments?workflowType=machine_learning" in log.read_text()
    finally:
        if ui.poll() is None:
            ui.kill()

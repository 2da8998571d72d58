"""The workspace a run carries: MLflow pointed at the store once per run, no environment
variable changed once the run has started, and loaded models shared only on purpose."""

from __future__ import annotations

import copy
import os
import pickle
from collections.abc import Iterator, MutableMapping
from pathlib import Path

import pytest

from judgecal.calibrate.optimizers import CalibrationConfig
from judgecal.data.split import SplitSpec
from judgecal.pipeline.config import ExperimentConfig, JudgeSection, SearchConfig
from judgecal.workspace import PROCESS_ENVIRONMENT, LoadedModels, Workspace
from tests.conftest import write_jsonl
from tests.helpers import recorded_rows


def recorded_config(folder: Path, **judge: object) -> ExperimentConfig:
    data = write_jsonl(folder / "rows.jsonl", [row.to_record() for row in recorded_rows(n_groups=16).rows])
    return ExperimentConfig(
        judge=JudgeSection(name="kept", task="relevance", data=data, recorded="loose", **judge),
        split=SplitSpec(dev=0.25, test=0.25, gate=0.2, seed=1),
        calibration=CalibrationConfig(strategy="verifier"),
    )


def test_a_tracked_search_points_mlflow_at_the_store_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's tracking URI is process-wide; the run's workspace sets it once, not each
    trial, the final report and the export again."""
    import mlflow

    from judgecal.pipeline.search import run_search

    pointed: list[str] = []
    original = mlflow.set_tracking_uri
    monkeypatch.setattr(mlflow, "set_tracking_uri", lambda uri: (pointed.append(str(uri)), original(uri))[1])
    config = recorded_config(tmp_path)
    search = SearchConfig(strategies=["verifier", "threshold"], trials=3, storage=f"sqlite:///{tmp_path / 'o.db'}")
    report = run_search(config, search, workspace=Workspace(tmp_path), log=lambda m: None)
    assert report.calibration is not None and report.calibration.tracked is not None
    assert len([row for row in report.rows if row.run_id]) >= 3  # every trial is a child run
    assert pointed == [f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"]


# Where a run starts: before any fit or model call, before judgecal starts a thread.
STARTS = ("set_process_environment", "ensure_experiment")


class WritesRecorded(MutableMapping[str, str]):
    """``os.environ`` that remembers every change judgecal's code makes to it, and where: the
    first of ``STARTS`` on the stack, else the innermost function of judgecal's."""

    def __init__(self, environ: MutableMapping[str, str]) -> None:
        self.environ = environ
        self.writes: list[tuple[str, str | None, str]] = []

    def _record(self, key: str, value: str | None) -> None:
        import traceback

        package = str(Path(__file__).resolve().parents[1] / "judgecal")
        inside = [frame.name for frame in traceback.extract_stack() if frame.filename.startswith(package)]
        if inside:  # MLflow's telemetry thread changes a variable of its own, outside any judgecal call
            self.writes.append((key, value, next((name for name in inside if name in STARTS), inside[-1])))

    def __getitem__(self, key: str) -> str:
        return self.environ[key]

    def __setitem__(self, key: str, value: str) -> None:
        self._record(key, value)
        self.environ[key] = value

    def __delitem__(self, key: str) -> None:
        self._record(key, None)
        del self.environ[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.environ)

    def __len__(self) -> int:
        return len(self.environ)

    def copy(self) -> dict[str, str]:
        return dict(self.environ)


def test_a_run_changes_the_environment_only_where_it_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Other threads read the environment (MLflow's, LiteLLM's, llama.cpp's OpenMP). A
    tracked calibration that registers its judge, and loading that judge back, change it
    only where the run starts, before any fit or model call: the libraries' switches
    (``set_process_environment``) and MLflow's store and active experiment, which MLflow
    mirrors into its variables (``ensure_experiment``); nothing is toggled around a
    download or set on first use."""
    import mlflow  # its telemetry client sets a variable when it is first imported

    from judgecal import load_judge
    from judgecal.pipeline.calibration import run_calibration

    for name in PROCESS_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    recorder = WritesRecorded(os.environ)
    monkeypatch.setattr(os, "environ", recorder)
    workspace = Workspace(tmp_path)
    report = run_calibration(recorded_config(tmp_path, register_as="kept"), workspace=workspace, log=lambda m: None)
    assert report.tracked is not None and report.registry is not None
    judge = load_judge(f"runs:/{report.tracked.run_id}/judge", workspace=workspace)
    assert judge.predict(list(report.split.test.rows[:2]))
    where = {(key, value): function for key, value, function in recorder.writes}
    assert len(where) == len(recorder.writes)  # each variable set once
    assert {function for _, _, function in recorder.writes} == set(STARTS)
    assert [(key, value) for key, value, _ in recorder.writes][:2] == list(PROCESS_ENVIRONMENT.items())
    assert where[("MLFLOW_TRACKING_URI", workspace.tracking_uri)] == "ensure_experiment"
    assert mlflow.get_experiment_by_name("judgecal/kept").experiment_id == report.tracked.experiment_id


def test_loaded_models_are_shared_by_copies_and_not_sent_to_another_process() -> None:
    models = LoadedModels()
    assert models.get("answer", lambda: 42) == 42
    assert models.get("answer", lambda: 0) == 42  # made once
    assert copy.deepcopy(models) is models and copy.copy(models) is models
    assert len(pickle.loads(pickle.dumps(models))) == 0


def test_loaded_models_are_closed_when_dropped() -> None:
    import gc

    closed: list[str] = []

    class Model:
        def close(self) -> None:
            closed.append("closed")

    models = LoadedModels()
    models.get("model", Model)
    del models
    gc.collect()
    assert closed == ["closed"]


def test_paths_belong_to_the_workspace(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path, tracking_uri="http://user:secret@tracking:5000")
    assert workspace.project_path(tmp_path / "data" / "rows.jsonl") == "data/rows.jsonl"
    assert workspace.project_path("/elsewhere/rows.jsonl") == "rows.jsonl"
    assert workspace.dspy_cache_dir == tmp_path.resolve() / ".cache" / "dspy"
    assert "secret" not in repr(workspace)

"""Optuna search: selection on dev only, a killed study resumes, two workers share a study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from judgecal.experiment import ExperimentConfig, JudgeSection, SearchConfig
from judgecal.search import run_search
from judgecal.strategies import RowGuard
from tests.conftest import write_jsonl
from tests.test_strategies import recorded_rows


def write_study_config(folder: Path, *, heartbeat: int = 1, grace: int = 2) -> Path:
    rows = write_jsonl(folder / "rows.jsonl", [row.to_record() for row in recorded_rows(n_groups=14).rows])
    config = folder / "search.toml"
    config.write_text(
        f"""
[judge]
name = "searched"
task = "relevance"
data = "{rows}"
recorded = "loose"

[split]
dev = 0.25
test = 0.25
seed = 1

[search]
heartbeat_interval = {heartbeat}
grace_period = {grace}
trial_resamples = 100
"""
    )
    return config


def search_command(config: Path, storage: str, trials: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "judgecal.cli",
        "calibrate",
        str(config),
        "--strategies",
        "verifier,stacking",
        "--trials",
        str(trials),
        "--storage",
        storage,
        "--study-name",
        "shared",
        *extra,
    ]


FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def finished(storage: str) -> list[optuna.trial.FrozenTrial]:
    """Trials that count toward the study's total: complete or pruned."""
    study = optuna.load_study(study_name="shared", storage=storage)
    return [t for t in study.get_trials(deepcopy=False) if t.state in FINISHED]


def test_search_selects_on_dev_and_never_fits_or_selects_on_test(tmp_path: Path, monkeypatch) -> None:
    seen: list[RowGuard] = []
    original = RowGuard.check

    def spy(self: RowGuard, rows, step):
        if self not in seen:
            seen.append(self)
        return original(self, rows, step)

    monkeypatch.setattr(RowGuard, "check", spy)
    config = ExperimentConfig(
        judge=JudgeSection(
            name="searched", task="relevance", data=write_study_config(tmp_path).parent / "rows.jsonl", recorded="loose"
        ),
        search=SearchConfig(
            strategies=["verifier", "stacking", "threshold"],
            trials=5,
            trial_resamples=100,
            storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        ),
    )
    report = run_search(config, config.search, track=False, log=lambda m: None)
    assert len([r for r in report.rows if r.state in ("COMPLETE", "PRUNED")]) == 5
    assert report.best is not None
    assert report.best.dev_kappa == max(r.dev_kappa for r in report.rows if r.dev_kappa is not None)
    [guard] = seen
    steps = set(guard.seen)
    assert any("fit" in step for step in steps) and "search: score on dev" in steps
    for step, ids in guard.seen.items():
        assert not (ids & guard.forbidden), step


@pytest.mark.slow
def test_a_killed_study_resumes_and_runs_only_the_remaining_trials(tmp_path: Path) -> None:
    config = write_study_config(tmp_path)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    env = {**os.environ, "JUDGECAL_HOME": str(tmp_path)}
    (tmp_path / "mlruns").mkdir(exist_ok=True)
    worker = subprocess.Popen(
        search_command(config, storage, 10, "--no-track"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if len(finished(storage)) >= 3:
                    break
            except (KeyError, optuna.exceptions.StorageInternalError, Exception):  # study not created yet
                pass
            time.sleep(0.3)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    before = {t.number: t.value for t in finished(storage)}
    assert 3 <= len(before) < 10
    time.sleep(3)  # past the grace period: the killed worker's running trial is stale
    subprocess.run(
        search_command(config, storage, 10, "--no-track"),
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=600,
    )
    after = finished(storage)
    assert len(after) == 10
    # Trials finished before the kill are kept as they were, not run again.
    assert {t.number: t.value for t in after if t.number in before} == before
    study = optuna.load_study(study_name="shared", storage=storage)
    assert len(study.trials) <= 10 + 1  # at most the one trial the kill interrupted, failed and retried


@pytest.mark.slow
def test_two_workers_share_one_study_without_duplicate_trials(tmp_path: Path) -> None:
    config = write_study_config(tmp_path, heartbeat=5, grace=20)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    env = {**os.environ, "JUDGECAL_HOME": str(tmp_path)}
    (tmp_path / "mlruns").mkdir(exist_ok=True)
    # Create the study first so the two workers do not race to create it.
    optuna.create_study(study_name="shared", storage=storage, direction="maximize")
    workers = [
        subprocess.Popen(search_command(config, storage, 8), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=900)[0].decode() for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="shared", storage=storage)
    done = [t for t in study.get_trials(deepcopy=False) if t.state in FINISHED]
    complete = [t for t in done if t.state == optuna.trial.TrialState.COMPLETE]
    assert 8 <= len(done) <= 9  # each worker stops at 8; one may have started its last trial at 7
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    assert len({t.user_attrs["worker"] for t in complete}) == 2  # both workers contributed
    run_ids = [t.user_attrs["run_id"] for t in complete]
    assert len(run_ids) == len(set(run_ids))  # one MLflow child run per trial

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    parent = study.user_attrs["mlflow_parent_run_id"]
    children = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.mlflow.parentRunId = '{parent}'", output_format="list"
    )
    assert {run.info.run_id for run in children} == set(run_ids)
    artifacts = {a.path for a in mlflow.artifacts.list_artifacts(run_id=parent)}
    assert {"leaderboard.md", "leaderboard.json", "bundle"} <= artifacts


def test_settings_already_tried_are_not_refitted(tmp_path: Path) -> None:
    config = ExperimentConfig(
        judge=JudgeSection(name="searched", task="relevance",
                           data=write_study_config(tmp_path).parent / "rows.jsonl", recorded="loose"),
        search=SearchConfig(strategies=["threshold"], trials=3, trial_resamples=100,
                            storage=f"sqlite:///{tmp_path / 'optuna.db'}"),
    )
    report = run_search(config, config.search, track=False, log=lambda m: None)
    by_number = {row.number: row for row in report.rows}
    assert by_number[0].duplicate_of is None
    assert by_number[1].duplicate_of == 0 and by_number[2].duplicate_of == 0
    assert by_number[1].dev_kappa == by_number[0].dev_kappa
    assert report.best is not None and report.best.number == 0

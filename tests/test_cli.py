"""The judgecal command line: errors users see, and the MLflow UI coming up."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from judgecal.cli import main
from tests.conftest import write_jsonl
from tests.services import answers, wait_until


def test_calibrate_with_bad_data_exits_2_and_names_file_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_jsonl(
        tmp_path / "labels.jsonl",
        [
            {"id": "a", "group": "g", "prompt": "p", "attribute": "x", "label": True},
            {"id": "b", "group": "g", "prompt": "p", "attribute": "y", "label": "perhaps"},
        ],
    )
    config = tmp_path / "exp.toml"
    config.write_text('[judge]\nname = "t"\ntask = "relevance"\ndata = "elsewhere.jsonl"\n')
    code = main(["calibrate", str(config), "--data", str(data), "--no-track"])
    captured = capsys.readouterr()
    assert code == 2
    assert f"{data}:2: field 'label'" in " ".join((captured.out + captured.err).split())


def test_unknown_task_is_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "exp.toml"
    config.write_text('[judge]\nname = "t"\ntask = "sentiment"\ndata = "rows.jsonl"\n')
    write_jsonl(tmp_path / "rows.jsonl", [{"id": "a", "group": "g", "label": True}])
    assert main(["calibrate", str(config), "--no-track"]) == 2
    assert "unknown task 'sentiment'" in capsys.readouterr().err


def test_a_deleted_experiment_is_one_line_saying_how_to_restore_it(
    tmp_path: Path, isolated_workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """MLflow keeps a deleted experiment's name: the calibration stops before any work with
    the experiment's id and the command that restores it, not a traceback."""
    import mlflow

    from judgecal.workspace import Workspace
    from tests.helpers import recorded_rows

    data = write_jsonl(tmp_path / "rows.jsonl", [row.to_record() for row in recorded_rows(n_groups=8).rows])
    config = tmp_path / "exp.toml"
    config.write_text(f'[judge]\nname = "gone"\ntask = "relevance"\ndata = "{data}"\nrecorded = "loose"\n')
    Workspace(isolated_workspace).open_tracking()
    experiment_id = mlflow.create_experiment("judgecal/gone")
    mlflow.delete_experiment(experiment_id)
    code = main(["calibrate", str(config)])
    captured = capsys.readouterr()
    assert code == 2
    [line] = captured.err.strip().splitlines()
    assert line.startswith("error: MLflow experiment 'judgecal/gone' (id ")
    assert f"mlflow experiments restore --experiment-id {experiment_id}" in line and "--name" in line
    assert "Traceback" not in captured.err + captured.out
    assert "calibrating with" not in captured.out  # it stopped before the work


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.service
def test_ui_comes_up_on_localhost(isolated_workspace: Path) -> None:
    port = _free_port()
    command = [sys.executable, "-m", "judgecal.cli", "ui", "--port", str(port)]
    process = subprocess.Popen(
        command,
        cwd=isolated_workspace,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        health = f"http://127.0.0.1:{port}/health"
        wait_until(lambda: process.poll() is not None or answers(health), "the UI answers or exits")
        assert process.poll() is None, process.stdout.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            assert b"MLflow" in response.read()
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)


def test_error_lines_are_not_wrapped_when_stderr_is_piped(tmp_path: Path) -> None:
    folder = tmp_path / ("a-folder-with-a-long-name-" * 3)
    folder.mkdir()
    data = write_jsonl(
        folder / "labels.jsonl", [{"id": "a", "group": "g", "prompt": "p", "attribute": "x", "label": 7}]
    )
    config = tmp_path / "exp.toml"
    config.write_text('[judge]\nname = "t"\ntask = "relevance"\ndata = "elsewhere.jsonl"\n')
    result = subprocess.run(
        [sys.executable, "-m", "judgecal.cli", "calibrate", str(config), "--data", str(data), "--no-track"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80"},
        timeout=300,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {data}:1: field 'label': ")


def test_unknown_split_keys_are_refused_with_their_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_jsonl(
        tmp_path / "rows.jsonl", [{"id": "a", "group": "g", "prompt": "p", "attribute": "x", "label": 1}]
    )
    config = tmp_path / "exp.toml"
    config.write_text(f'[judge]\nname = "t"\ntask = "relevance"\ndata = "{data}"\n\n[split]\ntset = 0.9\n')
    assert main(["calibrate", str(config), "--no-track"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"{config}: field 'split.tset': Extra inputs are not permitted" in line


def refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line of stderr a refused command line prints, once it exited with code 2."""
    with pytest.raises(SystemExit) as refused:
        main(argv)
    assert refused.value.code == 2
    captured = capsys.readouterr()
    [line] = captured.err.strip().splitlines()
    assert not captured.out and "usage:" not in line
    return line


@pytest.mark.parametrize("trials", ["0", "-3", "two"])
def test_trials_must_be_a_positive_whole_number(trials: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = refusal(["calibrate", "experiments/relevance.toml", "--strategies", "all", "--trials", trials], capsys)
    assert line == (
        f"error: argument --trials: expected a whole number of at least 1, got {trials!r} "
        "(see judgecal calibrate --help)"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["judge", "--judge", "b", "--input", "i", "--output", "o", "--num-threads", "0"],
        ["calibrate", "x.toml", "--max-test-rows", "-1"],
        ["calibrate", "x.toml", "--max-tokens", "lots"],
        ["label-next", "--task", "relevance", "--verdicts", "v", "--output", "o", "--budget", "0"],
    ],
)
def test_every_count_flag_is_refused_in_one_line_naming_the_flag_once(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    line = refusal(argv, capsys)
    flag = argv[-2]
    assert f"argument {flag}: expected a whole number of at least 1, got {argv[-1]!r}" in line
    assert line.count(flag) == 1


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["calibrate"], "the following arguments are required: CONFIG"),
        (["judge", "--input", "i", "--output", "o"], "the following arguments are required: --judge"),
        (["calibrate", "x.toml", "--seed", "one"], "argument --seed: invalid int value: 'one'"),
        (["calibrate", "x.toml", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
        (["data", "convert"], "argument ACTION: invalid choice: 'convert'"),
    ],
)
def test_every_refused_command_line_is_one_line_with_exit_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert says in refusal(argv, capsys)


@pytest.mark.parametrize("confidence", ["1.5", "0", "1", "-0.1", "high"])
def test_estimate_confidence_must_lie_between_0_and_1(
    tmp_path: Path, confidence: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"id": "a", "verdict": True}])
    with pytest.raises(SystemExit) as refused:
        main(
            [
                "estimate",
                "--task",
                "relevance",
                "--verdicts",
                str(rows),
                "--labels",
                str(rows),
                "--confidence",
                confidence,
            ]
        )
    assert refused.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"error: argument --confidence: expected a level strictly between 0 and 1 (e.g. 0.95), got {confidence!r} "
        "(see judgecal estimate --help)"
    )


@pytest.mark.parametrize("mix", ["1.5", "-0.1", "some"])
def test_label_next_mix_must_be_a_share(mix: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["label-next", "--task", "relevance", "--verdicts", "v", "--budget", "5", "--output", "o", "--mix", mix]
    assert refusal(argv, capsys) == (
        f"error: argument --mix: expected a share between 0 and 1 (e.g. 0.2), got {mix!r} "
        "(see judgecal label-next --help)"
    )


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every ``time.sleep`` during the test, each refused: a client that retries (MLflow's
    REST client, with backoff) sleeps between attempts, a single probe never does."""
    asked: list[float] = []
    sleep = time.sleep

    def refuse(seconds: float) -> None:
        if threading.current_thread() is not threading.main_thread():
            return sleep(seconds)  # another test's service thread (py4j's, Spark's) in this worker
        asked.append(seconds)
        raise AssertionError(f"something waited {seconds} s to try again")

    monkeypatch.setattr(time, "sleep", refuse)
    return asked


def _recorded_experiment(folder: Path) -> Path:
    from tests.helpers import recorded_rows

    data = write_jsonl(folder / "rows.jsonl", [row.to_record() for row in recorded_rows(n_groups=12).rows])
    config = folder / "exp.toml"
    config.write_text(f'[judge]\nname = "t"\ntask = "relevance"\ndata = "{data}"\nrecorded = "loose"\n')
    return config


def test_an_unreachable_tracking_server_is_refused_before_any_work(tmp_path: Path, capsys, waits) -> None:
    port = _free_port()  # nothing listens here once the probe closes
    code = main(
        [
            "calibrate",
            str(_recorded_experiment(tmp_path)),
            "--strategy",
            "verifier",
            "--tracking-uri",
            f"http://user:secret@127.0.0.1:{port}",
        ]
    )
    captured = capsys.readouterr()
    assert code == 2 and not waits  # one probe, no retries
    assert "does not answer" in captured.err and "secret" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert "calibrating" not in captured.out  # no strategy was fitted


@pytest.mark.parametrize(
    "flags",
    [
        ["--strategies", "threshold", "--trials", "1", "--no-track", "--storage"],
        ["--strategy", "threshold", "--tracking-uri"],
    ],
    ids=["optuna-storage", "tracking-store"],
)
def test_an_unreachable_database_is_refused_in_one_line_before_any_work(
    tmp_path: Path, flags: list[str], capsys, waits
) -> None:
    pytest.importorskip("psycopg", reason='the PostgreSQL driver: pip install -e ".[postgres]"')
    port = _free_port()  # nothing listens here once the probe closes
    code = main(["calibrate", str(_recorded_experiment(tmp_path)), *flags, f"postgresql://u:secret@127.0.0.1:{port}/x"])
    captured = capsys.readouterr()
    assert code == 2 and not waits  # one probe, no retries
    [line] = captured.err.strip().splitlines()
    assert "cannot be reached" in line and f"postgresql://u:***@127.0.0.1:{port}/x" in line
    assert "secret" not in captured.err + captured.out
    assert "train" in captured.out and "trial" not in captured.out  # the rows were read; no trial ran


def test_the_strategy_flag_and_setting_name_every_strategy(capsys: pytest.CaptureFixture[str]) -> None:
    from judgecal.calibrate.optimizers import CalibrationConfig
    from judgecal.calibrate.strategies import STRATEGIES

    with pytest.raises(SystemExit):
        main(["calibrate", "--help"])
    flag_help = " ".join(capsys.readouterr().out.split())
    setting = CalibrationConfig.model_fields["strategy"].description or ""
    for name in STRATEGIES:
        assert name in flag_help, f"judgecal calibrate --help does not name the strategy {name!r}"
        assert name in setting, f"[calibration] strategy's description does not name {name!r}"


def test_an_unreachable_judge_server_is_named_without_its_password(tmp_path: Path, capsys, monkeypatch) -> None:
    """HTTP clients quote the authority they failed to reach without its scheme
    (``alice:s3cr3t@127.0.0.1:PORT``): the message hides that password too."""
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # the client's and the judge's retries: 16 s of waits
    config = _recorded_experiment(tmp_path)
    config.write_text(config.read_text().replace('recorded = "loose"\n', ""))
    port = _free_port()
    code = main(
        [
            "calibrate",
            str(config),
            "--model",
            "openai/judge",
            "--api-base",
            f"http://alice:s3cr3t@127.0.0.1:{port}/v1",
            "--strategy",
            "threshold",
            "--no-track",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    [line] = captured.err.strip().splitlines()
    assert "alice:***@127.0.0.1" in line
    assert "s3cr3t" not in captured.err + captured.out


def test_a_verdicts_file_calibration_names_no_judge_uri_and_says_it_registered_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing is exported for a judge that reads a verdicts file by row id, so the command
    must not point at a judge model that does not exist, nor stay silent about --register."""
    from tests.helpers import recorded_rows

    dataset = recorded_rows(n_groups=12)
    data = write_jsonl(tmp_path / "rows.jsonl", [row.to_record() for row in dataset.rows])
    verdicts = write_jsonl(
        tmp_path / "verdicts.jsonl", [{"id": r.id, "verdict": r.reference_judges["loose"]} for r in dataset.rows]
    )
    config = tmp_path / "exp.toml"
    config.write_text(
        f'[judge]\nname = "from-file"\ntask = "relevance"\ndata = "{data}"\nverdicts = "{verdicts}"\n'
        'register_as = "from-file"\n'
    )
    assert main(["calibrate", str(config), "--strategy", "threshold"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "no judge bundle or model was exported" in out
    assert "runs:/" not in out and "no judge was exported" in out
    assert "not registered as from-file" in out


@pytest.mark.parametrize(
    ("host", "shown"), [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"), ("judge-box", "judge-box")]
)
def test_ui_prints_the_address_of_the_runs_view(
    host: str, shown: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow 3.17's UI opens on its GenAI view; the runs are one URL parameter away."""
    started: list[list[str]] = []
    monkeypatch.setattr("judgecal.cli.run_until_stopped", lambda command, environment: started.append(command) or 0)
    assert main(["ui", "--host", host, "--port", "5123"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"http://{shown}:5123/#/experiments?workflowType=machine_learning" in out
    [command] = started
    assert command[command.index("--host") + 1] == host


def test_monitor_refuses_an_alpha_that_reads_as_a_confidence_level(tmp_path: Path, capsys) -> None:
    """--alpha is the chance of a false alarm: 0.95 would alarm almost at once."""
    with pytest.raises(SystemExit) as refused:
        main(["monitor", "--judge", "j", "--batch", "b.jsonl", "--state", "s.json", "--alpha", "0.95"])
    assert refused.value.code == 2
    assert "--alpha" in capsys.readouterr().err

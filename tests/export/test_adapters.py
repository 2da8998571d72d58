"""Using a calibrated judge elsewhere: batches, DSPy metrics, MLflow scorers, the judge CLI."""

from __future__ import annotations

import json
from pathlib import Path

import dspy
import pytest

from judgecal.backends.settings import LMConfig
from judgecal.calibrate.trained import VerifierJudge
from judgecal.cli import main
from judgecal.data.split import SplitSpec, split_by_group
from judgecal.export.adapters import CalibratedJudge, judge_file
from judgecal.export.bundle import bundle_from_judge, save_bundle
from judgecal.export.flavor import load_judge
from judgecal.tasks.registry import resolve_task
from tests.conftest import write_jsonl
from tests.helpers import recorded_rows

RELEVANCE = resolve_task("relevance")


@pytest.fixture(scope="module")
def verifier_judge():
    dataset = recorded_rows()
    split = split_by_group(dataset, SplitSpec(dev=0.25, test=0.25, seed=1))
    judge = VerifierJudge(task=RELEVANCE, name="relevance-verifier").fit(split.train.rows, split.dev.rows)
    return CalibratedJudge(judge), dataset


def test_batch_keeps_order_with_threads_and_takes_plain_dicts(verifier_judge) -> None:
    judge, dataset = verifier_judge
    rows = list(dataset.rows[:40])
    one = judge.batch(rows, num_threads=1, progress=False)
    many = judge.batch(rows, num_threads=4, progress=False)
    assert one == many
    assert judge.batch([row.inputs for row in rows[:3]], progress=False) == one[:3]
    with pytest.raises(ValueError, match=r"takes prompt, attribute \(and reference_judges\); got also"):
        judge.batch([{"prompt": "p", "attribute": "a", "colour": "red"}], progress=False)


def test_judge_is_a_dspy_metric(verifier_judge) -> None:
    """The metric is the judge's own verdict (1.0 for 'relevant') or its P(relevant), on the
    prediction's fields where it has them and the example's otherwise."""
    judge, dataset = verifier_judge
    rows = list(dataset.rows[:60])
    verdicts = judge.batch(rows, progress=False)
    kept = next(row for row, v in zip(rows, verdicts, strict=True) if v.label is True)
    dropped = next(row for row, v in zip(rows, verdicts, strict=True) if v.label is False)
    metric = judge.as_dspy_metric()
    for row, expected in ((kept, 1.0), (dropped, 0.0)):
        example = dspy.Example(prompt=row.inputs["prompt"], attribute="an attribute the prediction replaces")
        assert metric(example, dspy.Prediction(attribute=row.inputs["attribute"])) == expected
    probability = judge.as_dspy_metric(probability=True)
    for row, verdict in ((kept, verdicts[rows.index(kept)]), (dropped, verdicts[rows.index(dropped)])):
        example = dspy.Example(prompt=row.inputs["prompt"])
        value = probability(example, dspy.Prediction(attribute=row.inputs["attribute"]))
        assert value == pytest.approx(verdict.probability_of(True))
    assert metric.__name__ == f"judgecal_{judge.name}"


def test_judge_runs_as_a_scorer_in_mlflow_genai_evaluate(verifier_judge, isolated_workspace: Path) -> None:
    import mlflow

    from judgecal.workspace import Workspace

    judge, _ = verifier_judge
    Workspace(isolated_workspace).open_tracking()
    mlflow.set_experiment("scorer")
    data = [
        {"inputs": {"prompt": "Help me with cooking."}, "outputs": {"attribute": "The user cares about cooking."}},
        {"inputs": {"prompt": "Help me with travel."}, "outputs": {"attribute": "The user cares about music."}},
    ]
    result = mlflow.genai.evaluate(data=data, scorers=[judge.as_mlflow_scorer(name="relevance")])
    column = result.result_df["relevance/value"].tolist()
    expected = [judge(prompt=d["inputs"]["prompt"], attribute=d["outputs"]["attribute"]).label for d in data]
    assert [value in (True, "true", "True") for value in column] == expected
    assert "relevance/mean" in result.metrics


def test_judge_file_resumes_and_never_keeps_a_half_written_line(verifier_judge, tmp_path: Path) -> None:
    judge, dataset = verifier_judge
    source = write_jsonl(tmp_path / "rows.jsonl", [{"id": r.id, **r.inputs} for r in dataset.rows[:30]])
    output = tmp_path / "verdicts.jsonl"
    first = judge_file(judge, source, output, chunk=8)
    assert (first.judged, first.already_done, first.failed) == (30, 0, 0)
    lines = output.read_text().splitlines()
    # A crash after 12 rows, in the middle of writing the 13th line.
    output.write_text("\n".join(lines[:12]) + "\n" + lines[12][:17])
    resumed = judge_file(judge, source, output, chunk=8)
    assert (resumed.judged, resumed.already_done) == (18, 12)
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["id"] for r in records] == [r.id for r in dataset.rows[:30]]
    assert output.read_text().endswith("\n")
    again = judge_file(judge, source, output)
    assert (again.judged, again.already_done) == (0, 30)


def test_judge_command_with_a_bundle(verifier_judge, tmp_path: Path, capsys) -> None:
    judge, dataset = verifier_judge
    save_bundle(bundle_from_judge(judge, LMConfig()), tmp_path / "bundle")
    source = write_jsonl(tmp_path / "rows.jsonl", [{"id": r.id, **r.inputs} for r in dataset.rows[:5]])
    output = tmp_path / "out.jsonl"
    assert main(["judge", "--judge", str(tmp_path / "bundle"), "--input", str(source), "--output", str(output)]) == 0
    assert "5 rows judged now, 0 already" in capsys.readouterr().out
    loaded = load_judge(tmp_path / "bundle")
    expected = [v.label for v in loaded.batch(list(dataset.rows[:5]), progress=False)]
    assert [json.loads(line)["verdict"] for line in output.read_text().splitlines()] == expected


def test_judge_command_shows_the_bundle_digest_and_refuses_an_edited_bundle(
    verifier_judge, tmp_path: Path, capsys
) -> None:
    from judgecal.export.bundle import bundle_digest, read_bundle

    judge, dataset = verifier_judge
    bundle = bundle_from_judge(judge, LMConfig())
    path = save_bundle(bundle, tmp_path / "bundle")
    source = write_jsonl(tmp_path / "rows.jsonl", [{"id": r.id, **r.inputs} for r in dataset.rows[:3]])
    command = ["judge", "--judge", str(tmp_path / "bundle"), "--input", str(source)]
    assert main([*command, "--output", str(tmp_path / "a.jsonl")]) == 0
    assert bundle_digest(bundle) in capsys.readouterr().out
    document = json.loads(path.read_text())
    document["judge"]["threshold"] = 0.0  # every row would now be "relevant"
    path.write_text(json.dumps(document, indent=2))
    assert main([*command, "--output", str(tmp_path / "b.jsonl")]) == 2
    error = capsys.readouterr().err
    assert "judge.json was modified after it was saved" in error and "--allow-modified" in error
    assert len(error.strip().splitlines()) == 1
    assert not (tmp_path / "b.jsonl").exists()
    assert main([*command, "--output", str(tmp_path / "b.jsonl"), "--allow-modified"]) == 0
    assert "modified after it was saved" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="modified after it was saved"):
        assert read_bundle(path, allow_modified=True).judge["threshold"] == 0.0


def test_judge_command_with_a_missing_mlflow_run_is_one_line(tmp_path: Path, capsys) -> None:
    source = write_jsonl(tmp_path / "rows.jsonl", [{"id": "a", "prompt": "p", "attribute": "x"}])
    code = main(
        ["judge", "--judge", "runs:/0123456789abcdef/judge", "--input", str(source), "--output", str(tmp_path / "o")]
    )
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("error: runs:/0123456789abcdef/judge: no such judge in the MLflow store")
    assert len(captured.err.strip().splitlines()) == 1


def test_a_tracking_uri_password_is_not_printed(tmp_path: Path, capsys) -> None:
    source = write_jsonl(tmp_path / "rows.jsonl", [{"id": "a", "prompt": "p", "attribute": "x"}])
    uri = "unknown+scheme://judgecal:s3cr3t@db-host/store"
    command = ["judge", "--judge", "runs:/0123456789abcdef/judge", "--tracking-uri", uri]
    code = main([*command, "--input", str(source), "--output", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert code == 2
    assert "s3cr3t" not in captured.out + captured.err
    assert "unknown+scheme://judgecal:***@db-host/store" in captured.err


# -- failed rows are never recorded as done ---------------------------------------------


def _remote_bundle(tmp_path: Path) -> Path:
    """A zero-shot relevance judge on a remote model; calls are not cached, and DSPy does
    not retry (the judge's own retry still does, once)."""
    from judgecal.judges.fitted import ProgramJudge
    from judgecal.judges.program import JudgeProgram

    judge = ProgramJudge(RELEVANCE, JudgeProgram(RELEVANCE.signature), None, "remote")
    save_bundle(bundle_from_judge(judge, LMConfig(model="openai/judge", cache=False, num_retries=0)), tmp_path / "b")
    return tmp_path / "b"


@pytest.mark.parametrize("threads", ["1", "3"])
def test_failed_rows_go_to_an_errors_file_exit_1_and_are_judged_on_the_next_run(
    chat_server, tmp_path: Path, capsys, threads: str
) -> None:
    texts = ["fine", "server down", "odd answer", "busy once", "way too long", "fine again"]
    broken = {"server down": 503, "odd answer": "garbage", "way too long": "too-long"}

    def respond(text: str, attempt: int) -> object:
        if "busy once" in text and attempt == 1:
            return 503  # retried by the judge, then answered
        return next((kind for key, kind in broken.items() if key in text), "ok")

    chat_server.respond = respond
    source = write_jsonl(
        tmp_path / "rows.jsonl", [{"id": f"r{i}", "prompt": t, "attribute": "a"} for i, t in enumerate(texts, 1)]
    )
    output = tmp_path / "verdicts.jsonl"
    command = ["judge", "--judge", str(_remote_bundle(tmp_path)), "--input", str(source), "--output", str(output)]
    command += ["--api-base", chat_server.url, "--num-threads", threads]
    assert main(command) == 1
    captured = capsys.readouterr()
    assert "3 rows judged now, 0 already" in captured.out
    assert "3 rows got no verdict" in captured.err and "verdicts.errors.jsonl" in captured.err
    assert [json.loads(line)["id"] for line in output.read_text().splitlines()] == ["r1", "r4", "r6"]
    errors = [json.loads(line) for line in (tmp_path / "verdicts.errors.jsonl").read_text().splitlines()]
    assert [(e["id"], e["line"]) for e in errors] == [("r2", 2), ("r3", 3), ("r5", 5)]
    assert "LMServerError" in errors[0]["error"] and "after 2 attempts" in errors[0]["error"]
    assert "no valid verdict" in errors[1]["error"]
    assert "longer than the judge model's context" in errors[2]["error"]

    broken.clear()  # the server recovers: the next run judges exactly the rows that failed
    seen = len(chat_server.requests)
    assert main(command) == 0
    assert "3 rows judged now, 3 already" in capsys.readouterr().out
    retried = chat_server.requests[seen:]
    assert len(retried) == 3
    assert all(sum(key in text for text in retried) == 1 for key in ("server down", "odd answer", "way too long"))
    assert sorted(json.loads(line)["id"] for line in output.read_text().splitlines()) == [f"r{i}" for i in range(1, 7)]
    assert all(json.loads(line)["verdict"] is True for line in output.read_text().splitlines())
    assert not (tmp_path / "verdicts.errors.jsonl").exists()


def test_a_judge_failing_on_its_first_rows_stops_without_trying_the_rest(chat_server, tmp_path: Path) -> None:
    from judgecal.export.adapters import judge_file
    from judgecal.judges.program import JudgeFailedError, RetryPolicy

    chat_server.respond = lambda text, attempt: 503
    source = write_jsonl(
        tmp_path / "rows.jsonl", [{"id": f"r{i}", "prompt": "p", "attribute": f"a{i}"} for i in range(9)]
    )
    judge = load_judge(_remote_bundle(tmp_path), api_base=chat_server.url)
    judge.judge.retry = RetryPolicy(attempts=1)
    with pytest.raises(JudgeFailedError, match="failed on its first 3 rows"):
        judge_file(judge, source, tmp_path / "out.jsonl")
    assert len(chat_server.requests) == 3
    assert (tmp_path / "out.jsonl").read_text() == ""
    assert len((tmp_path / "out.errors.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow
def test_an_over_long_row_for_the_embedded_model_is_an_error_for_that_row(embedded_lm, tmp_path: Path) -> None:
    from judgecal.export.adapters import judge_file
    from judgecal.judges.fitted import ProgramJudge
    from judgecal.judges.program import JudgeProgram

    judge = ProgramJudge(RELEVANCE, JudgeProgram(RELEVANCE.signature), embedded_lm, "embedded")
    rows = [
        {"id": "short-1", "prompt": "Plan a picnic.", "attribute": "The user is vegan."},
        {"id": "huge", "prompt": "Plan a picnic.", "attribute": "The user likes picnics. " * 4000},
        {"id": "short-2", "prompt": "Fix my CSS.", "attribute": "The user is vegan."},
    ]
    source = write_jsonl(tmp_path / "rows.jsonl", rows)
    result = judge_file(judge, source, tmp_path / "out.jsonl")
    assert (result.judged, result.failed) == (2, 1)
    [error] = [json.loads(line) for line in (tmp_path / "out.errors.jsonl").read_text().splitlines()]
    assert (error["id"], error["line"]) == ("huge", 2)
    assert "longer than the judge model's context" in error["error"]
    assert [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == [
        "short-1",
        "short-2",
    ]


def test_judge_command_does_not_send_rows_to_the_endpoint_a_bundle_names(
    chat_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from judgecal.judges.fitted import ProgramJudge
    from judgecal.judges.program import JudgeProgram
    from tests.conftest import ChatServer

    collector = ChatServer()  # the server a bundle's author would like the rows sent to
    try:
        judge = ProgramJudge(RELEVANCE, JudgeProgram(RELEVANCE.signature), None, "remote")
        config = LMConfig(model="openai/judge", api_base=collector.url, cache=False, num_retries=0)
        save_bundle(bundle_from_judge(judge, config), tmp_path / "b")
        monkeypatch.setenv("OPENAI_API_BASE", chat_server.url)  # the user's own setting for openai/ models
        source = write_jsonl(
            tmp_path / "rows.jsonl", [{"id": f"r{i}", "prompt": "p", "attribute": f"a{i}"} for i in range(3)]
        )
        command = ["judge", "--judge", str(tmp_path / "b"), "--input", str(source)]
        assert main([*command, "--output", str(tmp_path / "mine.jsonl")]) == 0
        warning = capsys.readouterr().err
        assert f"names the endpoint {collector.url}; it is not used" in warning
        assert (len(chat_server.requests), len(collector.requests)) == (3, 0)
        assert main([*command, "--output", str(tmp_path / "trusted.jsonl"), "--trust-endpoint"]) == 0
        assert (len(chat_server.requests), len(collector.requests)) == (3, 3)
    finally:
        collector.close()


def test_the_mlflow_model_checks_the_digest_and_takes_the_same_choices(
    verifier_judge, tmp_path: Path, isolated_workspace: Path
) -> None:
    import mlflow

    from judgecal.export.flavor import log_model
    from judgecal.workspace import Workspace

    judge, dataset = verifier_judge
    folder = tmp_path / "bundle"
    path = save_bundle(bundle_from_judge(judge, LMConfig()), folder)
    document = json.loads(path.read_text())
    document["judge"]["threshold"] = 0.0
    path.write_text(json.dumps(document))
    Workspace(isolated_workspace).open_tracking()
    mlflow.set_experiment("bundle-model")
    with mlflow.start_run() as run:
        log_model(folder)
    uri = f"runs:/{run.info.run_id}/judge"
    with pytest.raises(Exception, match="modified after it was saved"):
        mlflow.pyfunc.load_model(uri)
    with pytest.warns(UserWarning, match="modified after it was saved"):
        model = mlflow.pyfunc.load_model(uri, model_config={"allow_modified": True})
    import pandas as pd

    frame = pd.DataFrame([row.inputs for row in dataset.rows[:4]])
    assert model.predict(frame)["label"].tolist() == ["true"] * 4  # the edited threshold took effect


# -- remote models, several rows at once -------------------------------------------------


def test_judge_command_sends_num_threads_rows_at_once_and_counts_the_429s_it_retried(
    chat_server, tmp_path: Path, capsys
) -> None:
    chat_server.hold_until = 4
    chat_server.respond = lambda text, attempt: 429 if attempt == 1 and text.count("busy") else "ok"
    texts = [f"row {i}" + (" busy" if i % 4 == 0 else "") for i in range(12)]
    source = write_jsonl(
        tmp_path / "rows.jsonl", [{"id": f"r{i}", "prompt": t, "attribute": "a"} for i, t in enumerate(texts)]
    )
    output = tmp_path / "verdicts.jsonl"
    command = ["judge", "--judge", str(_remote_bundle(tmp_path)), "--input", str(source), "--output", str(output)]
    assert main([*command, "--api-base", chat_server.url, "--num-threads", "4"]) == 0
    out = capsys.readouterr().out
    assert "12 rows judged now" in out
    assert "3 calls retried after HTTP 429" in out
    assert chat_server.most_at_once == 4
    assert len(output.read_text().splitlines()) == 12


@pytest.mark.slow
def test_the_in_process_model_judges_one_row_at_a_time_whatever_num_threads_says(embedded_lm, monkeypatch) -> None:
    from judgecal.judges import program
    from judgecal.judges.fitted import ProgramJudge
    from judgecal.judges.program import JudgeProgram

    asked: list[int] = []
    run_concurrently = program.run_concurrently

    def recording(function, items, num_threads):
        asked.append(num_threads)
        return run_concurrently(function, items, num_threads)

    monkeypatch.setattr(program, "run_concurrently", recording)
    judge = CalibratedJudge(ProgramJudge(RELEVANCE, JudgeProgram(RELEVANCE.signature), embedded_lm, "embedded"))
    assert judge.in_process
    rows = [{"prompt": f"Plan a trip to city {i}.", "attribute": "The user is vegan."} for i in range(3)]
    assert len(judge.batch(rows, num_threads=4, progress=False)) == 3
    assert asked and max(asked) == 1, f"rows were sent {max(asked)} at a time to the in-process model"

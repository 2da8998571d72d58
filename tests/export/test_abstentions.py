"""A judge that abstains, through every adapter: the file judge and its queue for people,
resuming after a crash, the judge command, the DSPy metric, the MLflow scorer and the
MLflow model. The judge is :class:`~tests.helpers.AbstainingJudge`, a real judge that
abstains inside a band of its probability."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from judgecal.data.rows import load_rows, load_verdicts
from judgecal.export.adapters import CalibratedJudge, judge_file
from tests.conftest import write_jsonl
from tests.helpers import RELEVANCE, AbstainingJudge, recorded_rows

ROWS = list(recorded_rows().rows[:40])


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """The rows to judge, with a column of the user's own that must travel to the queue."""
    return write_jsonl(
        tmp_path / "rows.jsonl",
        [{"id": r.id, "group": r.group, **r.inputs, "source": f"log-{i}"} for i, r in enumerate(ROWS)],
    )


def test_abstained_rows_are_answers_in_the_verdicts_file_and_queued_for_people(source: Path, tmp_path: Path) -> None:
    judge = AbstainingJudge()
    expected = judge.predict(ROWS)
    abstained = [row.id for row, v in zip(ROWS, expected, strict=True) if v.abstained]
    assert 0 < len(abstained) < len(ROWS)
    output = tmp_path / "verdicts.jsonl"
    result = judge_file(judge, source, output)
    assert (result.judged, result.failed, result.abstained) == (len(ROWS), 0, len(abstained))
    assert result.queue_file == tmp_path / "verdicts.queue.jsonl"
    assert not (tmp_path / "verdicts.errors.jsonl").exists()
    written = lines_of(output)
    assert [line["id"] for line in written] == [row.id for row in ROWS]
    for line, verdict in zip(written, expected, strict=True):
        assert line["abstained"] is verdict.abstained
        assert line["verdict"] == verdict.label
        assert line["probability"] == pytest.approx(verdict.probability_of(True))
    # The verdicts file reads back, abstentions included.
    assert {k: v[0] for k, v in load_verdicts(output, RELEVANCE.spec).items()} == {
        row.id: v.label for row, v in zip(ROWS, expected, strict=True)
    }
    queued = lines_of(result.queue_file)
    assert [line["id"] for line in queued] == abstained
    by_id = {line["id"]: line for line in written}
    for line in queued:
        assert line["abstention"]["probability"] == by_id[line["id"]]["probability"]
        assert line["abstention"]["judge"] == judge.name and line["label"] is None
    # The queue is a rows file: people fill in "label", and it is calibration data.
    rows = load_rows(result.queue_file, RELEVANCE.spec, labelled=False).rows
    originals = {row.id: row for row in ROWS}
    assert [(r.inputs, r.group) for r in rows] == [(originals[i].inputs, originals[i].group) for i in abstained]
    assert [r.meta["source"] for r in rows] == [f"log-{ROWS.index(originals[i])}" for i in abstained]
    assert [r.line for r in rows] == list(range(1, len(abstained) + 1))
    assert [line["abstention"]["line"] for line in queued] == [ROWS.index(originals[i]) + 1 for i in abstained]


class CrashingJudge(AbstainingJudge):
    """Calls a model (so rows are judged and written one at a time) and the process dies
    at row ``crash_at``."""

    def __init__(self, crash_at: int) -> None:
        super().__init__(calls_model=True)
        self.crash_at = crash_at

    def predict(self, rows, *, progress=None, description=""):
        self.__dict__["calls"] = self.__dict__.get("calls", 0) + 1
        if self.calls == self.crash_at:
            raise KeyboardInterrupt
        return super().predict(rows)


def test_a_run_interrupted_anywhere_resumes_without_losing_or_duplicating_verdicts_or_queue_lines(
    source: Path, tmp_path: Path
) -> None:
    expected = AbstainingJudge().predict(ROWS)
    abstained = [row.id for row, v in zip(ROWS, expected, strict=True) if v.abstained]
    output, queue = tmp_path / "verdicts.jsonl", tmp_path / "verdicts.queue.jsonl"

    def finish_and_check() -> None:
        judge_file(AbstainingJudge(), source, output)
        assert [line["id"] for line in lines_of(output)] == [row.id for row in ROWS]
        assert [line["id"] for line in lines_of(queue)] == abstained

    # The process dies at row 13.
    with pytest.raises(KeyboardInterrupt):
        judge_file(CrashingJudge(crash_at=13), source, output)
    assert len(lines_of(output)) == 12
    finish_and_check()

    # It dies after writing an abstained row's queue line, in the middle of its verdicts
    # line: on resume the row is judged and queued again, once.
    full_output, full_queue = output.read_text(), queue.read_text()
    for row_id in (abstained[3], abstained[-1]):
        position = [row.id for row in ROWS].index(row_id)
        kept = full_output.splitlines(keepends=True)[:position]
        output.write_text("".join(kept) + full_output.splitlines()[position][:9])
        queue.write_text("".join(full_queue.splitlines(keepends=True)[: abstained.index(row_id) + 1]))
        finish_and_check()
        # ... or in the middle of the queue line itself.
        output.write_text("".join(kept))
        queue.write_text(
            "".join(full_queue.splitlines(keepends=True)[: abstained.index(row_id)])
            + full_queue.splitlines()[abstained.index(row_id)][:20]
        )
        finish_and_check()

    again = judge_file(AbstainingJudge(), source, output)
    assert (again.judged, again.already_done, again.abstained, again.queue_file) == (0, len(ROWS), 0, None)


def test_the_judge_command_says_how_many_rows_it_abstained_on_and_where_they_are_queued(
    source: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """``judgecal judge`` on a bundle whose judge abstains: the bundle is a verifier's,
    loaded and checked as usual, its judge replaced by the abstaining one (a bundle cannot
    hold a judge registered nowhere)."""
    from judgecal.backends.settings import LMConfig
    from judgecal.calibrate.trained import VerifierJudge
    from judgecal.cli import main
    from judgecal.export import flavor
    from judgecal.export.bundle import bundle_from_judge, save_bundle

    verifier = VerifierJudge(task=RELEVANCE, name="relevance-verifier").fit(list(recorded_rows().rows))
    save_bundle(bundle_from_judge(verifier, LMConfig()), tmp_path / "bundle")
    real_open = flavor.open_judge
    monkeypatch.setattr(
        flavor, "open_judge", lambda *a, **k: dataclasses.replace(real_open(*a, **k), judge=AbstainingJudge())
    )
    output = tmp_path / "out.jsonl"
    command = ["judge", "--judge", str(tmp_path / "bundle"), "--input", str(source), "--output", str(output)]
    assert main(command) == 0
    count = sum(v.abstained for v in AbstainingJudge().predict(ROWS))
    out = capsys.readouterr().out
    words = " ".join(out.split())  # lines as the console wrapped them, joined
    assert f"{len(ROWS)} rows judged now, 0 already" in words
    assert f"{count} of them the judge abstained on" in words and "out.queue.jsonl" in "".join(out.split())


def test_the_dspy_metric_gives_an_abstention_its_probability() -> None:
    import dspy

    judge = CalibratedJudge(AbstainingJudge())
    metric, probability = judge.as_dspy_metric(), judge.as_dspy_metric(probability=True)
    for row, verdict in zip(ROWS, judge.batch(ROWS, progress=False), strict=True):
        example = dspy.Example(prompt=row.inputs["prompt"])
        prediction = dspy.Prediction(attribute=row.inputs["attribute"])
        p = verdict.probability_of(True)
        assert probability(example, prediction) == pytest.approx(p)
        assert metric(example, prediction) == (pytest.approx(p) if verdict.abstained else float(verdict.label))


def test_the_mlflow_scorer_gives_an_abstention_no_value_no_error_and_says_so() -> None:
    judge = CalibratedJudge(AbstainingJudge())
    scorer = judge.as_mlflow_scorer()
    for row, verdict in zip(ROWS[:12], judge.batch(ROWS[:12], progress=False), strict=True):
        feedback = scorer(inputs={"prompt": row.inputs["prompt"]}, outputs={"attribute": row.inputs["attribute"]})
        assert feedback.error is None
        assert feedback.metadata["abstained"] is verdict.abstained
        assert feedback.metadata["probability"] == pytest.approx(verdict.probability_of(True))
        if verdict.abstained:
            assert feedback.value is None and feedback.rationale == "abstained"
        else:
            assert feedback.value is verdict.label


def test_mlflow_leaves_abstentions_out_of_the_scorers_mean(isolated_workspace: Path) -> None:
    import mlflow

    from judgecal.workspace import Workspace

    judge = CalibratedJudge(AbstainingJudge())
    rows = ROWS[:6]  # answers no, yes and abstains: each path, and every row costs MLflow a trace
    verdicts = judge.batch(rows, progress=False)
    answered = [v.label for v in verdicts if not v.abstained]
    assert 0 < len(answered) < len(rows)
    Workspace(isolated_workspace).open_tracking()
    mlflow.set_experiment("abstaining-scorer")
    data = [{"inputs": {"prompt": r.inputs["prompt"]}, "outputs": {"attribute": r.inputs["attribute"]}} for r in rows]
    result = mlflow.genai.evaluate(data=data, scorers=[judge.as_mlflow_scorer(name="relevance")])
    assert result.metrics["relevance/mean"] == pytest.approx(sum(answered) / len(answered))
    rationale = result.result_df["relevance/rationale"].tolist()
    assert [text == "abstained" for text in rationale] == [v.abstained for v in verdicts]
    metadata = [a[0]["metadata"] for a in result.result_df["assessments"]]
    assert [m["abstained"] for m in metadata] == [str(v.abstained) for v in verdicts]
    assert [json.loads(m["probabilities"]) for m in metadata] == [v.probabilities for v in verdicts]


def test_the_mlflow_model_has_an_abstained_column_and_an_empty_label_for_abstentions() -> None:
    import pandas as pd

    from judgecal.export.mlflow_model import CalibratedJudgeModel

    frame = pd.DataFrame([row.inputs for row in ROWS])
    expected = AbstainingJudge().predict(ROWS)
    for calls_model in (False, True):  # judged as a frame, or row by row
        model = CalibratedJudgeModel()
        model.judge = AbstainingJudge(calls_model=calls_model)
        out = model.predict(None, frame)
        assert list(out.columns) == ["label", "confidence", "error", "abstained"]
        assert out["abstained"].dtype == bool
        assert out["abstained"].tolist() == [v.abstained for v in expected]
        assert out["label"].tolist() == ["" if v.abstained else json.dumps(v.label) for v in expected]
        assert (out["error"] == "").all()


def test_the_mlflow_models_signature_lists_the_abstained_column(tmp_path: Path) -> None:
    from mlflow.models import Model

    from judgecal.calibrate.trained import VerifierJudge
    from judgecal.export.flavor import save_model

    verifier = VerifierJudge(task=RELEVANCE, name="relevance-verifier").fit(list(recorded_rows().rows))
    outputs = Model.load(str(save_model(verifier, tmp_path / "model"))).signature.outputs.to_dict()
    assert [(column["name"], column["type"]) for column in outputs] == [
        ("label", "string"),
        ("confidence", "double"),
        ("error", "string"),
        ("abstained", "boolean"),
    ]


def test_the_judge_command_on_a_saved_selective_judge_writes_its_abstentions_and_queue(tmp_path: Path, capsys) -> None:
    """``judgecal judge`` on a real selective bundle (the saved one of tests/export/golden):
    the rows it abstains on are answers in the verdicts file and lines of the queue, the
    same rows it abstained on when it was saved."""
    from judgecal.cli import main

    golden = Path(__file__).with_name("golden") / "recorded-stacking-selective"
    expected = json.loads((golden / "expected.json").read_text())
    source = write_jsonl(
        tmp_path / "rows.jsonl",
        [
            {"id": r["id"], "group": "g", **r["inputs"], "reference_judges": r["reference_judges"]}
            for r in expected["rows"]
        ],
    )
    output = tmp_path / "out.jsonl"
    assert main(["judge", "--judge", str(golden), "--input", str(source), "--output", str(output)]) == 0
    lines = lines_of(output)
    assert [line["abstained"] for line in lines] == [v["abstained"] for v in expected["verdicts"]]
    assert all(line["verdict"] is None for line in lines if line["abstained"])
    queued = lines_of(tmp_path / "out.queue.jsonl")
    assert [q["id"] for q in queued] == [line["id"] for line in lines if line["abstained"]]
    assert not (tmp_path / "out.errors.jsonl").exists() or not (tmp_path / "out.errors.jsonl").read_text()
    capsys.readouterr()

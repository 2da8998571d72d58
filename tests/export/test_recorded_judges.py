"""A judge calibrated on recorded verdicts reads ``reference_judges.<name>`` from every row
it judges: a row without it gets no verdict, and the error names the field, the row and
its line, rather than a guess standing in for the missing verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from judgecal.backends.settings import LMConfig
from judgecal.calibrate.posthoc import ThresholdJudge
from judgecal.calibrate.trained import StackingJudge
from judgecal.cli import main
from judgecal.data.split import SplitSpec, split_by_group
from judgecal.export.bundle import bundle_from_judge, save_bundle
from judgecal.export.flavor import load_judge
from judgecal.judges.fitted import MemoJudge, RecordedJudge
from tests.conftest import write_jsonl
from tests.helpers import RELEVANCE, recorded_rows


@pytest.fixture(scope="module")
def stacked():
    dataset = recorded_rows()
    split = split_by_group(dataset, SplitSpec(dev=0.25, test=0.25, seed=1))
    raw = MemoJudge(RecordedJudge(RELEVANCE, "strict", "stacked"))
    judge = StackingJudge(base=raw, references=("strict", "loose"), verifiers=("tfidf",))
    return judge.fit(split.train.rows, split.dev.rows), split


def test_a_stacked_judge_gives_no_verdict_for_a_row_without_a_recorded_verdict(stacked) -> None:
    judge, split = stacked
    complete = split.test.rows[0]
    partial = complete.model_copy(update={"reference_judges": {"strict": True}, "line": 7})
    first, second = judge.predict([complete, partial])
    assert first.label is not None
    assert second.label is None
    assert second.error is not None
    assert "'reference_judges.loose' is missing" in second.error
    assert f"row {partial.id!r} (line 7)" in second.error
    assert judge.reference_fields == ("strict", "loose")


def test_a_recorded_judge_names_the_field_it_reads() -> None:
    row = recorded_rows().rows[0].model_copy(update={"reference_judges": {}, "line": 3})
    judge = ThresholdJudge(RecordedJudge(RELEVANCE, "strict", "r"))
    judge.base_, judge.threshold_ = judge.base, 0.5
    [verdict] = judge.predict([row])
    assert verdict.label is None
    assert "field 'reference_judges.strict' is missing" in verdict.error
    assert judge.reference_fields == ("strict",)


def test_python_callers_pass_recorded_verdicts_as_reference_judges(stacked, tmp_path: Path) -> None:
    judge, _ = stacked
    save_bundle(bundle_from_judge(judge, LMConfig()), tmp_path / "bundle")
    loaded = load_judge(tmp_path / "bundle")
    inputs = {"prompt": "Help me with cooking.", "attribute": "The user cares about cooking."}
    verdict = loaded(**inputs, reference_judges={"strict": True, "loose": True})
    assert verdict.label in (True, False) and verdict.error is None
    refused = loaded(**inputs)
    assert refused.label is None and "'reference_judges.strict' is missing" in refused.error


def test_judge_command_lists_rows_without_the_recorded_verdict_by_id_and_line(
    stacked, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    judge, split = stacked
    save_bundle(bundle_from_judge(judge, LMConfig()), tmp_path / "bundle")
    rows = [{"id": r.id, **r.inputs, "reference_judges": dict(r.reference_judges)} for r in split.test.rows[:4]]
    del rows[1]["reference_judges"]["loose"]
    source = write_jsonl(tmp_path / "rows.jsonl", rows)
    output = tmp_path / "verdicts.jsonl"
    code = main(["judge", "--judge", str(tmp_path / "bundle"), "--input", str(source), "--output", str(output)])
    assert code == 1
    assert [json.loads(line)["id"] for line in output.read_text().splitlines()] == [
        rows[0]["id"],
        rows[2]["id"],
        rows[3]["id"],
    ]
    [error] = [json.loads(line) for line in (tmp_path / "verdicts.errors.jsonl").read_text().splitlines()]
    assert (error["id"], error["line"]) == (rows[1]["id"], 2)
    assert "field 'reference_judges.loose' is missing" in error["error"]
    assert "1 rows got no verdict" in capsys.readouterr().err


def test_the_mlflow_scorer_passes_recorded_verdicts_on(stacked) -> None:
    from judgecal.export.adapters import mlflow_scorer

    judge, _ = stacked
    scorer = mlflow_scorer(judge)
    inputs = {"prompt": "Help me with cooking.", "attribute": "The user cares about cooking."}
    judged = scorer(inputs={**inputs, "reference_judges": {"strict": True, "loose": True}})
    assert judged.value in (True, False) and judged.error is None
    refused = scorer(inputs=inputs)
    assert refused.value is None and "'reference_judges.strict' is missing" in str(refused.error)

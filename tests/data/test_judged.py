"""Files of judged rows read back: verdicts, abstentions, the abstention queue, and the
rows joined from the file that was judged."""

from __future__ import annotations

from pathlib import Path

import pytest

from judgecal.data.judged import read_judged_rows
from judgecal.data.rows import DataError
from judgecal.tasks.registry import resolve_task
from tests.conftest import write_jsonl

RELEVANCE = resolve_task("relevance").spec


def test_a_verdicts_file_with_abstentions_reads_back(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "verdicts.jsonl",
        [
            {"id": "a", "verdict": True, "probability": 0.9, "judge": "j"},
            {"id": "b", "verdict": None, "abstained": True, "probability": 0.5},
            {"id": "c", "verdict": "no"},
        ],
    )
    judged = read_judged_rows(path, RELEVANCE)
    assert [(r.id, r.verdict, r.abstained, r.probability) for r in judged.rows] == [
        ("a", True, False, 0.9),
        ("b", None, True, 0.5),
        ("c", False, False, None),
    ]
    assert judged.digest.startswith("sha256:") and all(r.row is None for r in judged.rows)


def queue_line(i: int, probability: object = 0.4) -> dict:
    """A line of the abstention queue as judgecal judge writes it: the row as it was read,
    what the judge said under "abstention"."""
    row = {"id": f"q{i}", "group": "p1", "prompt": "Plan a trip", "attribute": "likes trains", "label": None}
    return {**row, "abstention": {"judge": "j", "line": i, "probability": probability, "probabilities": None}}


def test_a_queue_line_holds_its_row_and_counts_as_abstained(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "verdicts.queue.jsonl", [queue_line(1)])
    [row] = read_judged_rows(path, RELEVANCE).rows
    assert row.abstained and row.verdict is None and row.group == "p1" and row.probability == 0.4
    assert row.row is not None and row.row.inputs == {"prompt": "Plan a trip", "attribute": "likes trains"}
    assert row.row.meta == {}  # what the judge said stays out of the row annotators get


def test_rows_of_your_own_need_no_verdict(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "rows.jsonl", [{"id": "a", "group": "g", "prompt": "p", "attribute": "x", "probability": 0.3}]
    )
    [row] = read_judged_rows(path, RELEVANCE).rows
    assert (row.verdict, row.abstained, row.probability) == (None, False, 0.3)


def test_the_rows_file_gives_a_verdicts_file_its_groups_and_inputs(tmp_path: Path) -> None:
    verdicts = write_jsonl(tmp_path / "v.jsonl", [{"id": "a", "verdict": True}, {"id": "b", "verdict": False}])
    rows = write_jsonl(
        tmp_path / "rows.jsonl",
        [{"id": i, "group": f"g{i}", "prompt": "p", "attribute": "x"} for i in ("b", "a")],
    )
    judged = read_judged_rows(verdicts, RELEVANCE, rows_file=rows)
    assert [(r.id, r.group, r.row.id if r.row else None) for r in judged.rows] == [("a", "ga", "a"), ("b", "gb", "b")]
    missing = write_jsonl(tmp_path / "v2.jsonl", [{"id": "zz", "verdict": True}])
    with pytest.raises(DataError, match=r"v2.jsonl:1: field 'id': row 'zz' is not in the rows file"):
        read_judged_rows(missing, RELEVANCE, rows_file=rows)


@pytest.mark.parametrize(
    ("line", "field", "fragment"),
    [
        ({"id": "b", "verdict": None}, "verdict", 'null is a verdict only with "abstained": true'),
        ({"id": "b"}, "verdict", "missing required field"),
        ({"id": "b", "verdict": True, "abstained": True}, "verdict", '"verdict": null'),
        ({"id": "b", "verdict": None, "abstained": "yes"}, "abstained", "expected true or false"),
        ({"id": "b", "verdict": True, "probability": 1.5}, "probability", "between 0 and 1"),
        ({"id": "b", "verdict": "maybe"}, "verdict", "'maybe'"),
        ({"id": "a", "verdict": True}, "id", "duplicate id 'a'"),
        ({"verdict": True}, "id", "missing required field"),
        ({"id": "b", "prompt": "p", "probability": 0.5}, "attribute", "missing required field"),
        ({"id": "b", "prompt": "p", "attribute": "x", "abstention": 0.5}, "abstention", "an object"),
        (queue_line(2, probability=2), "abstention.probability", "between 0 and 1"),
    ],
)
def test_a_bad_line_stops_with_file_line_and_field(tmp_path: Path, line: dict, field: str, fragment: str) -> None:
    path = write_jsonl(tmp_path / "v.jsonl", [{"id": "a", "verdict": True}, line])
    with pytest.raises(DataError) as refused:
        read_judged_rows(path, RELEVANCE)
    assert str(refused.value).startswith(f"{path}:2: field '{field}': ")
    assert fragment in str(refused.value)


def test_a_row_beside_its_verdict_keeps_no_trace_of_the_judge(tmp_path: Path) -> None:
    """Annotators get the row without the judge's answer, so it cannot anchor them."""
    path = write_jsonl(
        tmp_path / "judged.jsonl",
        [{"id": "a", "group": "g", "prompt": "p", "attribute": "x", "verdict": True, "probability": 0.8, "judge": "j"}],
    )
    [row] = read_judged_rows(path, RELEVANCE).rows
    assert (row.verdict, row.probability, row.group) == (True, 0.8, "g")
    assert row.row is not None and row.row.meta == {} and row.row.inputs == {"prompt": "p", "attribute": "x"}

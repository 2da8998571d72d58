"""Loading, validating and splitting human-labelled rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from judgecal.data.rows import DataError, LabeledRow, load_rows
from judgecal.data.split import SplitSpec, split_by_group
from judgecal.tasks.registry import resolve_task
from tests.conftest import PANDALM_DEV, RELEVANCE_DEV, needs, write_jsonl

RELEVANCE = resolve_task("relevance").spec
PAIRWISE = resolve_task("pairwise").spec
ATTRIBUTE = resolve_task("attribute").spec


def relevance_row(i: int, group: str = "g1", label: object = False, **extra: object) -> dict:
    return {"id": f"r{i}", "group": group, "prompt": "Plan a trip", "attribute": f"fact {i}", "label": label, **extra}


def test_jsonl_rows_keep_inputs_labels_and_unknown_columns(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", [relevance_row(1, label="yes", user_id="u7", reason="why")])
    dataset = load_rows(path, RELEVANCE)
    row = dataset.rows[0]
    assert row.inputs == {"prompt": "Plan a trip", "attribute": "fact 1"}
    assert row.label is True
    assert row.meta == {"user_id": "u7", "reason": "why"}
    assert row.line == 1


@pytest.mark.parametrize(
    ("content", "line", "field", "fragment"),
    [
        (
            '{"id": "a", "group": "g", "prompt": "p", "attribute": "x", "label": true}\n{"id": "b", oops}\n',
            2,
            None,
            "invalid JSON",
        ),
        ('{"id": "a", "group": "g", "attribute": "x", "label": true}\n', 1, "prompt", "missing required field"),
        ('{"id": "a", "prompt": "p", "attribute": "x", "label": true}\n', 1, "group", "missing required field"),
        ('{"id": "a", "group": "g", "prompt": "p", "attribute": "x", "label": "maybe"}\n', 1, "label", "'maybe'"),
        (
            '{"id": "a", "group": "g", "prompt": "p", "attribute": "x", "label": true}\n'
            '{"id": "a", "group": "g", "prompt": "p", "attribute": "y", "label": false}\n',
            2,
            "id",
            "duplicate id 'a'",
        ),
        ("[1, 2]\n", 1, None, "expected a JSON object"),
        ('{"id": "a", "group": "g", "prompt": [5], "attribute": "x", "label": true}\n', 1, "prompt", "string"),
    ],
)
def test_bad_rows_stop_with_file_line_and_field(
    tmp_path: Path, content: str, line: int, field: str | None, fragment: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as caught:
        load_rows(path, RELEVANCE)
    error = caught.value
    assert error.path == str(path)
    assert error.line == line
    assert error.field == field
    assert fragment in str(error)
    assert str(error).startswith(f"{path}:{line}: ")


def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(DataError, match="holds no rows") as caught:
        load_rows(path, RELEVANCE)
    assert caught.value.path == str(path)


def test_unknown_pairwise_label_names_the_allowed_values(tmp_path: Path) -> None:
    row = {"id": "x", "group": "g", "prompt": "p", "response_a": "a", "response_b": "b", "label": "C"}
    path = write_jsonl(tmp_path / "pairs.jsonl", [row])
    with pytest.raises(DataError, match=r"field 'label': expected one of 'A', 'B', 'tie', got 'C'"):
        load_rows(path, PAIRWISE)


def test_bad_annotator_label_is_located(tmp_path: Path) -> None:
    row = {
        "id": "x",
        "group": "g",
        "prompt": "p",
        "response_a": "a",
        "response_b": "b",
        "label": "A",
        "annotator_labels": ["A", "Q", "B"],
    }
    path = write_jsonl(tmp_path / "pairs.jsonl", [row])
    with pytest.raises(DataError, match=r"field 'annotator_labels\[1\]'"):
        load_rows(path, PAIRWISE)


def test_csv_rows_load_with_json_columns_and_reference_judges(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text(
        "id,group,prompt,user_attributes,response_a,response_b,label,annotator_labels,reference_judges.gpt\n"
        'p1,g1,Say hi,"[""likes brevity""]",Hi,Hello there,a,"[""A"",""A"",""B""]",B\n'
    )
    row = load_rows(path, PAIRWISE).rows[0]
    assert row.inputs["user_attributes"] == ["likes brevity"]
    assert row.label == "A"
    assert row.annotator_labels == ("A", "A", "B")
    assert row.reference_judges == {"gpt": "B"}
    assert row.line == 2


def test_csv_bad_json_cell_is_located(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text("id,group,prompt,user_attributes,response_a,response_b,label\np1,g1,Hi,[oops,a,b,A\n")
    with pytest.raises(DataError, match=r":2: field 'user_attributes': expected JSON"):
        load_rows(path, PAIRWISE)


def test_missing_optional_list_input_defaults_to_empty(tmp_path: Path) -> None:
    row = {"id": "x", "group": "g", "prompt": "p", "response_a": "a", "response_b": "b", "label": "tie"}
    dataset = load_rows(write_jsonl(tmp_path / "pairs.jsonl", [row]), PAIRWISE)
    assert dataset.rows[0].inputs["user_attributes"] == []


def test_attribute_rows_validate_conversation_turns(tmp_path: Path) -> None:
    good = {
        "id": "a",
        "group": "c1",
        "conversation": [{"role": "user", "content": "I run marathons"}],
        "attribute": "The user runs",
        "evidence": "I run marathons",
        "label": True,
    }
    bad = {**good, "id": "b", "conversation": [{"role": "narrator", "content": "x"}]}
    path = write_jsonl(tmp_path / "attrs.jsonl", [good, bad])
    with pytest.raises(DataError) as caught:
        load_rows(path, ATTRIBUTE)
    assert caught.value.line == 2
    assert caught.value.field == "conversation.0.role"


def test_fingerprint_changes_with_content_not_with_row_order(tmp_path: Path) -> None:
    rows = [relevance_row(i, group=f"g{i % 3}", label=i % 2 == 0) for i in range(9)]
    first = load_rows(write_jsonl(tmp_path / "a.jsonl", rows), RELEVANCE)
    shuffled = load_rows(write_jsonl(tmp_path / "b.jsonl", rows[::-1]), RELEVANCE)
    changed = load_rows(write_jsonl(tmp_path / "c.jsonl", [*rows[:-1], relevance_row(8, "g2", False)]), RELEVANCE)
    assert first.fingerprint == shuffled.fingerprint
    assert first.fingerprint != changed.fingerprint


def _dataset(groups: list[int], labels: list[bool]):
    from judgecal.data.rows import Dataset

    rows = tuple(
        LabeledRow(id=f"r{i}", group=f"g{g}", inputs={"prompt": "p", "attribute": "a"}, label=label)
        for i, (g, label) in enumerate(zip(groups, labels, strict=True))
    )
    return Dataset(task=RELEVANCE, rows=rows, source="memory")


@settings(max_examples=60, deadline=None)
@given(
    n_groups=st.integers(min_value=6, max_value=30),
    rows_per_group=st.integers(min_value=2, max_value=6),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_split_never_puts_one_group_in_two_splits(n_groups: int, rows_per_group: int, seed: int) -> None:
    groups = [g for g in range(n_groups) for _ in range(rows_per_group)]
    labels = [(i % rows_per_group) == 0 for i in range(len(groups))]  # every group has both classes
    dataset = _dataset(groups, labels)
    split = split_by_group(dataset, SplitSpec(dev=0.2, test=0.2, seed=seed))
    seen = [{row.group for row in part.rows} for part in split.parts().values()]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert sum(len(part) for part in split.parts().values()) == len(dataset)
    again = split_by_group(dataset, SplitSpec(dev=0.2, test=0.2, seed=seed))
    assert split.fingerprint == again.fingerprint


def test_split_that_leaves_one_class_says_which_split(tmp_path: Path) -> None:
    rows = [relevance_row(i, group=f"g{i}", label=(i == 0)) for i in range(8)]
    dataset = load_rows(write_jsonl(tmp_path / "rows.jsonl", rows), RELEVANCE)
    with pytest.raises(DataError, match=r"split \(seed 0\) holds \d+ rows with only label False") as caught:
        split_by_group(dataset, SplitSpec(seed=0))
    assert caught.value.path == str(tmp_path / "rows.jsonl")


def test_split_needs_three_groups(tmp_path: Path) -> None:
    rows = [relevance_row(i, group=f"g{i % 2}", label=i % 2 == 0) for i in range(6)]
    dataset = load_rows(write_jsonl(tmp_path / "rows.jsonl", rows), RELEVANCE)
    with pytest.raises(DataError, match="at least 3 groups"):
        split_by_group(dataset)


@needs(RELEVANCE_DEV)
def test_shared_relevance_file_loads_as_it_is() -> None:
    dataset = load_rows(RELEVANCE_DEV, RELEVANCE)
    assert len(dataset) == 2761
    assert 0.15 < sum(dataset.labels()) / len(dataset) < 0.19
    assert set(dataset.rows[0].reference_judges) == {"gpt-5.4", "gemma-4-31b-it"}
    assert "reason" in dataset.rows[0].meta
    split = split_by_group(dataset, SplitSpec(seed=0))
    assert sum(split.sizes.values()) == 2761


@needs(PANDALM_DEV)
def test_shared_pandalm_file_loads_as_it_is() -> None:
    dataset = load_rows(PANDALM_DEV, PAIRWISE)
    assert len(dataset) == 999
    assert dataset.label_counts() == {"B": 472, "A": 422, "tie": 105}
    assert all(row.annotator_labels is not None and len(row.annotator_labels) == 3 for row in dataset.rows)
    first = json.loads(PANDALM_DEV.open().readline())
    assert dataset.rows[0].reference_judges == first["reference_judges"]


def test_a_verdicts_file_holds_abstentions_only_where_a_line_says_it_abstained(tmp_path: Path) -> None:
    """``"verdict": null`` is an abstention with ``"abstained": true`` (as ``judgecal
    judge`` writes it) and an error otherwise, naming the file, the line and the field."""
    from judgecal.data.rows import load_verdicts

    good = [
        {"id": "r1", "verdict": True, "abstained": False, "probability": 0.9},
        {"id": "r2", "verdict": None, "abstained": True, "probability": 0.45},
        {"id": "r3", "verdict": None, "abstained": True},
    ]
    verdicts = load_verdicts(write_jsonl(tmp_path / "verdicts.jsonl", good), RELEVANCE)
    assert verdicts == {"r1": (True, 0.9), "r2": (None, 0.45), "r3": (None, None)}
    for line, field, message in (
        ({"id": "r4", "verdict": None}, "verdict", 'a verdict, or null with "abstained": true'),
        ({"id": "r4", "verdict": None, "abstained": False}, "verdict", 'null with "abstained": true'),
        ({"id": "r4", "verdict": "yes", "abstained": True}, "abstained", 'an abstained line has "verdict": null'),
        ({"id": "r4", "verdict": None, "abstained": "yes"}, "abstained", "expected true or false, got 'yes'"),
    ):
        path = write_jsonl(tmp_path / "bad.jsonl", [good[0], line])
        with pytest.raises(DataError) as caught:
            load_verdicts(path, RELEVANCE)
        assert str(caught.value).startswith(f"{path}:2: field '{field}': "), str(caught.value)
        assert message in str(caught.value)

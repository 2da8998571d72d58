"""The optimizer's metric: class-balanced, so answering the majority class earns nothing."""

from __future__ import annotations

import dspy
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import balanced_accuracy_score

from judgecal.calibrate.optimizers import class_balanced_metric, to_examples
from judgecal.data.rows import LabeledRow
from judgecal.tasks.registry import resolve_task

RELEVANCE = resolve_task("relevance")


def score(metric, labels: list[bool], answers: list[bool | None]) -> float:
    examples = [dspy.Example(prompt="p", attribute="a", relevant=label) for label in labels]
    predictions = [dspy.Prediction(relevant=answer) for answer in answers]
    return float(np.mean([metric(e, p) for e, p in zip(examples, predictions, strict=True)]))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.booleans()), min_size=2, max_size=80).filter(
        lambda pairs: len({label for label, _ in pairs}) == 2
    )
)
def test_mean_of_the_metric_over_dev_is_balanced_accuracy(pairs: list[tuple[bool, bool]]) -> None:
    labels = [label for label, _ in pairs]
    answers = [answer for _, answer in pairs]
    metric = class_balanced_metric(RELEVANCE, labels)
    assert score(metric, labels, answers) == pytest.approx(balanced_accuracy_score(labels, answers))


def test_always_answering_the_majority_scores_like_a_coin() -> None:
    labels = [True] * 17 + [False] * 83
    metric = class_balanced_metric(RELEVANCE, labels)
    assert score(metric, labels, [False] * 100) == pytest.approx(0.5)
    assert score(metric, labels, labels) == pytest.approx(1.0)


def test_while_bootstrapping_the_metric_only_says_right_or_wrong() -> None:
    metric = class_balanced_metric(RELEVANCE, [True, False, False, False])
    example = dspy.Example(prompt="p", attribute="a", relevant=True)
    assert metric(example, dspy.Prediction(relevant=True), trace=[]) == 1.0
    assert metric(example, dspy.Prediction(relevant="maybe"), trace=[]) == 0.0


def test_examples_keep_row_ids_and_come_in_group_order() -> None:
    rows = [
        LabeledRow(id="b1", group="b", inputs={"prompt": "p", "attribute": "x"}, label=True),
        LabeledRow(id="a1", group="a", inputs={"prompt": "p", "attribute": "y"}, label=False),
    ]
    examples = to_examples(RELEVANCE, rows)
    assert [e.row_id for e in examples] == ["a1", "b1"]
    assert set(examples[0].inputs().keys()) == {"prompt", "attribute"}

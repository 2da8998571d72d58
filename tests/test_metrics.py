"""Agreement metrics: pinned against scikit-learn, and the bookkeeping around them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import cohen_kappa_score, f1_score

from judgecal.metrics import binary_metrics, categorical_metrics, first_position_rate, order_consistency

pairs_of_bools = st.lists(st.tuples(st.booleans(), st.booleans()), min_size=2, max_size=200)
pairs_of_labels = st.lists(
    st.tuples(st.sampled_from(["A", "B", "tie"]), st.sampled_from(["A", "B", "tie"])), min_size=2, max_size=200
)


@settings(max_examples=200, deadline=None)
@given(pairs_of_bools)
def test_binary_kappa_and_f1_match_scikit_learn(pairs: list[tuple[bool, bool]]) -> None:
    human = [h for h, _ in pairs]
    judge = [j for _, j in pairs]
    assume(len(set(human) | set(judge)) == 2)
    metrics = binary_metrics(human, judge)
    expected_kappa = cohen_kappa_score(human, judge)
    if math.isnan(expected_kappa):
        assert metrics["kappa"] == 0.0
    else:
        assert metrics["kappa"] == pytest.approx(expected_kappa, abs=1e-12)
    assert metrics["f1"] == pytest.approx(f1_score(human, judge, zero_division=0.0), abs=1e-12)
    assert metrics["selected_rate"] == pytest.approx(np.mean(judge))
    assert metrics["human_rate"] == pytest.approx(np.mean(human))
    assert metrics["accuracy"] == pytest.approx(np.mean([h == j for h, j in pairs]))


@settings(max_examples=200, deadline=None)
@given(pairs_of_labels)
def test_categorical_kappa_matches_scikit_learn_and_is_symmetric(pairs: list[tuple[str, str]]) -> None:
    human = [h for h, _ in pairs]
    judge = [j for _, j in pairs]
    assume(len(set(human) | set(judge)) > 1)
    metrics = categorical_metrics(human, judge)
    expected = cohen_kappa_score(human, judge)
    assume(not math.isnan(expected))
    assert metrics["kappa"] == pytest.approx(expected, abs=1e-12)
    assert categorical_metrics(judge, human)["kappa"] == pytest.approx(metrics["kappa"], abs=1e-12)


def test_perfect_agreement_is_kappa_one() -> None:
    assert binary_metrics([True, False, False], [True, False, False])["kappa"] == 1.0
    assert categorical_metrics(["A", "B", "tie"], ["A", "B", "tie"])["kappa"] == 1.0


def test_always_majority_judge_has_zero_kappa_despite_high_accuracy() -> None:
    human = [True] * 17 + [False] * 83
    metrics = binary_metrics(human, [False] * 100)
    assert metrics["accuracy"] == pytest.approx(0.83)
    assert metrics["kappa"] == 0.0
    assert metrics["balanced_accuracy"] == pytest.approx(0.5)
    assert metrics["f1"] == 0.0


def test_invalid_verdicts_count_as_wrong_and_are_reported() -> None:
    metrics = binary_metrics([True, False, True, False], [True, None, None, False])
    assert metrics["invalid_rate"] == 0.5
    assert metrics["accuracy"] == 0.5
    assert metrics["selected_rate"] == 0.25
    assert metrics["kappa"] < 1.0


def test_over_selection_is_visible_as_selected_vs_human_rate() -> None:
    metrics = binary_metrics([True, False, False, False, False], [True, True, True, False, False])
    assert metrics["human_rate"] == pytest.approx(0.2)
    assert metrics["selected_rate"] == pytest.approx(0.6)


def test_order_consistency_reads_swapped_verdicts_in_swapped_terms() -> None:
    original = ["A", "B", "tie", "A", None]
    swapped = ["B", "A", "tie", "A", "A"]  # last two: position-biased, and invalid
    assert order_consistency(original, swapped) == pytest.approx(3 / 5)
    assert first_position_rate(["A", "A", "B", "tie"]) == 0.5


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="2 human labels but 1 verdicts"):
        binary_metrics([True, False], [True])

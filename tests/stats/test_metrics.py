"""Agreement metrics: every formula pinned to scikit-learn, SciPy or krippendorff."""

from __future__ import annotations

import math

import krippendorff
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.stats import kendalltau, spearmanr
from sklearn.metrics import (
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    matthews_corrcoef,
    precision_score,
    recall_score,
)

from judgecal.stats.metrics import (
    BINARY_SPACE,
    INVALID,
    LabelSpace,
    binary_metrics,
    categorical_metrics,
    confidence_metrics,
    confusion,
    expected_calibration_error,
    first_position_rate,
    kappa_from_confusion,
    krippendorff_alpha,
    label_metrics,
    metrics_from_confusion,
    order_consistency,
)

# scikit-learn warns on the degenerate inputs hypothesis is meant to find.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:sklearn", "ignore::UserWarning")

PAIRWISE = LabelSpace(labels=("A", "B", "tie"))
RATING = LabelSpace(labels=(1, 2, 3, 4, 5), ordinal=True)

bool_pairs = st.lists(st.tuples(st.booleans(), st.sampled_from([True, False, None])), min_size=2, max_size=150)
label_pairs = st.lists(
    st.tuples(st.sampled_from(["A", "B", "tie"]), st.sampled_from(["A", "B", "tie", None])), min_size=2, max_size=150
)
rating_pairs = st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)), min_size=3, max_size=150)


def sk(values: list) -> list[str]:
    """scikit-learn's view of the verdicts: a missing verdict is its own category."""
    return [INVALID if v is None else str(v) for v in values]


@settings(max_examples=200, deadline=None)
@given(bool_pairs)
def test_binary_metrics_match_scikit_learn(pairs: list[tuple[bool, bool | None]]) -> None:
    human = [h for h, _ in pairs]
    judge = [j for _, j in pairs]
    metrics = binary_metrics(human, judge)
    selected = [j is True for j in judge]
    expected_kappa = cohen_kappa_score(sk(human), sk(judge))
    assert metrics["kappa"] == pytest.approx(1.0 if math.isnan(expected_kappa) else expected_kappa, abs=1e-9)
    assert metrics["mcc"] == pytest.approx(matthews_corrcoef(sk(human), sk(judge)), abs=1e-9)
    assert metrics["f1"] == pytest.approx(f1_score(human, selected, zero_division=0.0), abs=1e-9)
    assert metrics["precision"] == pytest.approx(precision_score(human, selected, zero_division=0.0), abs=1e-9)
    assert metrics["recall"] == pytest.approx(recall_score(human, selected, zero_division=0.0), abs=1e-9)
    assert metrics["accuracy"] == pytest.approx(np.mean([h == j for h, j in pairs]))
    assert metrics["selected_rate"] == pytest.approx(np.mean(selected))
    assert metrics["human_rate"] == pytest.approx(np.mean(human))
    assert metrics["invalid_rate"] == pytest.approx(np.mean([j is None for j in judge]))


@settings(max_examples=200, deadline=None)
@given(label_pairs)
def test_categorical_metrics_match_scikit_learn(pairs: list[tuple[str, str | None]]) -> None:
    human = [h for h, _ in pairs]
    judge = [j for _, j in pairs]
    metrics = label_metrics(PAIRWISE, human, judge)
    expected = cohen_kappa_score(sk(human), sk(judge))
    assert metrics["kappa"] == pytest.approx(1.0 if math.isnan(expected) else expected, abs=1e-9)
    assert metrics["agreement"] == pytest.approx(np.mean([h == j for h, j in pairs]))
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected_balanced = balanced_accuracy_score(sk(human), sk(judge))
    assert metrics["balanced_accuracy"] == pytest.approx(expected_balanced, abs=1e-9)


@settings(max_examples=150, deadline=None)
@given(rating_pairs)
def test_ordinal_metrics_match_scikit_learn_and_scipy(pairs: list[tuple[int, int]]) -> None:
    human = [h for h, _ in pairs]
    judge = [j for _, j in pairs]
    metrics = label_metrics(RATING, human, judge)
    expected = cohen_kappa_score(human, judge, weights="quadratic", labels=[1, 2, 3, 4, 5])
    assert metrics["weighted_kappa"] == pytest.approx(1.0 if math.isnan(expected) else expected, abs=1e-9)
    assert metrics["mean_difference"] == pytest.approx(np.mean(judge) - np.mean(human))
    if np.ptp(human) and np.ptp(judge):
        assert metrics["spearman"] == pytest.approx(spearmanr(human, judge).statistic, abs=1e-9)
        assert metrics["kendall"] == pytest.approx(kendalltau(human, judge).statistic, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(label_pairs, st.randoms(use_true_random=False))
def test_kappa_and_alpha_are_symmetric_and_ignore_row_order(pairs: list, rng) -> None:
    human = [h for h, _ in pairs]
    judge = [j if j is not None else "tie" for _, j in pairs]
    forward = label_metrics(PAIRWISE, human, judge)
    backward = label_metrics(PAIRWISE, judge, human)
    assert forward["kappa"] == pytest.approx(backward["kappa"], abs=1e-9)
    assert forward["alpha"] == pytest.approx(backward["alpha"], abs=1e-9, nan_ok=True)
    order = list(range(len(pairs)))
    rng.shuffle(order)
    shuffled = label_metrics(PAIRWISE, [human[i] for i in order], [judge[i] for i in order])
    for name in ("kappa", "alpha", "agreement", "mcc"):
        assert shuffled[name] == pytest.approx(forward[name], abs=1e-9, nan_ok=True)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["A", "B", "tie", None]), min_size=3, max_size=3), min_size=3, max_size=60))
def test_alpha_equals_the_krippendorff_package_with_missing_ratings(units: list[list]) -> None:
    coders = [[unit[c] for unit in units] for c in range(3)]
    codes = {"A": 0.0, "B": 1.0, "tie": 2.0}
    data = np.array([[np.nan if v is None else codes[v] for v in coder] for coder in coders])
    pairable = (~np.isnan(data)).sum(axis=0) >= 2
    values = data[:, pairable]
    assume(values.size and len(np.unique(values[~np.isnan(values)])) >= 2)
    expected = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
    assert krippendorff_alpha(coders, PAIRWISE) == pytest.approx(expected, abs=1e-9)


def test_perfect_agreement_gives_one_everywhere() -> None:
    assert binary_metrics([True, False, False], [True, False, False])["kappa"] == 1.0
    assert binary_metrics([True, False, False], [True, False, False])["alpha"] == 1.0
    assert label_metrics(PAIRWISE, ["A", "B", "tie"], ["A", "B", "tie"])["kappa"] == 1.0
    assert label_metrics(RATING, [1, 3, 5], [1, 3, 5])["weighted_kappa"] == 1.0


def test_confusion_metrics_vectorise_over_resamples() -> None:
    rng = np.random.default_rng(0)
    matrices = rng.integers(0, 20, size=(7, 3, 3)).astype(float)
    matrices[:, 2, :] = 0  # humans never give "no verdict"
    space = LabelSpace(labels=(True, False), positive=True)
    stacked = metrics_from_confusion(matrices, space)
    for i in range(7):
        single = metrics_from_confusion(matrices[i], space)
        for name, values in stacked.items():
            assert values[i] == pytest.approx(float(single[name]), nan_ok=True)


def test_always_majority_judge_has_zero_kappa_despite_high_accuracy() -> None:
    human = [True] * 17 + [False] * 83
    metrics = binary_metrics(human, [False] * 100)
    assert metrics["accuracy"] == pytest.approx(0.83)
    assert metrics["kappa"] == 0.0
    assert metrics["balanced_accuracy"] == pytest.approx(0.5)
    assert metrics["f1"] == 0.0


def test_over_selection_is_visible_as_selected_ratio() -> None:
    metrics = binary_metrics([True, False, False, False, False], [True, True, True, False, False])
    assert metrics["human_rate"] == pytest.approx(0.2)
    assert metrics["selected_rate"] == pytest.approx(0.6)
    assert metrics["selected_ratio"] == pytest.approx(3.0)


def test_invalid_verdicts_count_as_wrong_and_are_reported() -> None:
    metrics = binary_metrics([True, False, True, False], [True, None, None, False])
    assert metrics["invalid_rate"] == 0.5
    assert metrics["accuracy"] == 0.5
    assert metrics["selected_rate"] == 0.25


def test_kappa_is_one_when_both_raters_use_one_category() -> None:
    cm = confusion(np.array([0, 0]), np.array([0, 0]), 3)
    assert kappa_from_confusion(cm) == 1.0


def test_confidence_metrics() -> None:
    human = [True, True, False, False]
    probability = [0.9, 0.6, 0.4, 0.1]
    metrics = confidence_metrics(BINARY_SPACE, human, probability)
    assert metrics["roc_auc"] == 1.0
    assert metrics["brier"] == pytest.approx(np.mean([0.01, 0.16, 0.16, 0.01]))
    # all decisions right; confidences 0.9, 0.6, 0.6, 0.9 -> |1 - 0.6| and |1 - 0.9| by bin
    assert metrics["ece"] == pytest.approx((2 * 0.4 + 2 * 0.1) / 4)


def test_expected_calibration_error_of_a_calibrated_judge_is_small() -> None:
    rng = np.random.default_rng(1)
    confidence = rng.uniform(0.5, 1.0, 20000)
    correct = rng.uniform(size=confidence.size) < confidence
    assert expected_calibration_error(confidence, correct) < 0.02
    assert expected_calibration_error(confidence, np.ones_like(correct)) > 0.2


def test_order_consistency_reads_swapped_verdicts_in_swapped_terms() -> None:
    original = ["A", "B", "tie", "A", None]
    swapped = ["B", "A", "tie", "A", "A"]  # last two: position-biased, and invalid
    assert order_consistency(original, swapped) == pytest.approx(3 / 5)
    assert first_position_rate(["A", "A", "B", "tie"]) == 0.5


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="2 human labels but 1 verdicts"):
        binary_metrics([True, False], [True])


def test_unknown_label_is_refused() -> None:
    with pytest.raises(ValueError, match="'C' is not one of the labels"):
        categorical_metrics(["A", "C"], ["A", "B"], labels=["A", "B", "tie"])


# -- α and ECE keep the promise of the other metrics ------------------------------------


def test_alpha_counts_an_invalid_verdict_as_disagreement() -> None:
    human = [True, False, True, False, True, False]
    judge = [True, False, None, False, True, False]
    metrics = binary_metrics(human, judge)
    # The invalid verdict is its own category, as in the confusion matrix of every other metric.
    codes = {True: 0.0, False: 1.0, None: 2.0}
    expected = krippendorff.alpha(
        reliability_data=[[codes[h] for h in human], [codes[j] for j in judge]], level_of_measurement="nominal"
    )
    assert metrics["alpha"] == pytest.approx(expected, abs=1e-9)
    assert metrics["alpha"] < 1.0 and metrics["kappa"] < 1.0
    assert binary_metrics(human, human)["alpha"] == 1.0


def test_ordinal_alpha_counts_an_invalid_verdict_as_the_widest_disagreement() -> None:
    human = [1, 3, 5, 3, 2, 4]
    perfect = label_metrics(RATING, human, human)["alpha"]
    failed = label_metrics(RATING, human, [1, 3, 5, 3, 2, None])["alpha"]
    farthest = label_metrics(RATING, human, [1, 3, 5, 3, 2, 1])["alpha"]
    assert perfect == 1.0
    assert math.isfinite(failed) and failed < 1.0
    assert failed <= farthest + 1e-9


def test_alpha_is_undefined_not_one_when_only_one_value_occurs() -> None:
    # Nobody ever disagrees because only one answer was ever given: α = 1 − Do/De has De = 0.
    assert math.isnan(binary_metrics([True, True, True], [True, True, True])["alpha"])
    assert math.isnan(krippendorff_alpha([["A", "A", None], ["A", None, "A"]], PAIRWISE))
    assert binary_metrics([True, True, True], [True, True, True])["kappa"] == 1.0  # κ keeps its convention


def test_ece_is_computed_at_the_judges_own_decision_cut() -> None:
    """A judge thresholded at 0.25 decides 'relevant' for P = 0.39; its confidence in that
    decision is 0.39, not the 0.61 of the 'not relevant' a 0.5 cut would have given."""
    human = [True, True, False, False]
    probability = [0.69, 0.39, 0.14, 0.72]
    at_cut = confidence_metrics(BINARY_SPACE, human, probability, threshold=0.25)
    decided = np.array(probability) >= 0.25
    confidence = np.where(decided, probability, 1 - np.array(probability))
    expected = expected_calibration_error(confidence, decided == np.array(human))
    assert at_cut["ece"] == pytest.approx(expected)
    assert at_cut["ece"] != pytest.approx(confidence_metrics(BINARY_SPACE, human, probability)["ece"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 20)), min_size=2, max_size=120))
def test_roc_auc_and_brier_match_scikit_learn(rows: list[tuple[bool, int]]) -> None:
    from sklearn.metrics import brier_score_loss, roc_auc_score

    human = [h for h, _ in rows]
    probability = [p / 20 for _, p in rows]
    metrics = confidence_metrics(BINARY_SPACE, human, probability)
    assert metrics["brier"] == pytest.approx(brier_score_loss(human, probability))
    if len(set(human)) == 2:
        assert metrics["roc_auc"] == pytest.approx(roc_auc_score(human, probability))
    else:
        assert math.isnan(metrics["roc_auc"])

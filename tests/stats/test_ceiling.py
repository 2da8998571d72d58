"""Human-human agreement: leave-one-out majorities and Fleiss' κ."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.inter_rater import aggregate_raters
from statsmodels.stats.inter_rater import fleiss_kappa as statsmodels_fleiss

from judgecal.stats.ceiling import human_ceiling, human_soft_agreement, leave_one_out_pairs, majority, soft_agreement
from judgecal.stats.metrics import LabelSpace

PAIRWISE = LabelSpace(labels=("A", "B", "tie"))


def test_majority_needs_a_strict_winner() -> None:
    assert majority(["A", "A", "B"]) == "A"
    assert majority(["A", "B"]) is None
    assert majority([]) is None


def test_each_annotator_is_compared_with_the_majority_of_the_others() -> None:
    mine, rest, rows = leave_one_out_pairs([["A", "A", "B"], ["A", "B", "tie"], None])
    # row 0: A vs (A,B) no majority; A vs (A,B) none; B vs (A,A) -> A. Row 1: all split.
    assert (mine, rest, rows) == (["B"], ["A"], [0])


def test_soft_agreement_counts_agreeing_annotators() -> None:
    annotations = [["A", "A", "B"], ["B", "B", "B"]]
    assert soft_agreement(["A", "B"], annotations) == pytest.approx((2 / 3 + 1) / 2)
    assert human_soft_agreement(annotations) == pytest.approx((0.5 + 0.5 + 0 + 1 + 1 + 1) / 6)


def test_perfectly_agreeing_annotators_reach_one() -> None:
    annotations = [["A"] * 3, ["B"] * 3, ["tie"] * 3, ["A"] * 3]
    ceiling = human_ceiling(PAIRWISE, annotations, ["g1", "g1", "g2", "g3"], n_resamples=200)
    assert ceiling is not None
    assert ceiling.alpha.value == 1.0
    assert ceiling.annotator_vs_rest_kappa.value == 1.0
    assert ceiling.fleiss_kappa == pytest.approx(1.0)


def test_fleiss_kappa_is_statsmodels_on_the_rows_with_three_annotators() -> None:
    rng = np.random.default_rng(3)
    annotations = [list(rng.choice(["A", "B", "tie"], size=3, p=[0.5, 0.4, 0.1])) for _ in range(80)]
    groups = [f"g{i % 9}" for i in range(80)]
    ceiling = human_ceiling(PAIRWISE, annotations, groups, n_resamples=200)
    table, _ = aggregate_raters(np.array(annotations))
    assert ceiling is not None
    assert ceiling.fleiss_kappa == pytest.approx(statsmodels_fleiss(table), abs=1e-9)


def test_no_ceiling_without_several_annotators() -> None:
    assert human_ceiling(PAIRWISE, [None, ["A"], None], ["g", "g", "h"]) is None

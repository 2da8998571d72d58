"""Choosing a selective judge's band: the NaN-safe family test, the per-verdict families,
pairwise A and B sharing a threshold, the design effect, a band not found saying why, and
the fixed sequence's order."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from judgecal.stats.ltt import effective_rows, fewest_rows, sequence, valid_binary_thresholds
from judgecal.stats.selective import (
    Guarantee,
    binary_answers,
    candidate_thresholds,
    choose_binary_band,
    choose_label_band,
    label_answers,
)

TARGETS = {"true": 0.70, "false": 0.95}
KEYS = ("true", "false")


def scores(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A judge's P(yes): positives (30%) from Beta(4, 2), negatives from Beta(1.5, 4)."""
    y = rng.uniform(size=n) < 0.3
    return np.where(y, rng.beta(4.0, 2.0, size=n), rng.beta(1.5, 4.0, size=n)), y


def independent_groups(n: int) -> list[str]:
    return [str(i) for i in range(n)]


def test_a_candidate_where_a_verdict_is_never_given_does_not_stop_the_test() -> None:
    """MAPIE gives such a candidate a NaN p-value; plain Holm then picks it first and
    rejects nothing, so the same candidates find no threshold at all."""
    from mapie.risk_control import BinaryClassificationController

    rng = np.random.default_rng(0)
    p, y = scores(rng, 1000)
    candidates = np.array([*candidate_thresholds(scores(rng, 300)[0]), 1.5])  # 1.5: "yes" never given
    plain = BinaryClassificationController(
        predict_function=lambda x: np.column_stack([1 - x, x]),
        risk="precision",
        target_level=0.70,
        confidence_level=0.95,
        best_predict_param_choice="recall",
        list_predict_params=candidates,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain.calibrate(p, y.astype(int))
    assert len(plain.valid_predict_params) == 0
    found = valid_binary_thresholds(p, y.astype(int), None, candidates, 1, 0.70, 0.05).valid
    assert len(found) >= 3 and 1.5 not in found


def test_each_verdict_is_its_own_family_and_the_widest_band_is_taken() -> None:
    rng = np.random.default_rng(1)
    p, y = scores(rng, 1000)
    candidates = candidate_thresholds(scores(rng, 300)[0])
    choice = choose_binary_band(
        p, y, independent_groups(len(p)), keys=KEYS, targets=TARGETS, delta=0.1, groups_mode="independent",
        candidates=candidates,
    )  # fmt: skip
    assert choice.found and choice.band is not None
    yes, no = choice.band.answers
    assert (yes.verdict, yes.when, no.verdict, no.when) == ("true", ">=", "false", "<")
    assert no.threshold <= yes.threshold
    assert yes.threshold == min(choice.candidates.valid["true"])
    assert no.threshold == max(choice.candidates.valid["false"])
    rows = choice.calibration_rows
    answers = binary_answers(p, no.threshold, yes.threshold)
    assert rows.coverage == pytest.approx(np.mean(~np.isnan(answers)))
    assert rows.precision["true"] >= 0.70 and rows.precision["false"] >= 0.95
    assert rows.answered["true"] == int(np.sum(answers == 1))
    assert "With probability at least 90% over the draw of the 1000 calibration rows" in choice.guarantee.statement
    assert f"It abstains when {no.threshold:.2f} ≤ P(true) < {yes.threshold:.2f}" in choice.guarantee.statement


def test_no_band_says_which_verdict_fell_short_and_allow_never_drops_it() -> None:
    rng = np.random.default_rng(2)
    p, y = scores(rng, 600)
    candidates = candidate_thresholds(scores(rng, 300)[0])
    settings = {"keys": KEYS, "targets": {"true": 0.995, "false": 0.95}, "delta": 0.1, "candidates": candidates}
    choice = choose_binary_band(p, y, independent_groups(len(p)), groups_mode="independent", **settings)
    assert not choice.found and choice.band is None
    [short] = choice.shortfalls
    assert short.verdict == "true" and short.target == 0.995 and short.precision is not None
    assert short.closest_threshold in candidates and short.p_value > 0.05 / len(candidates)
    statement = choice.guarantee.statement
    assert statement.startswith("No band met the targets on the 600 calibration rows")
    assert "for 'true'" in statement and "With allow_never = true it would never say 'true'" in statement
    never = choose_binary_band(
        p, y, independent_groups(len(p)), groups_mode="independent", allow_never=True, **settings
    )
    assert never.found and never.band is not None
    assert never.band.answers[0].threshold is None  # never says "true"
    assert "It never says 'true'" in never.guarantee.statement
    assert np.nanmax(binary_answers(p, never.band.answers[1].threshold, None)) == 0


def test_pairwise_a_and_b_share_one_threshold_and_swapping_them_changes_nothing() -> None:
    rng = np.random.default_rng(3)
    n = 1500
    y = rng.choice(3, size=n, p=[0.4, 0.4, 0.2])
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += np.array([2.0, 2.0, 1.0])[y]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    candidates = candidate_thresholds(proba[:300].max(axis=1))
    settings = {
        "keys": ["A", "B", "tie"],
        "targets": {"A": 0.9, "B": 0.9, "tie": 0.6},
        "delta": 0.1,
        "families": [[0, 1], [2]],
        "groups_mode": "independent",
        "candidates": candidates,
    }
    choice = choose_label_band(proba, y, independent_groups(n), **settings)
    assert choice.found and choice.band is not None
    a, b, tie = (answer.threshold for answer in choice.band.answers)
    assert a == b and tie is not None
    assert choice.candidates.valid["A"] == choice.candidates.valid["B"]
    swapped = choose_label_band(proba[:, [1, 0, 2]], np.array([1, 0, 2])[y], independent_groups(n), **settings)
    assert [answer.threshold for answer in swapped.band.answers] == [a, b, tie]
    answers = label_answers(proba, [a, b, tie])
    assert choice.calibration_rows.coverage == pytest.approx(np.mean(~np.isnan(answers)))
    assert "(A or B: " in choice.guarantee.statement
    # Tested by a fixed sequence: from the highest candidate down, each family's valid ones a run.
    sequenced = choose_label_band(proba, y, independent_groups(n), procedure="fixed-sequence", **settings)
    assert sequenced.found and sequenced.guarantee.procedure == "fixed-sequence"
    grid = candidates.tolist()
    for key in ("A", "tie"):
        at = [grid.index(t) for t in sequenced.candidates.valid[key]]
        assert at and at == list(range(at[0], at[-1] + 1))
    assert sequenced.candidates.valid["A"] == sequenced.candidates.valid["B"]


def test_the_design_effect_counts_a_group_that_agrees_within_itself_as_fewer_rows() -> None:
    rng = np.random.default_rng(4)
    n = 1000
    selected = rng.uniform(size=n) < 0.5
    # Every row its own group: worth about as many rows as it has.
    correct = rng.uniform(size=n) < 0.8
    alone = effective_rows(selected, correct, np.arange(n))
    assert selected.sum() - 3 <= alone <= selected.sum()
    # Ten groups, right or wrong together: worth far fewer.
    codes = np.repeat(np.arange(10), n // 10)
    together = np.repeat(rng.uniform(size=10) < 0.8, n // 10)
    assert effective_rows(selected, together, codes) < selected.sum() / 20
    assert effective_rows(np.zeros(n, bool), correct, codes) == -1  # no rows: not controlled


def test_rows_of_few_groups_get_a_narrower_band_than_independent_rows() -> None:
    rng = np.random.default_rng(5)
    p = rng.uniform(0.01, 0.99, size=2000)
    shift = np.repeat(rng.normal(scale=1.5, size=10), 200)  # each group's own lean
    y = rng.uniform(size=len(p)) < 1 / (1 + np.exp(-(np.log(p / (1 - p)) + shift)))
    candidates = candidate_thresholds(rng.uniform(0.01, 0.99, size=300))
    groups = [f"g{i // 200}" for i in range(len(p))]
    settings = {"keys": KEYS, "targets": {"true": 0.7, "false": 0.7}, "delta": 0.1, "candidates": candidates}
    independent = choose_binary_band(p, y, groups, groups_mode="independent", **settings)
    design = choose_binary_band(p, y, groups, groups_mode="design_effect", **settings)
    assert design.found and design.guarantee.groups == "design_effect"
    assert "approximately, for rows of new prompts" in design.guarantee.statement
    assert design.calibration_rows.coverage < independent.calibration_rows.coverage
    for verdict in KEYS:
        assert set(design.candidates.valid[verdict]) < set(independent.candidates.valid[verdict])


def test_candidates_are_quantiles_of_other_rows_or_a_fixed_grid() -> None:
    grid = candidate_thresholds(np.linspace(0, 1, 101))
    assert grid[0] == pytest.approx(0.01) and grid[-1] == pytest.approx(0.99) and len(grid) == 23
    assert np.array_equal(candidate_thresholds(None), candidate_thresholds([]))
    assert len(candidate_thresholds(None)) == 19


def test_a_band_on_out_of_fold_scores_says_where_its_rows_came_from_and_that_it_is_approximate() -> None:
    rng = np.random.default_rng(1)
    p, y = scores(rng, 1000)
    settings = {
        "keys": KEYS,
        "targets": TARGETS,
        "delta": 0.1,
        "groups_mode": "independent",
        "candidates": candidate_thresholds(p),
    }
    split = choose_binary_band(p, y, independent_groups(len(p)), **settings)
    crossed = choose_binary_band(p, y, independent_groups(len(p)), **settings, folds=5)
    assert split.band == crossed.band  # the same test on the same scores
    assert (split.calibration_rows.source, split.calibration_rows.folds) == ("split:calibration", None)
    assert (crossed.calibration_rows.source, crossed.calibration_rows.folds) == ("cross-fit", 5)
    statement = crossed.guarantee.statement
    assert "over the draw of the 1000 out-of-fold rows (1000 groups)" in statement
    assert "for rows drawn like the out-of-fold rows" in statement
    assert "fitted on the other 4 of 5 grouped folds" in statement and "approximate whatever the groups" in statement
    assert statement.endswith("of out-of-fold rows.") and "Cross-fitted" not in split.guarantee.statement


def test_a_fixed_sequence_starts_at_the_surest_candidate_given_on_enough_rows_and_records_itself() -> None:
    """Three rows beyond the top candidate: too few for "yes" to pass there whatever their
    labels (nine are needed at 0.70 and level 0.05), so the sequence starts below it instead
    of stopping on it at once. The guarantee names the test it was chosen by."""
    rng = np.random.default_rng(3)
    p, y = scores(rng, 1000)
    p[:3], y[:3] = 0.9995, True
    candidates = np.array([*candidate_thresholds(scores(rng, 300)[0]), 0.999])
    settings = {"keys": KEYS, "targets": TARGETS, "delta": 0.1, "groups_mode": "independent", "candidates": candidates}
    choice = choose_binary_band(p, y, independent_groups(len(p)), procedure="fixed-sequence", **settings)
    assert choice.found and choice.candidates.valid["true"] and 0.999 not in choice.candidates.valid["true"]
    # From the surest candidate down and from the lowest up: each verdict's valid thresholds are one run.
    valid, grid = choice.candidates.valid, candidates.tolist()
    for key in KEYS:
        at = [grid.index(t) for t in valid[key]]
        assert at == list(range(at[0], at[-1] + 1))
    guarantee = choice.guarantee
    assert (guarantee.procedure, guarantee.starts) == ("fixed-sequence", 1)
    assert "a fixed sequence within each verdict's family (most confident candidate first, 1 start)" in guarantee.method
    holm = choose_binary_band(p, y, independent_groups(len(p)), **settings).guarantee
    assert (holm.procedure, holm.starts) == ("holm", None) and "Holm within each verdict's family" in holm.method
    assert "starts" not in holm.model_dump()
    # A band saved before the test was recorded was chosen by Holm, and is rebuilt as it was saved.
    saved = holm.model_dump(exclude={"procedure"})
    assert Guarantee.model_validate(saved).model_dump() == saved and Guarantee.model_validate(saved).procedure is None


def test_a_fixed_sequence_leaves_out_candidates_the_verdict_is_given_on_too_few_rows_for() -> None:
    assert fewest_rows(0.70, 0.05) == 9 and fewest_rows(0.95, 0.05) == 59
    given = np.array([400, 300, 200, 100, 50, 8, 0])  # "yes" rows beyond each of seven rising thresholds
    assert sequence(given, 9, descending=True).tolist() == [4, 3, 2, 1, 0]
    assert sequence(given[::-1], 59, descending=False).tolist() == [3, 4, 5, 6]

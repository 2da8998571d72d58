"""Rows to label chosen with known inclusion probabilities: the probabilities spend the
budget and leave every row a chance, and the estimate from the rows drawn is unbiased,
its 95% interval covering the true rate at its level over many draws."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.special import expit, logit

from judgecal.data.judged import JudgedRow
from judgecal.stats.active import choose_rows_to_label, draw, inclusion_probabilities
from judgecal.stats.estimate import active_rate


def population(seed: int = 0, *, calibrated: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """5,000 judged rows in 100 prompts of 50; people say yes on about 22%. The judge's
    P(yes) is informative but noisy; ``calibrated=False`` adds one on the logit, so the
    judge over-selects (mean P about 0.36)."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(100), 50).astype(str)
    prompt_effect = np.repeat(rng.normal(scale=0.8, size=100), 50)
    eta = expit(-2.0 + 1.8 * rng.normal(size=5000) + prompt_effect)
    y = (rng.uniform(size=eta.size) < eta).astype(float)
    f = expit(logit(eta) + (0.0 if calibrated else 1.0) + rng.normal(scale=0.7, size=eta.size))
    return f, y, groups


def strata_of(f: np.ndarray, groups: np.ndarray) -> list[str]:
    """The stratified strategy's strata as choose_rows_to_label forms them: verdict in group."""
    return [f"{g}\x1f{p >= 0.5}" for g, p in zip(groups, f, strict=True)]


def coverage(f, y, pi, *, draws: int, by_group: np.ndarray | None = None, weight: float | None = None, seed: int = 4):
    """Share of draws whose interval covers the true rate, the estimates, and the mean width."""
    covered, estimates, widths = coverages(f, y, pi, draws=draws, by_group=by_group, weights=(weight,), seed=seed)
    return covered[0], estimates[0], widths[0]


def coverages(f, y, pi, *, draws: int, weights: tuple, by_group: np.ndarray | None = None, seed: int = 4):
    """``coverage`` for each λ in ``weights`` (None: tuned) on the same draws."""
    theta = y.mean()
    estimates = np.zeros((len(weights), draws))
    covered = np.zeros((len(weights), draws), dtype=bool)
    widths = np.zeros((len(weights), draws))
    for i in range(draws):
        xi = draw(pi, seed * 100_000 + i, by_group)
        units = by_group[xi] if by_group is not None else None
        for k, weight in enumerate(weights):
            interval, _ = active_rate(f, f[xi], y[xi], pi[xi], units=units, weight=weight)
            estimates[k, i] = interval.estimate
            covered[k, i] = interval.low <= theta <= interval.high
            widths[k, i] = interval.width
    return covered.mean(axis=1), estimates, widths.mean(axis=1)


@pytest.mark.parametrize("strategy", ["uncertainty", "stratified", "uniform"])
@pytest.mark.parametrize("calibrated", [False, True], ids=["over-selecting", "calibrated"])
def test_the_active_estimate_is_unbiased_and_covers_at_its_level(strategy: str, calibrated: bool) -> None:
    """2,000 draws of 300 labels in expectation, λ tuned as `judgecal estimate --design`
    does, and λ = 1 on the same draws: a 95% interval's coverage over 2,000 draws falls
    within 0.93-0.97 (±4 standard errors) unless it is wrong, and the mean estimate within
    4 standard errors of the truth."""
    f, y, groups = population(3, calibrated=calibrated)
    pi = inclusion_probabilities(f, 300, strategy, strata=strata_of(f, groups))  # type: ignore[arg-type]
    start = time.process_time()
    covered, estimates, widths = coverages(f, y, pi, draws=2000, weights=(None, 1.0))
    seconds = time.process_time() - start
    for k, name in enumerate(("λ tuned", "λ = 1")):
        bias = estimates[k].mean() - y.mean()
        spread = estimates[k].std() / np.sqrt(estimates.shape[1])
        print(
            f"\n{strategy}, {'calibrated' if calibrated else 'over-selecting'} judge, {name}: coverage "
            f"{covered[k]:.3f}, mean width {widths[k]:.4f}, bias {bias:+.4f} ({abs(bias) / spread:.1f} s.e.)",
            end="",
        )
        assert abs(bias) < 4 * spread
        assert 0.93 <= covered[k] <= 0.97
    print(f" [{seconds:.1f} s CPU]")


@pytest.mark.parametrize("calibrated", [False, True], ids=["over-selecting", "calibrated"])
def test_drawing_whole_prompts_covers_but_is_wider_than_drawing_rows(calibrated: bool) -> None:
    """Whole prompts drawn (one π per prompt; λ = 1 and Student's t on the prompts drawn,
    as `judgecal estimate --design` does for them): about 6 prompts carry the estimate,
    so its interval is far wider than rows drawn one by one. 300 draws each."""
    f, y, groups = population(3, calibrated=calibrated)
    rows_pi = inclusion_probabilities(f, 300, "uncertainty")
    group_pi = inclusion_probabilities(f, 300, "uncertainty", groups=groups, by="group")
    by_rows, _, row_width = coverage(f, y, rows_pi, draws=300)
    by_prompts, _, prompt_width = coverage(f, y, group_pi, draws=300, by_group=groups, weight=1.0)
    prompts_drawn = np.mean([len(set(groups[draw(group_pi, i, groups)])) for i in range(300)])
    print(
        f"\nuncertainty, {'calibrated' if calibrated else 'over-selecting'} judge, 300 draws: rows coverage "
        f"{by_rows:.3f} width {row_width:.4f}; whole prompts ({prompts_drawn:.1f} drawn) coverage {by_prompts:.3f} "
        f"width {prompt_width:.4f} ({prompt_width / row_width:.1f}x)"
    )
    assert by_prompts >= 0.93
    assert prompt_width > 1.4 * row_width


def test_the_probabilities_spend_the_budget_for_every_strategy() -> None:
    f, _, groups = population(1)
    for strategy in ("uncertainty", "stratified", "uniform"):
        for by in ("row", "group"):
            pi = inclusion_probabilities(f, 250, strategy, strata=strata_of(f, groups), groups=groups, by=by)
            assert abs(pi.sum() - 250) < 1e-6, (strategy, by)
            assert pi.min() >= 1e-3 and pi.max() <= 1


def test_clipping_at_one_hands_the_budget_back_to_the_other_rows() -> None:
    """Half the rows are as uncertain as can be: their share of 800 labels over 1,000 rows
    would exceed 1. Clipped at 1, what they cannot take goes to the others."""
    f = np.concatenate([np.full(500, 0.5), np.full(500, 0.02)])
    total_weight = 500 * 0.5 + 500 * np.sqrt(0.02 * 0.98)
    unclipped = 0.8 * 0.5 * 800 / total_weight + 0.2 * 800 / 1000
    assert unclipped > 1  # the case this test is about
    pi = inclusion_probabilities(f, 800, "uncertainty")
    assert np.all(pi[:500] == 1)
    assert abs(pi.sum() - 800) < 1e-6
    rest = 0.8 * np.sqrt(0.02 * 0.98) * 800 / total_weight + 0.2 * 800 / 1000
    assert np.all(pi[500:] > rest + 0.1)  # the budget came back: 300 labels over the other 500 rows


def test_with_mix_every_row_keeps_a_chance() -> None:
    """A row the judge is sure of (P 0 or 1) has no uncertainty: without the uniform mix it
    keeps only the floor, with it at least mix x budget / N."""
    f = np.concatenate([np.zeros(300), np.ones(300), np.linspace(0.05, 0.95, 400)])
    mixed = inclusion_probabilities(f, 100, "uncertainty", mix=0.2)
    assert mixed[:600].min() >= 0.2 * 100 / 1000 - 1e-12
    pure = inclusion_probabilities(f, 100, "uncertainty", mix=0.0)
    assert pure[:600].max() == pytest.approx(1e-3)
    assert abs(pure.sum() - 100) < 1e-6


def test_stratified_gives_one_probability_per_verdict_and_group() -> None:
    f, _, groups = population(2)
    strata = strata_of(f, groups)
    pi = inclusion_probabilities(f, 300, "stratified", strata=strata)
    by_stratum: dict[str, set[float]] = {}
    for stratum, p in zip(strata, pi, strict=True):
        by_stratum.setdefault(stratum, set()).add(round(float(p), 12))
    assert all(len(values) == 1 for values in by_stratum.values())
    assert len({next(iter(values)) for values in by_stratum.values()}) > 10


def test_a_budget_above_the_rows_labels_every_row() -> None:
    assert np.all(inclusion_probabilities(np.full(10, 0.3), 25, "uncertainty") == 1)


def judged_rows(f: np.ndarray, groups: np.ndarray) -> list[JudgedRow]:
    return [
        JudgedRow(id=f"r{i}", verdict=bool(p >= 0.5), probability=float(p), group=str(g), line=i + 1)
        for i, (p, g) in enumerate(zip(f, groups, strict=True))
    ]


def test_choose_rows_to_label_records_the_probability_of_every_drawn_row() -> None:
    f, _, groups = population(5)
    judged = judged_rows(f, groups)
    labelled = {f"r{i}" for i in range(0, 5000, 7)}
    design = choose_rows_to_label(judged, 200, "stratified", seed=9, labelled=labelled | {"not-judged"})
    candidates = [i for i in range(5000) if f"r{i}" not in labelled]
    pi = inclusion_probabilities(f[candidates], 200, "stratified", strata=strata_of(f[candidates], groups[candidates]))
    expected = {f"r{i}": p for i, p in zip(candidates, pi, strict=True)}
    assert design.drawn and all(row.inclusion_probability == pytest.approx(expected[row.id]) for row in design.drawn)
    assert not labelled & {row.id for row in design.drawn}
    assert design.labelled_before == sorted(labelled)  # rows judged here only: 'not-judged' is not one
    assert abs(design.expected_labels - 200) < 1e-6 and abs(sum(design.expected_by_group.values()) - 200) < 1e-3
    again = choose_rows_to_label(judged, 200, "stratified", seed=9, labelled=labelled)
    assert [row.id for row in again.drawn] == [row.id for row in design.drawn]  # the seed fixes the draw


def test_rows_labelled_before_enter_the_estimate_with_certainty() -> None:
    """Already-labelled rows (π = 1) add their labels exactly and no variance: with every
    row labelled, the estimate is the true rate and the interval has no width."""
    f, y, _ = population(6)
    interval, _ = active_rate(f, f, y, np.ones_like(f))
    assert interval.estimate == pytest.approx(y.mean()) and interval.width == pytest.approx(0)


def test_uniform_counts_the_rows_from_their_groups_when_there_are_no_probabilities() -> None:
    pi = inclusion_probabilities(None, 5, "uniform", groups=["a"] * 10 + ["b"] * 10)
    assert len(pi) == 20 and np.allclose(pi, 0.25)
    with pytest.raises(ValueError, match="the rows are counted from them"):
        inclusion_probabilities(None, 5, "uniform")
    with pytest.raises(ValueError, match="the uncertainty strategy needs the judge's probability"):
        inclusion_probabilities(None, 5, "uncertainty", groups=["a"] * 10)

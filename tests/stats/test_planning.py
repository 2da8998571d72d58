"""Sizes by simulation, held to the closed forms for independent rows (one row per
group): Cantor (1996) and Donner and Eliasziw (1992), each held in turn to published worked
examples; and rows of one group counted as what they are, not as independent rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from judgecal.stats.metrics import kappa_from_confusion
from judgecal.stats.planning import (
    GroupTypes,
    Simulation,
    SizePoint,
    cantor_rows_for_test,
    donner_eliasziw_rows,
    fit_power,
    fit_width,
    kappa_cells,
    kappa_gain,
    kappa_of,
    kappa_variance,
    pilot_allowance,
    plan_power,
    plan_width,
    rows_for_width,
    smallest_size,
)


def independent(kappa: float, prevalence: float) -> GroupTypes:
    return GroupTypes.from_rates(kappa=kappa, prevalence=prevalence, judge_rate=None, rows_per_group=1, icc=0.0)


def test_cantor_reproduces_the_irr_package_example() -> None:
    """irr's N.cohen.kappa (an implementation of Cantor 1996) documents 96 rows for
    κ = 0.7 against a hypothesised 0.85, both raters at 50% positive, one-sided α 0.05,
    power 0.8. No table of the paper itself was at hand to check against."""
    assert math.ceil(cantor_rows_for_test(0.85, 0.7, 0.5, 0.5)) == 96


def test_rows_for_a_width_reproduce_the_published_sskdlg_examples() -> None:
    """Reichenheim (2000), "sxd3: Sample size for the kappa-statistic of interrater
    agreement", Stata Technical Bulletin 58, 41-45: sskdlg sizes a 95% interval of κ of
    half-width d with Cantor's (1996) Q, and its printed examples (p. 44) give, both raters
    at the same positive rate p: κ 0, p 0.1, d 0.1 → 384 subjects; κ 0.1, p 0.2, d 0.2 →
    114 subjects and Q = 1.182; the largest size over κ for that p and d, 126 at κ .289.
    It rounds to the nearest subject (384.15 → 384) and Q to three places. Its last
    example, d = .215 for 50 subjects, does not follow from its own Q (1.96 √(1.182 / 50) =
    0.301) and is left out."""
    from scipy.optimize import minimize_scalar

    assert round(rows_for_width(0.0, 0.1, 0.1, 0.1)) == 384
    assert round(rows_for_width(0.1, 0.2, 0.2, 0.2)) == 114
    assert round(kappa_variance(kappa_cells(0.1, 0.2, 0.2)), 3) == 1.182
    widest = minimize_scalar(
        lambda kappa: -kappa_variance(kappa_cells(kappa, 0.2, 0.2)), bounds=(0.0, 0.99), method="bounded"
    )
    assert round(widest.x, 3) == 0.289
    assert round(rows_for_width(widest.x, 0.2, 0.2, 0.2)) == 126


def test_kappa_variance_is_the_variance_of_kappa_over_independent_samples() -> None:
    """Q (Fleiss, Cohen and Everitt 1969) against the variance of κ̂ over 4,000 samples of
    2,000 independent rows, with unequal rates so every term of the formula counts."""
    cells = kappa_cells(0.5, 0.3, 0.4)
    rng = np.random.default_rng(3)
    samples = rng.multinomial(2000, cells.ravel(), size=4000).reshape(-1, 2, 2).astype(float)
    simulated = kappa_from_confusion(samples).var() * 2000
    assert simulated == pytest.approx(kappa_variance(cells), rel=0.06)


def test_cells_have_the_kappa_and_rates_asked_for() -> None:
    cells = kappa_cells(0.4, 0.3, 0.45)
    assert cells.sum(axis=1)[0] == pytest.approx(0.3)
    assert cells.sum(axis=0)[0] == pytest.approx(0.45)
    assert float(kappa_from_confusion(cells)) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="agree with kappa"):
        kappa_cells(0.95, 0.1, 0.6)


def test_donner_eliasziw_noncentrality_is_the_normal_one_for_one_degree_of_freedom() -> None:
    """With one degree of freedom the test's non-centrality for power 0.8 at two-sided
    α 0.05 is (z_0.975 + z_0.8)² = 7.849; the rows are that over the per-row χ² distance
    of the three outcomes, computed here from the cells the paper writes out."""
    p, k0, k1 = 0.3, 0.4, 0.6
    q = p * (1 - p)
    null = np.array([(1 - p) ** 2 + k0 * q, 2 * (1 - k0) * q, p**2 + k0 * q])
    true = np.array([(1 - p) ** 2 + k1 * q, 2 * (1 - k1) * q, p**2 + k1 * q])
    expected = (1.959964 + 0.841621) ** 2 / np.sum((true - null) ** 2 / null)
    assert donner_eliasziw_rows(k0, k1, p) == pytest.approx(expected, rel=2e-3)


def test_donner_eliasziw_reproduces_the_published_arifin_example() -> None:
    """Arifin (2018), "A web-based sample size calculator for reliability studies",
    Education in Medicine Journal 10(3), 67-76, Example 5 (p. 73): Donner and Eliasziw's
    (1992) sizes as its calculator computes them, κ0 0.6 against κ1 0.9, 30% positive,
    α 0.05 one-tailed, power 80% → 52 subjects (75 with 30% dropout). One-tailed at 0.05
    rejects past the χ² test's critical value at 0.10 (1.645²); the two-sided test at
    0.05 would need 65.8 rows here, so the example also pins the paper's tail."""
    assert math.ceil(donner_eliasziw_rows(0.6, 0.9, 0.3, alpha=0.10)) == 52


def test_simulated_width_with_one_row_per_group_agrees_with_the_closed_form() -> None:
    plan = plan_width(independent(0.6, 0.3), kappa_of(0), 0.1, start=50)
    expected = rows_for_width(0.6, 0.3, 0.3, 0.1)  # 295 rows
    print(f"simulated {plan.rows} rows, closed form {expected:.0f}")  # this draw: 289
    assert plan.rows == pytest.approx(expected, rel=0.10)
    assert plan.width / 2 <= 0.1 + 0.005


def test_simulated_one_sided_power_agrees_with_cantor() -> None:
    plan = plan_power(independent(0.6, 0.3), kappa_of(0, null=0.4), 0.8, Simulation(alternative="greater"), start=50)
    expected = cantor_rows_for_test(0.4, 0.6, 0.3, 0.3)  # 141 rows
    print(f"simulated {plan.rows} rows, Cantor {expected:.0f}")  # this draw: 143
    assert plan.rows == pytest.approx(expected, rel=0.15)


def test_simulated_two_sided_power_agrees_with_cantor_and_donner_eliasziw() -> None:
    plan = plan_power(independent(0.6, 0.3), kappa_of(0, null=0.4), 0.8, start=50)
    cantor = cantor_rows_for_test(0.4, 0.6, 0.3, 0.3, two_sided=True)  # 180 rows
    donner = donner_eliasziw_rows(0.4, 0.6, 0.3)  # 190 rows
    print(f"simulated {plan.rows} rows, Cantor {cantor:.0f}, Donner-Eliasziw {donner:.0f}")  # this draw: 174
    assert plan.rows == pytest.approx(cantor, rel=0.15)
    assert plan.rows == pytest.approx(donner, rel=0.2)


def test_the_pilots_allowance_is_what_pilots_of_normal_groups_call_for() -> None:
    """Pilots of 8 groups whose values are normal: ``mean`` is the mean of σ / s over them,
    and with ``upper`` at 80%, s × the allowance reaches σ in 80% of them."""
    rng = np.random.default_rng(5)
    spread = rng.normal(size=(200_000, 8)).std(axis=1, ddof=1)
    assert pilot_allowance(8, "mean") == pytest.approx(np.mean(1 / spread), rel=0.01)
    assert np.mean(spread * pilot_allowance(8, "upper", 0.8) >= 1) == pytest.approx(0.8, abs=0.01)
    assert pilot_allowance(8, "ignore") == 1.0
    with pytest.raises(ValueError, match="says nothing of how much groups differ"):
        pilot_allowance(2, "mean")


def test_a_width_planned_with_an_allowance_is_that_much_narrower() -> None:
    """Sized 1.3 times narrower, the plan asks for about 1.3² times the groups, and its own
    simulated width is within the narrower target while the asked one is kept as its target."""
    quick = Simulation(simulations=60, resamples=100)
    plain = plan_width(independent(0.5, 0.3), kappa_of(0), 0.1, quick, start=40)
    narrower = plan_width(independent(0.5, 0.3), kappa_of(0), 0.1, quick, start=40, allowance=1.3)
    print(f"{plain.groups} groups plain, {narrower.groups} with the allowance")
    assert narrower.groups == pytest.approx(1.3**2 * plain.groups, rel=0.15)
    assert narrower.width / 2 <= 0.1 / 1.3 + 0.005 and narrower.target == 0.1 and narrower.allowance == 1.3


def clustered_pilot(rows_per_group: int, n_groups: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Groups whose rows all fall in one cell: agreement or disagreement is a property
    of the group, as when a prompt is easy or hard for the judge."""
    rng = np.random.default_rng(7)
    cells = rng.choice(4, size=n_groups, p=kappa_cells(0.5, 0.3, 0.3).ravel())
    cell = np.repeat(cells, rows_per_group)
    groups = np.repeat(np.arange(n_groups), rows_per_group)
    return cell // 2, (cell % 2)[None, :], groups


def test_rows_of_one_group_are_not_counted_as_independent() -> None:
    """The same rows need about ten times as many when each group of ten is one cell
    than when every row is a group of its own."""
    human, verdicts, groups = clustered_pilot(10)
    grouped = plan_width(GroupTypes.from_pilot(human, verdicts, groups, 2), kappa_of(0), 0.1, start=40)
    rows_alone = np.arange(len(human))
    alone = plan_width(GroupTypes.from_pilot(human, verdicts, rows_alone, 2), kappa_of(0), 0.1, start=400)
    print(f"grouped {grouped.groups} groups = {grouped.rows} rows; rows alone {alone.rows}")
    assert grouped.rows > 6 * alone.rows
    assert grouped.groups == pytest.approx(alone.rows, rel=0.3)


def test_a_plan_is_the_same_on_every_run_with_its_seed() -> None:
    types = independent(0.5, 0.2)
    first = plan_width(types, kappa_of(0), 0.08, Simulation(simulations=60, resamples=100, seed=4), start=40)
    again = plan_width(types, kappa_of(0), 0.08, Simulation(simulations=60, resamples=100, seed=4), start=40)
    assert first == again


def test_a_gain_that_is_not_there_is_not_reached() -> None:
    """Two judges with the same verdicts: no number of groups shows one above the other,
    and the plan says so rather than naming a size, without simulating the sizes up to
    the largest (with long groups, minutes each)."""
    human, verdicts, groups = clustered_pilot(3)
    both = np.concatenate([verdicts, verdicts])
    types = GroupTypes.from_pilot(human, both, groups, 2)
    plan = plan_power(
        types, kappa_gain(0, 1), 0.8, Simulation(simulations=40, resamples=100), start=40, most_groups=400
    )
    assert not plan.reached and plan.groups == 400 and plan.power < 0.8
    assert [point.groups for point in plan.curve] == [40]  # nothing searched: no size would do


def test_from_rates_gives_the_kappa_prevalence_and_group_size_asked_for() -> None:
    types = GroupTypes.from_rates(kappa=0.4, prevalence=0.3, judge_rate=0.5, rows_per_group=8, icc=0.2)
    pooled = np.tensordot(types.weights, types.tables, axes=1)[0]
    assert types.mean_rows == pytest.approx(8)
    assert pooled.sum(axis=1)[0] / 8 == pytest.approx(0.3)
    assert pooled.sum(axis=0)[0] / 8 == pytest.approx(0.5)
    assert float(kappa_from_confusion(pooled)) == pytest.approx(0.4, abs=1e-6)


def test_bisection_finds_the_first_size_that_meets() -> None:
    assert smallest_size(lambda g: g * g >= 1000, 2, 10_000) == 32
    assert smallest_size(lambda g: False, 2, 50) == 50


def test_fitted_curves_never_turn_the_wrong_way() -> None:
    """Noise that makes widths grow with size still gives a curve that never widens,
    and rejections that fall give a power curve that never falls."""
    widening = [SizePoint(groups=g, rows=g, width=w, power=0) for g, w in ((10, 0.2), (20, 0.21), (40, 0.22))]
    assert fit_width(widening)[1] == 0.0
    falling = [SizePoint(groups=g, rows=g, width=1, power=p) for g, p in ((10, 0.6), (20, 0.5), (40, 0.4))]
    assert fit_power(falling, 100)[1] >= 0.0


def test_no_plan_goes_below_the_least_groups() -> None:
    """A width any two groups give is still planned at ``least_groups``: with fewer, a
    group bootstrap has too few distinct resamples for its interval to mean anything."""
    quick = Simulation(simulations=40, resamples=80)
    plan = plan_width(independent(0.5, 0.3), kappa_of(0), 0.9, quick, start=5, least_groups=10)
    assert plan.groups == 10 and plan.least and min(p.groups for p in plan.curve) >= 10


def test_long_groups_of_independent_rows_need_what_independent_rows_need_and_correlated_ones_more() -> None:
    """Groups of 100 rows (more distinct groups than a study is counted over, so each
    study is kept as the groups it drew): independent within a group, about the rows of
    the closed form; with the label correlated within a group, more."""
    alike = GroupTypes.from_rates(kappa=0.4, prevalence=0.17, judge_rate=None, rows_per_group=100, icc=0.0)
    correlated = GroupTypes.from_rates(kappa=0.4, prevalence=0.17, judge_rate=None, rows_per_group=100, icc=0.3)
    assert len(alike.weights) > 4096
    quick = Simulation(simulations=100, resamples=200)
    independent_rows = plan_width(alike, kappa_of(0), 0.05, quick, start=30).rows
    correlated_rows = plan_width(correlated, kappa_of(0), 0.05, quick, start=30).rows
    expected = rows_for_width(0.4, 0.17, 0.17, 0.05)  # 2,202 rows
    print(f"independent within groups {independent_rows}, correlated {correlated_rows}, closed form {expected:.0f}")
    assert independent_rows == pytest.approx(expected, rel=0.15)
    assert correlated_rows > 1.5 * independent_rows

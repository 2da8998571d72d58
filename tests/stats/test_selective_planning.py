"""A selective judge's calibration groups, planned by choosing its band on simulated
calibration sets: the plan delivers the share of sets it promises on fresh draws, and a
judge whose scores hold no band meeting the targets is reported unreachable at once."""

from __future__ import annotations

import time

import numpy as np

from judgecal.stats.selective import candidate_thresholds
from judgecal.stats.selective_planning import BandRule, ScoredPilot, plan_band, simulate_bands, widest_coverage


def calibrated_pilot(n_groups: int = 40, rows: int = 10, seed: int = 1) -> ScoredPilot:
    """A judge whose P(yes) is the true chance of yes, spread towards 0 and 1: bands
    meeting 0.8 on both verdicts exist, and more groups show them more often."""
    rng = np.random.default_rng(seed)
    p = rng.beta(0.7, 0.7, size=n_groups * rows)
    return ScoredPilot(
        probability=p, positive=rng.uniform(size=p.size) < p, groups=np.repeat(np.arange(n_groups), rows)
    )


def rule(targets: dict[str, float], *, allow_never: bool = False) -> BandRule:
    fitting = np.random.default_rng(2).beta(0.7, 0.7, size=300)  # where a run places its candidates: other rows
    return BandRule(("true", "false"), targets, 0.1, "design_effect", allow_never, candidate_thresholds(fitting))


def test_the_planned_groups_find_a_band_as_often_as_promised_on_fresh_sets() -> None:
    pilot, band = calibrated_pilot(), rule({"true": 0.8, "false": 0.8})
    plan = plan_band(pilot, band, coverage=0.5, power=0.8, simulations=100, seed=0)
    assert plan.reached and not plan.least
    assert plan.rows == plan.groups * 10
    assert plan.value is not None and plan.value >= 0.5
    fresh = simulate_bands(pilot, band, 0.5, plan.groups, simulations=300, seed=7)
    assert abs(fresh.power - 0.8) <= 0.08, (plan.groups, fresh)
    fewer = simulate_bands(pilot, band, 0.5, plan.groups * 2 // 3, simulations=300, seed=7)
    assert fewer.power < 0.7, (plan.groups, fewer)  # the plan is not far more than needed either
    powers = [point.power for point in plan.curve]
    assert powers[0] < 0.8 <= powers[-1]  # the curve searched crosses the target
    assert fresh.missed <= 0.1  # the bands found hold their targets on the pilot's rows


def test_a_judge_whose_scores_hold_no_band_is_unreachable_without_simulating() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(size=400)
    noise = ScoredPilot(probability=p, positive=rng.uniform(size=400) < 0.5, groups=np.repeat(np.arange(40), 10))
    band = rule({"true": 0.8, "false": 0.8})
    assert widest_coverage(noise, band) is None
    started = time.perf_counter()
    plan = plan_band(noise, band, coverage=0.3, simulations=100, most_groups=5000)
    assert time.perf_counter() - started < 1.0
    assert not plan.reached and plan.groups == 5000 and plan.curve == [] and plan.power is None and plan.value is None


def test_a_band_that_answers_too_few_rows_is_unreachable_at_that_coverage() -> None:
    """allow_never: 'false' alone at 0.8 is held on the pilot, but on fewer rows than asked for."""
    pilot, band = calibrated_pilot(), rule({"true": 0.99, "false": 0.8}, allow_never=True)
    widest = widest_coverage(pilot, band)
    assert widest is not None and 0.2 < widest < 0.6
    plan = plan_band(pilot, band, coverage=widest + 0.05, simulations=50)
    assert not plan.reached and plan.value == widest

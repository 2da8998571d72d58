"""How many calibration rows and groups a selective judge needs to find a band that meets
its precision targets and still answers a chosen share of rows.

A pilot is rows the calibrated judge scored (P(yes)) with their human labels and groups:
a selective run's test rows. A calibration set of ``G`` groups is ``G`` of the pilot's
groups drawn with replacement (each draw a group of its own); on it the band is chosen
exactly as the run chose it (:func:`judgecal.stats.selective.choose_binary_band`, with the
run's targets, delta, way of counting groups, ``allow_never`` and candidate thresholds).
A set succeeds when a band is found and it answers at least the chosen coverage of the
pilot's rows (the population the sets are drawn from: the band's coverage on its own
calibration rows is the one it was chosen to maximise, so it flatters). The share of sets
that succeed rises with ``G``; a curve ``Φ(a + b√G)`` fitted through a few sizes, as for
a test's power in :mod:`judgecal.stats.planning`, is searched by bisection for the fewest
groups that reach the power asked for.

No size helps a judge whose scores hold no such band: as ``G`` grows the test finds the
thresholds whose precision on the population is above its target, and no more. When no
band on the pilot as a whole has every verdict's precision above its target and the
coverage asked for, the plan says so at once, without simulating.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy.stats import norm

from judgecal.stats.ltt import Procedure
from judgecal.stats.planning import fit_power, sizes_around, smallest_size
from judgecal.stats.selective import GroupsMode, binary_answers, choose_binary_band

DEFAULT_BAND_SIMULATIONS = 200


@dataclass(frozen=True)
class ScoredPilot:
    """Rows a calibrated judge scored: P(yes), whether people said yes, group codes 0..G-1."""

    probability: np.ndarray  # (rows,)
    positive: np.ndarray  # (rows,) bool
    groups: np.ndarray  # (rows,) codes

    @property
    def n_groups(self) -> int:
        return int(self.groups.max()) + 1

    @property
    def mean_rows(self) -> float:
        return len(self.groups) / self.n_groups


@dataclass(frozen=True)
class BandRule:
    """How the run chose its band: the verdicts' spellings (yes, no), the targets, delta,
    how groups count, whether a verdict may be never given, the candidate thresholds and
    the test over them."""

    keys: tuple[str, str]
    targets: dict[str, float]
    delta: float
    groups: GroupsMode
    allow_never: bool
    candidates: np.ndarray
    procedure: Procedure = "holm"
    starts: int = 1

    def describe(self, coverage: float) -> str:
        targets = ", ".join(f"{key} ≥ {self.targets[key]:g}" for key in self.keys)
        return f"band: {targets} (delta {self.delta:g}), answering ≥ {coverage:.0%}"


class BandPoint(BaseModel):
    """What the simulated calibration sets of one size gave."""

    model_config = ConfigDict(frozen=True)

    groups: int
    rows: float
    power: float  # share of sets with a band answering at least the coverage asked for
    found: float  # share of sets with any band
    missed: float  # share of sets whose band falls short of a target on the pilot's rows


class SelectivePlan(BaseModel):
    """The fewest calibration groups with which a band meeting the targets and answering
    ``coverage`` of rows is found in a share ``target`` of calibration sets."""

    model_config = ConfigDict(frozen=True)

    goal: Literal["selective"] = "selective"
    quantity: str
    targets: dict[str, float]
    delta: float
    groups_mode: GroupsMode
    allow_never: bool
    coverage: float
    value: float | None  # the widest coverage of a band meeting the targets on the pilot as a whole
    target: float  # the power
    groups: int
    rows: int
    power: float | None  # at the planned size, as simulated (None: not reached)
    reached: bool  # False: no size up to the largest allowed reaches the power
    least: bool
    curve: list[BandPoint]
    fitted: list[float]  # (a, b) of power = Φ(a + b√G)
    simulations: int
    seed: int


def simulate_bands(
    pilot: ScoredPilot, rule: BandRule, coverage: float, n_groups: int, *, simulations: int, seed: int
) -> BandPoint:
    """Choose a band on ``simulations`` calibration sets of ``n_groups`` groups drawn from
    the pilot, each seeded by the seed and the size."""
    rng = np.random.default_rng([seed, n_groups])
    members = np.split(np.argsort(pilot.groups, kind="stable"), np.cumsum(np.bincount(pilot.groups))[:-1])
    sizes = np.array([len(m) for m in members])
    succeeded = found = missed = 0
    for _ in range(simulations):
        drawn = rng.integers(0, len(members), size=n_groups)
        rows = np.concatenate([members[g] for g in drawn])
        choice = choose_binary_band(
            pilot.probability[rows],
            pilot.positive[rows],
            np.repeat(np.arange(n_groups), sizes[drawn]),
            keys=rule.keys,
            targets=rule.targets,
            delta=rule.delta,
            groups_mode=rule.groups,
            allow_never=rule.allow_never,
            candidates=rule.candidates,
            procedure=rule.procedure,
            starts=rule.starts,
        )
        if not choice.found or choice.band is None:
            continue
        found += 1
        hi, lo = (answer.threshold for answer in choice.band.answers)
        answered, short = _on_pilot(pilot, rule, lo, hi)
        succeeded += answered >= coverage
        missed += short
    return BandPoint(
        groups=n_groups,
        rows=n_groups * pilot.mean_rows,
        power=succeeded / simulations,
        found=found / simulations,
        missed=missed / simulations,
    )


def _on_pilot(pilot: ScoredPilot, rule: BandRule, lo: float | None, hi: float | None) -> tuple[float, bool]:
    """A band's coverage of the pilot's rows, and whether a verdict it gives is right less
    often than its target there."""
    answers = binary_answers(pilot.probability, lo, hi)
    y = pilot.positive.astype(int)
    short = False
    for key, code in zip(rule.keys, (1, 0), strict=True):
        said = answers == code
        if said.any() and np.mean(y[said] == code) < rule.targets[key]:
            short = True
    return float(np.mean(~np.isnan(answers))), short


def widest_coverage(pilot: ScoredPilot, rule: BandRule) -> float | None:
    """The widest coverage, on the pilot as a whole, of a band of candidate thresholds
    whose every verdict is right more often than its target there (None: no such band).
    What a calibration set of unbounded size would find."""
    p, y = pilot.probability, pilot.positive
    yes, no = rule.keys
    his: list[float | None] = [t for t in rule.candidates if y[p >= t].size and y[p >= t].mean() > rule.targets[yes]]
    los: list[float | None] = [t for t in rule.candidates if y[p < t].size and 1 - y[p < t].mean() > rule.targets[no]]
    if rule.allow_never:
        his, los = [*his, None], [*los, None]
    coverages = [
        float(np.mean(~np.isnan(binary_answers(p, lo, hi))))
        for lo in los
        for hi in his
        if not (lo is None and hi is None) and (lo is None or hi is None or lo <= hi)
    ]
    return max(coverages, default=None)


def plan_band(
    pilot: ScoredPilot,
    rule: BandRule,
    coverage: float,
    power: float = 0.8,
    *,
    simulations: int = DEFAULT_BAND_SIMULATIONS,
    seed: int = 0,
    least_groups: int = 10,
    most_groups: int = 20_000,
) -> SelectivePlan:
    """The fewest calibration groups with which a band meeting ``rule``'s targets and
    answering at least ``coverage`` of rows is found in a share ``power`` of calibration
    sets. The search starts at the pilot's groups and doubles until the power is reached;
    a curve fitted through the sizes simulated then places the answer, simulated again."""
    simulated: dict[int, BandPoint] = {}

    def at(g: int) -> BandPoint:
        if g not in simulated:
            simulated[g] = simulate_bands(pilot, rule, coverage, g, simulations=simulations, seed=seed)
        return simulated[g]

    def finish(chosen: BandPoint | None, fitted: tuple[float, float]) -> SelectivePlan:
        limits = (least_groups, most_groups)
        return _band_plan(pilot, rule, coverage, power, best, chosen, simulated, fitted, limits, (simulations, seed))

    best = widest_coverage(pilot, rule)
    if best is None or best < coverage:
        return finish(None, (0.0, 0.0))
    g = min(most_groups, max(least_groups, pilot.n_groups))
    while at(g).power < power and g < most_groups:
        if _beyond_reach(fit_power(list(simulated.values()), simulations), power, most_groups, simulated):
            break
        g = min(most_groups, 2 * g)
    if at(g).power < power:
        return finish(None, fit_power(list(simulated.values()), simulations))
    for _ in range(2):
        a, b = fit_power(list(simulated.values()), simulations)
        guess = smallest_size(lambda n, a=a, b=b: norm.cdf(a + b * np.sqrt(n)) >= power, least_groups, most_groups)
        for size in sizes_around(guess, least_groups, most_groups, points=3, spread=1.3):
            at(size)
    fitted = fit_power(list(simulated.values()), simulations)
    guess = smallest_size(lambda n: norm.cdf(fitted[0] + fitted[1] * np.sqrt(n)) >= power, least_groups, most_groups)
    return finish(at(guess), fitted)


def _beyond_reach(fitted: tuple[float, float], power: float, most_groups: int, simulated: dict[int, BandPoint]) -> bool:
    """Whether the curve through sizes that already found bands places the power past the
    largest size allowed (then it is not simulated there: large sets take minutes)."""
    if sum(point.power > 0 for point in simulated.values()) < 2:
        return False
    a, b = fitted
    return bool(norm.cdf(a + b * np.sqrt(most_groups)) < power)


def _band_plan(
    pilot: ScoredPilot,
    rule: BandRule,
    coverage: float,
    power: float,
    best: float | None,
    chosen: BandPoint | None,
    simulated: dict[int, BandPoint],
    fitted: tuple[float, float],
    limits: tuple[int, int],
    settings: tuple[int, int],
) -> SelectivePlan:
    """The plan at ``chosen``; without one (not reached), the largest size allowed."""
    groups = limits[1] if chosen is None else chosen.groups
    return SelectivePlan(
        quantity=rule.describe(coverage),
        targets=dict(rule.targets),
        delta=rule.delta,
        groups_mode=rule.groups,
        allow_never=rule.allow_never,
        coverage=coverage,
        value=best,
        target=power,
        groups=groups,
        rows=int(np.ceil(round(groups * pilot.mean_rows, 6))),
        power=None if chosen is None else chosen.power,
        reached=chosen is not None,
        least=chosen is not None and groups == limits[0],
        curve=[simulated[g] for g in sorted(simulated)],
        fitted=list(fitted),
        simulations=settings[0],
        seed=settings[1],
    )

"""How many labels a decision needs: rows and groups, found by simulation.

Rows of one group are not independent, so sizes come from resampling whole groups, never
from a formula that treats rows as independent. A pilot (or a model of one built from
expected rates) is reduced to its distinct groups (:class:`GroupTypes`): each group is the
confusion matrix of its rows, per judge. A study of ``G`` groups is a draw of ``G`` groups
with replacement; on it the group bootstrap gives an interval (resampling ``G`` of the
study's groups with replacement, as :mod:`judgecal.stats.uncertainty` does), whose width
and whether it clears the null value are recorded. Both draws are multinomial counts over
the distinct groups, so a simulation costs the same whatever the number of rows.

A pilot's few groups also misjudge how much groups differ, and a plan sized on their
spread as if it were the population's gives wider intervals than asked, on average, the
fewer the groups: :func:`pilot_allowance` says by how much, and a width plan can be sized
that much narrower.

Repeating that at a few sizes gives a curve; a monotone curve fitted through it (width ∝
``G^b``, power ``Φ(a + b√G)``) is searched by bisection for the smallest ``G`` that
meets the target. Every draw is seeded by the seed and the size, so a plan is the same
on every run.

With one row per group the simulation answers the question published closed forms
answer for independent rows: :func:`kappa_variance` (Fleiss, Cohen and Everitt 1969, as
Cantor 1996 uses it), :func:`cantor_rows_for_test`, :func:`rows_for_width` and
:func:`donner_eliasziw_rows` (Donner and Eliasziw 1992). The tests hold the one to the
others.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy.optimize import brentq, minimize
from scipy.special import gammaln
from scipy.stats import betabinom, binom, chi2, ncx2, norm

from judgecal.stats.metrics import kappa_from_confusion

Alternative = Literal["two-sided", "greater"]
PilotUncertainty = Literal["ignore", "mean", "upper"]

DEFAULT_SIMULATIONS = 200
DEFAULT_RESAMPLES = 400
MOST_DRAWS_AT_ONCE = 4_000_000  # multinomial counts held in memory by one batch of simulated studies
MOST_DENSE_TYPES = 4096  # distinct groups past which a study is kept as the groups it drew, not counts over all


@dataclass(frozen=True)
class GroupTypes:
    """The distinct groups a study draws from and how likely each is.

    ``tables[t, j]`` is the confusion matrix (human label × verdict) of judge ``j`` on
    the rows of a group of type ``t``; ``weights`` sum to 1; ``rows`` counts the rows of
    each type."""

    tables: np.ndarray  # (types, judges, size, size)
    weights: np.ndarray  # (types,)
    rows: np.ndarray  # (types,)

    @classmethod
    def from_pilot(cls, human: np.ndarray, verdicts: np.ndarray, groups: np.ndarray, size: int) -> GroupTypes:
        """A pilot's groups, each as likely as any other: ``human`` (rows,) and
        ``verdicts`` (judges, rows) are category indices, ``groups`` group codes 0..G-1."""
        n_groups = int(groups.max()) + 1
        flat = np.zeros((n_groups, verdicts.shape[0], size * size))
        for j, judge in enumerate(verdicts):
            np.add.at(flat[:, j], (groups, human * size + judge), 1.0)
        distinct, counts = np.unique(flat.reshape(n_groups, -1), axis=0, return_counts=True)
        tables = distinct.reshape(len(distinct), verdicts.shape[0], size, size)
        return cls(tables=tables, weights=counts / counts.sum(), rows=tables[:, 0].sum(axis=(1, 2)))

    @classmethod
    def from_rates(
        cls, *, kappa: float, prevalence: float, judge_rate: float | None, rows_per_group: int, icc: float
    ) -> GroupTypes:
        """A model of a pilot with one binary judge (label index 0 = positive): each group
        has its own rate of positive labels, drawn from a beta distribution with mean
        ``prevalence`` whose intraclass correlation is ``icc`` (0: every group alike), and
        the judge says positive with the sensitivity and false-positive rate that give
        Cohen's κ = ``kappa`` and a positive rate of ``judge_rate`` (default: the
        prevalence). Groups are enumerated exactly: (positives, true positives, false
        positives) with their probabilities."""
        rate = prevalence if judge_rate is None else judge_rate
        cells = kappa_cells(kappa, prevalence, rate)
        sensitivity, false_positive = cells[0, 0] / prevalence, cells[1, 0] / (1 - prevalence)
        m = rows_per_group
        positives = np.arange(m + 1)
        if icc > 0:
            spread = 1 / icc - 1  # a + b of the beta distribution
            p_positives = betabinom.pmf(positives, m, prevalence * spread, (1 - prevalence) * spread)
        else:
            p_positives = binom.pmf(positives, m, prevalence)
        tables, weights = [], []
        for n_pos in positives:
            tp, fp = np.meshgrid(np.arange(n_pos + 1), np.arange(m - n_pos + 1), indexing="ij")
            p = p_positives[n_pos] * binom.pmf(tp, n_pos, sensitivity) * binom.pmf(fp, m - n_pos, false_positive)
            for a, b, weight in zip(tp.ravel(), fp.ravel(), p.ravel(), strict=True):
                if weight > 1e-12:
                    tables.append([[a, n_pos - a], [b, m - n_pos - b]])
                    weights.append(weight)
        table_array = np.asarray(tables, float)[:, None]
        weight_array = np.asarray(weights)
        return cls(tables=table_array, weights=weight_array / weight_array.sum(), rows=np.full(len(weights), m))

    @property
    def mean_rows(self) -> float:
        """Rows a drawn group brings, on average."""
        return float(self.weights @ self.rows)


@dataclass(frozen=True)
class Quantity:
    """What a plan is for: a number computed from summed confusion matrices
    (``(..., judges, size, size)`` → ``(...)``), and the value a test must clear."""

    name: str
    compute: Callable[[np.ndarray], np.ndarray]
    null: float = 0.0


def kappa_of(judge: int, name: str = "kappa", null: float = 0.0) -> Quantity:
    return Quantity(name, lambda cm: kappa_from_confusion(cm[..., judge, :, :]), null)


def agreement_of(judge: int, name: str = "agreement", null: float = 0.0) -> Quantity:
    def compute(cm: np.ndarray) -> np.ndarray:
        table = cm[..., judge, :, :]
        with np.errstate(all="ignore"):
            return np.trace(table, axis1=-2, axis2=-1) / table.sum(axis=(-2, -1))

    return Quantity(name, compute, null)


def precision_of(judge: int, verdict: int, name: str = "precision", null: float = 0.0) -> Quantity:
    """The share of rows the judge gave ``verdict`` whose human label is the same."""

    def compute(cm: np.ndarray) -> np.ndarray:
        table = cm[..., judge, :, :]
        with np.errstate(all="ignore"):
            return table[..., verdict, verdict] / table[..., :, verdict].sum(axis=-1)

    return Quantity(name, compute, null)


def kappa_gain(baseline: int, candidate: int, name: str = "kappa gain") -> Quantity:
    """κ of the candidate minus κ of the baseline on the same rows (paired)."""
    return Quantity(
        name,
        lambda cm: kappa_from_confusion(cm[..., candidate, :, :]) - kappa_from_confusion(cm[..., baseline, :, :]),
        0.0,
    )


class SizePoint(BaseModel):
    """What the simulated studies of one size gave."""

    model_config = ConfigDict(frozen=True)

    groups: int
    rows: float
    width: float  # mean width of the interval over the simulated studies
    power: float  # share of simulated studies whose interval's lower bound cleared the null value


class SizePlan(BaseModel):
    """The smallest study that meets a target, and the curve it was read from."""

    model_config = ConfigDict(frozen=True)

    goal: Literal["width", "power"]
    quantity: str
    value: float  # the quantity on the pilot (or the model) as a whole
    target: float  # the interval's half-width, or the power
    null: float
    alternative: Alternative
    confidence: float
    groups: int
    rows: int
    width: float  # at the planned size, simulated again (a plan not reached: at the first size simulated)
    power: float
    reached: bool  # False: even the largest size searched falls short
    least: bool  # the plan is the least size allowed: the target is met there, perhaps with fewer too
    curve: list[SizePoint]
    allowance: float = 1.0  # the width simulated is held to 2 × target / allowance (see pilot_allowance)
    fitted: list[float]  # the smoothed curve's parameters: (log a, b) of width = a·G^b, or (a, b) of Φ(a + b√G)
    simulations: int
    resamples: int
    seed: int


@dataclass(frozen=True)
class Simulation:
    """How each size is simulated."""

    simulations: int = DEFAULT_SIMULATIONS
    resamples: int = DEFAULT_RESAMPLES
    confidence: float = 0.95
    alternative: Alternative = "two-sided"
    seed: int = 0

    @property
    def lower_tail(self) -> float:
        """The bootstrap quantile a test compares with the null value: ``alpha`` one-sided,
        ``alpha / 2`` two-sided, with ``alpha = 1 - confidence``."""
        alpha = 1 - self.confidence
        return alpha if self.alternative == "greater" else alpha / 2


def simulate_size(types: GroupTypes, quantity: Quantity, n_groups: int, settings: Simulation) -> SizePoint:
    """Draw ``settings.simulations`` studies of ``n_groups`` groups and bootstrap each by
    groups: the mean width of the two-sided interval at ``confidence`` and the share of
    studies whose lower bound (see :attr:`Simulation.lower_tail`) is above the null.

    A study is counts over the distinct groups; with more distinct groups than
    ``MOST_DENSE_TYPES`` (a model of long groups) it is the groups it drew instead, and each
    study is bootstrapped over the few distinct groups it holds."""
    rng = np.random.default_rng([settings.seed, n_groups])
    flat = types.tables.reshape(len(types.weights), -1)
    if len(types.weights) > MOST_DENSE_TYPES:
        bounds = _sparse_studies(rng, types, flat, quantity, n_groups, settings)
    else:
        bounds = _dense_studies(rng, types, flat, quantity, n_groups, settings)
    low, high, lower = bounds
    widths = high - low
    defined = widths[np.isfinite(widths)]
    return SizePoint(
        groups=n_groups,
        rows=n_groups * types.mean_rows,
        width=float(defined.mean()) if len(defined) else float("inf"),
        power=float(np.mean(lower > quantity.null)),
    )


def _bounds(values: np.ndarray, settings: Simulation) -> np.ndarray:
    """(low, high, lower tail) of each study's bootstrap values (last axis)."""
    tail = (1 - settings.confidence) / 2
    quantiles = np.array([tail, 1 - tail, settings.lower_tail]) * 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a study where the quantity is undefined throughout
        return np.nanpercentile(values, quantiles, axis=-1)


def _dense_studies(
    rng: np.random.Generator,
    types: GroupTypes,
    flat: np.ndarray,
    quantity: Quantity,
    n_groups: int,
    settings: Simulation,
) -> np.ndarray:
    """Studies as counts over every distinct group, bootstrapped in batches."""
    shape = types.tables.shape[1:]
    studies = rng.multinomial(n_groups, types.weights, size=settings.simulations)
    bounds = np.empty((3, settings.simulations))
    batch = max(1, MOST_DRAWS_AT_ONCE // (settings.resamples * len(types.weights)))
    for start in range(0, settings.simulations, batch):
        counts = studies[start : start + batch]
        draws = rng.multinomial(n_groups, counts[:, None, :] / n_groups, size=(len(counts), settings.resamples))
        summed = (draws @ flat).reshape(len(counts), settings.resamples, *shape)
        bounds[:, start : start + batch] = _bounds(quantity.compute(summed), settings)
    return bounds


def _sparse_studies(
    rng: np.random.Generator,
    types: GroupTypes,
    flat: np.ndarray,
    quantity: Quantity,
    n_groups: int,
    settings: Simulation,
) -> np.ndarray:
    """Studies as the groups they drew, each bootstrapped over its own distinct groups."""
    shape = types.tables.shape[1:]
    picks = rng.choice(len(types.weights), size=(settings.simulations, n_groups), p=types.weights)
    bounds = np.empty((3, settings.simulations))
    for study, drawn in enumerate(picks):
        present, counts = np.unique(drawn, return_counts=True)
        draws = rng.multinomial(n_groups, counts / n_groups, size=settings.resamples)
        summed = (draws @ flat[present]).reshape(settings.resamples, *shape)
        bounds[:, study] = _bounds(quantity.compute(summed), settings)
    return bounds


def smallest_size(meets: Callable[[int], bool], low: int, high: int) -> int:
    """Bisection over whole numbers: the smallest ``G`` in ``[low, high]`` with
    ``meets(G)``, for a ``meets`` that stays true once it is true; ``high`` when none is."""
    while low < high:
        middle = (low + high) // 2
        if meets(middle):
            high = middle
        else:
            low = middle + 1
    return low


def fit_width(points: list[SizePoint]) -> tuple[float, float]:
    """``log width = a + b log G`` by least squares over the finite widths; ``b`` is kept
    at or below 0 so that the curve never widens with more groups. A quantity whose
    intervals have no width (a verdict always right on the pilot) gets a flat curve near 0."""
    usable = [p for p in points if np.isfinite(p.width) and p.width > 0]
    if len(usable) < 2 and any(p.width == 0 for p in points):
        return float(np.log(1e-12)), 0.0  # the same value in every study: any size gives a point interval
    if len(usable) < 2:
        raise ValueError(
            "the quantity is undefined in the simulated studies (a verdict the judge never gives?): nothing to plan"
        )
    x = np.log([p.groups for p in usable])
    y = np.log([p.width for p in usable])
    slope, intercept = np.polyfit(x, y, 1)
    if slope > 0:
        slope, intercept = 0.0, float(np.mean(y))
    return float(intercept), float(slope)


def fit_power(points: list[SizePoint], simulations: int) -> tuple[float, float]:
    """``power = Φ(a + b√G)`` by maximum likelihood over the simulated rejections, with
    ``b ≥ 0`` so that more groups never lower the power."""
    sizes = np.sqrt([p.groups for p in points])
    hits = np.array([p.power for p in points]) * simulations

    def loss(params: np.ndarray) -> float:
        z = params[0] + params[1] * sizes
        return -float(np.sum(hits * norm.logcdf(z) + (simulations - hits) * norm.logsf(z)))

    result = minimize(loss, x0=np.array([-1.0, 0.1]), bounds=[(-40, 40), (0, 40)], method="L-BFGS-B")
    return float(result.x[0]), float(result.x[1])


def sizes_around(centre: float, least: int, most: int, points: int = 6, spread: float = 3.0) -> list[int]:
    """Sizes spread geometrically around ``centre``, within ``[least, most]``."""
    sizes = np.geomspace(max(least, centre / spread), max(least + 1, min(most, centre * spread)), points)
    return sorted({int(min(most, max(least, round(g)))) for g in sizes})


def pilot_allowance(n_groups: int, how: PilotUncertainty, confidence: float = 0.8) -> float:
    """How many times narrower than asked to size a width plan from a pilot of ``n_groups``
    groups, whose spread between groups is an estimate on ``n_groups - 1`` degrees of
    freedom, not the population's. Widths go as the spread, so with group-level values
    taken as normal (s² ~ σ² χ²/df):

    - ``mean``: ``E[σ / s]``, so that over pilots like this one the width obtained is on
      average the one asked (1.126 for 8 groups, 1.042 for 20);
    - ``upper``: ``√(df / χ²_{1-confidence, df})``, the spread's upper confidence limit, as
      Browne (1995) sizes a trial from a pilot's standard deviation: the width is met with
      the pilot's spread at or below the population's in a share ``confidence`` of pilots;
    - ``ignore``: 1, the pilot's spread taken for the population's."""
    if how == "ignore":
        return 1.0
    df = n_groups - 1
    if df < 2:
        raise ValueError(f"a pilot of {n_groups} groups says nothing of how much groups differ: plan it with ignore")
    if how == "mean":
        return float(np.sqrt(df / 2) * np.exp(gammaln((df - 1) / 2) - gammaln(df / 2)))
    return float(np.sqrt(df / chi2.ppf(1 - confidence, df)))


def plan_width(
    types: GroupTypes,
    quantity: Quantity,
    half_width: float,
    settings: Simulation = Simulation(),
    *,
    start: int,
    least_groups: int = 2,
    most_groups: int = 20_000,
    allowance: float = 1.0,
) -> SizePlan:
    """The fewest groups whose interval for ``quantity`` is at most ``2 × half_width /
    allowance`` wide on average (``allowance`` from :func:`pilot_allowance`; 1: the pilot's
    groups taken for the population). ``start`` is the first size simulated (the pilot's groups): the
    curve is sampled around the size its width points to, then again around the answer.
    No plan is below ``least_groups``: with a handful of groups a group bootstrap has few
    distinct resamples and its interval is too narrow to trust."""
    simulated: dict[int, SizePoint] = {}

    def at(g: int) -> SizePoint:
        if g not in simulated:
            simulated[g] = simulate_size(types, quantity, g, settings)
        return simulated[g]

    sized = half_width / allowance
    first = at(min(most_groups, max(least_groups, start)))
    guess = first.groups * (first.width / (2 * sized)) ** 2 if np.isfinite(first.width) else 4.0 * first.groups
    fitted = (0.0, 0.0)
    for spread in (3.0, 1.5):
        for g in sizes_around(min(guess, most_groups), least_groups, most_groups, spread=spread):
            at(g)
        fitted = fit_width(list(simulated.values()))
        intercept, slope = fitted
        guess = smallest_size(
            lambda g, a=intercept, b=slope: np.exp(a + b * np.log(g)) <= 2 * sized, least_groups, most_groups
        )
    chosen = at(guess)
    limits = (least_groups, most_groups)
    return _plan("width", quantity, half_width, settings, types, chosen, simulated, fitted, limits, allowance=allowance)


def plan_power(
    types: GroupTypes,
    quantity: Quantity,
    power: float,
    settings: Simulation = Simulation(),
    *,
    start: int,
    least_groups: int = 2,
    most_groups: int = 20_000,
) -> SizePlan:
    """The fewest groups with which the interval's lower bound clears ``quantity.null``
    in a share ``power`` of studies (the test of :attr:`Simulation.lower_tail`)."""
    simulated: dict[int, SizePoint] = {}

    def at(g: int) -> SizePoint:
        if g not in simulated:
            simulated[g] = simulate_size(types, quantity, g, settings)
        return simulated[g]

    first = at(min(most_groups, max(least_groups, start)))
    z = norm.ppf(1 - settings.lower_tail) + norm.ppf(power)
    effect = _effect_size(types, quantity, first)
    limits = (least_groups, most_groups)
    if effect <= 0:
        # Not above the null on the pilot: more groups only make the test's rejections
        # rarer, so no size is searched (at the largest, each study would take minutes).
        flat = (float(norm.ppf(np.clip(first.power, 1e-6, 1 - 1e-6))), 0.0)
        return _plan("power", quantity, power, settings, types, first, simulated, flat, limits, unreachable=True)
    guess = first.groups * (z / effect) ** 2
    fitted = (0.0, 0.0)
    for spread in (3.0, 1.5):
        for g in sizes_around(min(guess, most_groups), least_groups, most_groups, spread=spread):
            at(g)
        fitted = fit_power(list(simulated.values()), settings.simulations)
        a, b = fitted
        guess = smallest_size(lambda g, a=a, b=b: norm.cdf(a + b * np.sqrt(g)) >= power, least_groups, most_groups)
    chosen = at(guess)
    return _plan("power", quantity, power, settings, types, chosen, simulated, fitted, limits)


def _effect_size(types: GroupTypes, quantity: Quantity, at_start: SizePoint) -> float:
    """How many standard errors the population's value sits above the null at the first
    size (the interval's width over 2 × 1.96 standing in for the standard error): where
    the search starts."""
    population = quantity.compute(np.tensordot(types.weights, types.tables, axes=1))
    se = at_start.width / (2 * norm.ppf(0.975))
    if not np.isfinite(se) or se <= 0:
        return 0.0
    return float((population - quantity.null) / se)


def _plan(
    goal: Literal["width", "power"],
    quantity: Quantity,
    target: float,
    settings: Simulation,
    types: GroupTypes,
    chosen: SizePoint,
    simulated: dict[int, SizePoint],
    fitted: tuple[float, float],
    limits: tuple[int, int],
    *,
    unreachable: bool = False,
    allowance: float = 1.0,
) -> SizePlan:
    """The plan at ``chosen``; an ``unreachable`` one names the largest size allowed, not
    met, with the width and power of the size it was simulated at."""
    met = chosen.width <= 2 * target / allowance if goal == "width" else chosen.power >= target
    groups = limits[1] if unreachable else chosen.groups
    return SizePlan(
        goal=goal,
        quantity=quantity.name,
        value=float(quantity.compute(np.tensordot(types.weights, types.tables, axes=1))),
        target=target,
        null=quantity.null,
        alternative=settings.alternative,
        confidence=settings.confidence,
        groups=groups,
        rows=int(np.ceil(round(groups * types.mean_rows, 6))),
        width=chosen.width,
        power=chosen.power,
        reached=not unreachable and bool(met or chosen.groups < limits[1]),
        least=groups == limits[0],
        curve=[simulated[g] for g in sorted(simulated)],
        allowance=allowance,
        fitted=list(fitted),
        simulations=settings.simulations,
        resamples=settings.resamples,
        seed=settings.seed,
    )


# Closed forms for independent rows (one row per group), which the simulation is held to.


def kappa_cells(kappa: float, rate_first: float, rate_second: float) -> np.ndarray:
    """The 2 × 2 cell probabilities (index 0 = positive) of two raters who say positive
    at the given rates and agree with Cohen's κ = ``kappa``."""
    chance = rate_first * rate_second + (1 - rate_first) * (1 - rate_second)
    observed = kappa * (1 - chance) + chance
    both = (observed - 1 + rate_first + rate_second) / 2
    cells = np.array([[both, rate_first - both], [rate_second - both, 1 - rate_first - rate_second + both]])
    if (cells < -1e-12).any():
        raise ValueError(f"no two raters at rates {rate_first:g} and {rate_second:g} agree with kappa {kappa:g}")
    return np.clip(cells, 0, None)


def kappa_variance(cells: np.ndarray) -> float:
    """``n × Var(κ̂)`` for independent rows with cell probabilities ``cells`` (rows: the
    first rater): the large-sample variance of Fleiss, Cohen and Everitt (1969), Cantor's
    (1996) ``Q``."""
    cells = np.asarray(cells, float)
    first, second = cells.sum(axis=1), cells.sum(axis=0)
    observed, chance = float(np.trace(cells)), float(first @ second)
    diagonal = np.diag(cells) * (1 - chance - (first + second) * (1 - observed)) ** 2
    off = cells * (second[:, None] + first[None, :]) ** 2
    np.fill_diagonal(off, 0.0)
    total = diagonal.sum() + (1 - observed) ** 2 * off.sum() - (observed * chance - 2 * chance + observed) ** 2
    return float(total / (1 - chance) ** 4)


def rows_for_width(
    kappa: float, rate_first: float, rate_second: float, half_width: float, confidence: float = 0.95
) -> float:
    """Independent rows for a Wald interval of κ at most ``± half_width``: ``z² Q / w²``."""
    z = norm.ppf(1 - (1 - confidence) / 2)
    return z**2 * kappa_variance(kappa_cells(kappa, rate_first, rate_second)) / half_width**2


def cantor_rows_for_test(
    kappa_null: float,
    kappa_true: float,
    rate_first: float,
    rate_second: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    two_sided: bool = False,
) -> float:
    """Cantor (1996): independent rows for a test of κ = ``kappa_null`` to reject with
    ``power`` when κ = ``kappa_true``: ``((z_α √Q₀ + z_β √Q₁) / (κ₁ − κ₀))²``."""
    z_alpha = norm.ppf(1 - alpha / (2 if two_sided else 1))
    q_null = kappa_variance(kappa_cells(kappa_null, rate_first, rate_second))
    q_true = kappa_variance(kappa_cells(kappa_true, rate_first, rate_second))
    return float(((z_alpha * np.sqrt(q_null) + norm.ppf(power) * np.sqrt(q_true)) / (kappa_true - kappa_null)) ** 2)


def donner_eliasziw_rows(
    kappa_null: float, kappa_true: float, prevalence: float, *, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Donner and Eliasziw (1992): independent rows for the goodness-of-fit test (χ², 1
    degree of freedom, two-sided) of κ = ``kappa_null`` against ``kappa_true``, for two
    raters with a common positive rate ``prevalence``: the non-centrality that gives
    ``power`` over the per-row non-centrality of the three outcomes (both negative, one
    positive, both positive)."""

    def outcomes(kappa: float) -> np.ndarray:
        spread = prevalence * (1 - prevalence)
        return np.array(
            [(1 - prevalence) ** 2 + kappa * spread, 2 * (1 - kappa) * spread, prevalence**2 + kappa * spread]
        )

    null, true = outcomes(kappa_null), outcomes(kappa_true)
    per_row = float(np.sum((true - null) ** 2 / null))
    critical = chi2.ppf(1 - alpha, 1)
    noncentrality = brentq(lambda lam: ncx2.sf(critical, 1, lam) - power, 1e-9, 1e4)
    return noncentrality / per_row

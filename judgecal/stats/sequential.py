"""An anytime-valid confidence sequence for a mean in [0, 1], to re-check a judge batch
after batch and look as often as one likes.

The bounds are the betting confidence sequence of Waudby-Smith & Ramdas (2024, JRSS-B),
one-sided, written here because no installed package provides it (``confseq`` is not
installed). Its bets are sized like their aGRAPA bets, on a recent mean rather than the
mean of everything so far, so that a judge that gets worse after a long good stretch is
caught soon after (any predictable bet keeps the guarantee). For each candidate mean ``m`` a bettor who
wagers that the observations run below ``m`` multiplies its capital by
``1 + λ_t (m − x_t)`` at each observation; while the observations' conditional mean is at
least ``m`` that capital is a non-negative supermartingale, so by Ville's inequality it
ever reaches ``1/α`` with probability at most ``α``. The upper bound after ``t``
observations is the largest ``m`` not yet rejected at any time so far, so it only moves
down, and ``P(the mean ever lies above it) ≤ α`` however often it is looked at. The lower
bound is the mirror image, for display.

Each observation must be bounded in [0, 1] and its conditional mean (given everything
before it) must be the quantity tested; observations need not be identically distributed.
Rows of one prompt are not independent, so callers pass one observation per group (the
share of that group's rows the judge got right), never one per row. A selective judge's
monitor follows several such sequences (:func:`selective_observations`); each is run at
``alpha`` divided by their number (Bonferroni), so that the chance that any of them ever
raises a false alarm stays at most ``alpha``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from judgecal.stats.uncertainty import DEFAULT_RESAMPLES, Estimate, group_bootstrap

DEFAULT_ALPHA = 0.05

# Candidate means the bounds are searched over: steps of 0.002.
GRID = np.linspace(0.0, 1.0, 501)

# At most this share of the capital is wagered (c in Waudby-Smith & Ramdas, section 5).
MAX_BET_SHARE = 0.5

# A bettor sizes its bet by the mean of about the last RECENT observations (an exponential
# weight halving every RECENT), so a judge that was good for long and then got worse is
# bet against soon after, not once the mean of all it ever did falls.
RECENT = 5
PRIOR_WEIGHT = 2.0


class SequenceBounds(BaseModel):
    """The confidence sequence after each observation: ``upper[t]`` and ``lower[t]`` hold
    with probability at least ``1 - alpha`` each, at every ``t`` at once."""

    model_config = ConfigDict(frozen=True)

    alpha: float
    mean: list[float] = Field(description="Running mean of the observations.")
    lower: list[float]
    upper: list[float]


def _recent_means(x: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Per grid value ``m`` and time ``t``, the mean of the observations before ``t``,
    recent ones weighted most (half-weight after ``RECENT`` observations), shrunk towards
    ``m`` itself by ``PRIOR_WEIGHT`` observations: a bettor starts with no bet."""
    from scipy.signal import lfilter

    decay = 0.5 ** (1 / RECENT)
    sums = lfilter([1.0], [1.0, -decay], x)
    weights = lfilter([1.0], [1.0, -decay], np.ones_like(x))
    sums_before = np.concatenate([[0.0], sums[:-1]])
    weights_before = np.concatenate([[0.0], weights[:-1]])
    return (PRIOR_WEIGHT * grid[:, None] + sums_before[None, :]) / (PRIOR_WEIGHT + weights_before[None, :])


def _variances(x: np.ndarray) -> np.ndarray:
    """σ̂²_{t-1} of Waudby-Smith & Ramdas (eq. 26): the observations' spread before ``t``,
    starting from 1/4."""
    t = np.arange(1, len(x) + 1)
    mean = (0.5 + np.cumsum(x)) / (t + 1)
    spread = (0.25 + np.cumsum((x - mean) ** 2)) / (t + 1)
    return np.concatenate([[0.25], spread[:-1]])


def _log_capital(x: np.ndarray, grid: np.ndarray, *, below: bool) -> np.ndarray:
    """log capital after each observation (grid × time) of a bettor wagering that the mean
    is below each grid value (``below``) or above it. Its bet is predictable: the
    growth-rate-optimal share for the recent mean it saw (aGRAPA's form,
    ``gap / (σ² + gap²)``), nothing while recent observations sit on the other side, and at
    most ``MAX_BET_SHARE``, so a factor never falls under ``1 - MAX_BET_SHARE``."""
    recent = _recent_means(x, grid)
    gap = (grid[:, None] - recent) if below else (recent - grid[:, None])
    bets = np.clip(gap / (_variances(x)[None, :] + gap**2), 0.0, MAX_BET_SHARE)
    edge = (grid[:, None] - x[None, :]) if below else (x[None, :] - grid[:, None])
    return np.cumsum(np.log1p(bets * edge), axis=1)


def confidence_sequence(
    observations: np.ndarray | list[float], *, alpha: float = DEFAULT_ALPHA, grid: np.ndarray = GRID
) -> SequenceBounds:
    """One-sided upper and lower bounds on the mean after each observation, each holding at
    every time at once with probability ``1 - alpha``; both only ever tighten."""
    x = np.clip(np.asarray(observations, dtype=float), 0.0, 1.0)
    if len(x) == 0:
        return SequenceBounds(alpha=alpha, mean=[], lower=[], upper=[])
    threshold = np.log(1 / alpha)
    rejected_above = np.maximum.accumulate(_log_capital(x, grid, below=True) >= threshold, axis=1)
    rejected_below = np.maximum.accumulate(_log_capital(x, grid, below=False) >= threshold, axis=1)
    upper = np.array([_largest_kept(grid, ~rejected_above[:, t]) for t in range(len(x))])
    lower = np.array([_smallest_kept(grid, ~rejected_below[:, t]) for t in range(len(x))])
    lower = np.minimum(lower, upper)  # a crossing (possible only by chance) shows as one point
    mean = np.cumsum(x) / np.arange(1, len(x) + 1)
    return SequenceBounds(alpha=alpha, mean=mean.tolist(), lower=lower.tolist(), upper=upper.tolist())


def _largest_kept(grid: np.ndarray, kept: np.ndarray) -> float:
    return float(grid[kept].max()) if kept.any() else 0.0


def _smallest_kept(grid: np.ndarray, kept: np.ndarray) -> float:
    return float(grid[kept].min()) if kept.any() else 1.0


def grid_with(level: float, grid: np.ndarray = GRID) -> np.ndarray:
    """The grid with ``level`` on it, so that an upper bound below ``level`` means that
    ``level`` itself was rejected (the guarantee is about it, not its neighbours)."""
    return np.union1d(grid, [level])


def first_alarm(
    observations: np.ndarray | list[float], level: float, *, alpha: float = DEFAULT_ALPHA, grid: np.ndarray = GRID
) -> int:
    """The first observation (1-based) after which the upper bound of
    :func:`confidence_sequence` (on :func:`grid_with` ``level``) is below ``level``; 0 if
    it never is. While the mean stays at or above ``level`` this happens with probability
    at most ``alpha``. Only candidates at or above ``level`` are computed."""
    x = np.clip(np.asarray(observations, dtype=float), 0.0, 1.0)
    if len(x) == 0:
        return 0
    candidates = grid_with(level, grid)
    candidates = candidates[candidates >= level]
    capital = _log_capital(x, candidates, below=True)
    rejected = np.maximum.accumulate(capital >= np.log(1 / alpha), axis=1).all(axis=0)
    hits = np.flatnonzero(rejected)
    return int(hits[0]) + 1 if len(hits) else 0


def sequence_alpha(alpha: float, sequences: int) -> float:
    """The error level each of ``sequences`` confidence sequences followed together runs at
    (Bonferroni): the chance that any of them ever raises a false alarm is at most the sum
    of theirs, ``alpha``. No assumption on how the sequences depend on each other (a
    selective judge's precisions and coverage are measured on the same rows)."""
    return alpha / sequences


def group_shares(correct: np.ndarray | list[bool], groups: list[str]) -> list[float]:
    """One observation per group, in the order groups first appear: the share of its rows
    that were right. Rows of one prompt are not independent; groups are taken to be."""
    order: dict[str, list[bool]] = {}
    for ok, group in zip(correct, groups, strict=True):
        order.setdefault(group, []).append(bool(ok))
    return [float(np.mean(values)) for values in order.values()]


def selective_observations(
    said: Sequence[str | None], human: Sequence[str], groups: Sequence[str], verdicts: Sequence[str]
) -> dict[str, list[float]]:
    """A selective judge's observations on one batch, one per group, for each sequence its
    monitor follows beside agreement: ``precision.<verdict>``, per group where the verdict
    was given, the share of the rows given it that people agree with (a group where it was
    not given says nothing about it); ``coverage``, per group, the share of its rows
    answered. ``said``: the verdict per row as spelled in JSON, None where the judge
    abstained; ``human``: the label per row, spelled alike."""
    out = {}
    for verdict in verdicts:
        given = [i for i, s in enumerate(said) if s == verdict]
        out[f"precision.{verdict}"] = group_shares([human[i] == verdict for i in given], [groups[i] for i in given])
    out["coverage"] = group_shares([s is not None for s in said], list(groups))
    return out


def group_share_estimate(
    correct: np.ndarray | list[bool], groups: list[str], *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> Estimate:
    """The mean over groups of :func:`group_shares`, the quantity a monitor's sequence
    tracks, with its 95% group-bootstrap interval: its low end is the level a judge's own
    test rows support (row-weighted agreement is another quantity when groups differ in
    size and in how often the judge is right on them)."""
    shares = np.array(group_shares(correct, groups))
    if len(shares) < 2:
        nan = float("nan")
        return Estimate(value=float(shares.mean()) if len(shares) else nan, low=nan, high=nan)
    low, high = group_bootstrap(
        lambda sample: shares[sample].mean(axis=-1)[None, :],
        len(shares),
        vectorized=True,
        n_resamples=n_resamples,
        seed=seed,
    )
    return Estimate(value=float(shares.mean()), low=float(low[0]), high=float(high[0]))

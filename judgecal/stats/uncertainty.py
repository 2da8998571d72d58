"""Intervals that respect how the data was collected.

Rows of one prompt (or one user) are not independent, so intervals come from a bootstrap
over groups: each resample draws whole groups with replacement. Resampling is done by
``scipy.stats.bootstrap`` on the vector of group codes; the statistic turns a resample of
groups into the rows they hold. Every statistic computed with the same seed sees the same
resamples, so intervals of a judge, of another judge and of their difference are paired.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy.stats import binomtest, bootstrap

DEFAULT_RESAMPLES = 2000


CONFIDENCE = 0.95


class Estimate(BaseModel):
    """A point estimate with its group-bootstrap interval."""

    model_config = ConfigDict(frozen=True)

    value: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)

    def __str__(self) -> str:
        if np.isnan(self.value):
            return "n/a"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass(frozen=True)
class GroupIndex:
    """Rows by group: which rows each resampled group brings along."""

    codes: np.ndarray  # group code per row
    members: tuple[np.ndarray, ...]  # row indices per group

    @classmethod
    def from_groups(cls, groups: Sequence[str]) -> GroupIndex:
        lookup: dict[str, int] = {}
        codes = np.array([lookup.setdefault(g, len(lookup)) for g in groups], dtype=np.int64)
        members = tuple(np.flatnonzero(codes == g) for g in range(len(lookup)))
        return cls(codes=codes, members=members)

    @property
    def n_groups(self) -> int:
        return len(self.members)

    def rows(self, group_sample: np.ndarray) -> np.ndarray:
        return np.concatenate([self.members[g] for g in group_sample]) if len(group_sample) else np.array([], int)


def group_bootstrap(
    statistic: Callable[..., np.ndarray],
    n_groups: int,
    *,
    vectorized: bool,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
    batch: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of each output of ``statistic(group_codes)`` over group resamples.

    With ``vectorized=True`` the statistic receives a (resamples, groups) array and an
    ``axis`` keyword, and returns (outputs, resamples); otherwise one resample at a time.
    Outputs that are NaN in some resamples get intervals from the resamples where they
    are defined.
    """
    if n_groups < 2:
        raise ValueError("a group bootstrap needs at least 2 groups")
    data = (np.arange(n_groups),)
    if vectorized:

        def wrapped(sample: np.ndarray, axis: int = -1) -> np.ndarray:
            return np.asarray(statistic(np.moveaxis(sample, axis, -1)))
    else:

        def wrapped(sample: np.ndarray) -> np.ndarray:
            return np.asarray(statistic(sample))

    with warnings.catch_warnings():
        # scipy warns when a resampled statistic is constant or NaN; the percentiles below
        # are computed from the defined resamples and a constant statistic has a point interval.
        warnings.simplefilter("ignore")
        result = bootstrap(
            data,
            wrapped,
            n_resamples=n_resamples,
            vectorized=vectorized,
            method="percentile",
            confidence_level=confidence,
            rng=np.random.default_rng(seed),
            batch=batch,
        )
    distribution = np.atleast_2d(result.bootstrap_distribution)
    tail = (1 - confidence) / 2 * 100
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low = np.nanpercentile(distribution, tail, axis=-1)
        high = np.nanpercentile(distribution, 100 - tail, axis=-1)
    return low, high


def row_bootstrap_interval(
    values: np.ndarray, *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Percentile interval of a mean resampling rows as if independent (for comparison only)."""
    result = bootstrap(
        (np.asarray(values, float),),
        np.mean,
        n_resamples=n_resamples,
        method="percentile",
        confidence_level=confidence,
        rng=np.random.default_rng(seed),
        vectorized=True,
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


class McNemar(BaseModel):
    """Exact McNemar test on paired correctness: did the two judges err on different rows
    more often in one direction than chance allows? (Rows are treated as independent.)"""

    model_config = ConfigDict(frozen=True)

    only_first_correct: int
    only_second_correct: int
    p_value: float


def mcnemar_exact(first_correct: np.ndarray, second_correct: np.ndarray) -> McNemar:
    first_correct = np.asarray(first_correct, bool)
    second_correct = np.asarray(second_correct, bool)
    b = int((first_correct & ~second_correct).sum())
    c = int((~first_correct & second_correct).sum())
    p_value = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return McNemar(only_first_correct=b, only_second_correct=c, p_value=p_value)

"""Group-bootstrap intervals: coverage on clustered data, pairing, and McNemar."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from judgecal.stats.metrics import BINARY_SPACE, confusion_by_group, metrics_from_confusion
from judgecal.stats.uncertainty import GroupIndex, group_bootstrap, mcnemar_exact, row_bootstrap_interval

TRUE_ACCURACY = 0.7


def clustered_sample(rng: np.random.Generator, n_groups: int = 30, per_group: int = 20):
    """Humans say yes on 30% of rows; the judge is right with a probability that varies
    strongly from group to group (mean 0.7): rows of a group are far from independent."""
    skill = rng.beta(2.1, 0.9, size=n_groups)  # mean 0.7, sd 0.23
    groups = np.repeat(np.arange(n_groups), per_group)
    human = rng.uniform(size=groups.size) < 0.3
    right = rng.uniform(size=groups.size) < skill[groups]
    judge = np.where(right, human, ~human)
    return groups, human, judge


def accuracy_interval(groups: np.ndarray, human: np.ndarray, judge: np.ndarray, seed: int) -> tuple[float, float]:
    """The interval the reports compute: resampled groups → confusion matrix → metric."""
    per_group = confusion_by_group(
        BINARY_SPACE.index(list(human)), BINARY_SPACE.index(list(judge)), groups, BINARY_SPACE.size
    )

    def statistic(sample: np.ndarray) -> np.ndarray:
        return metrics_from_confusion(per_group[sample].sum(axis=-3), BINARY_SPACE)["accuracy"][None]

    low, high = group_bootstrap(statistic, per_group.shape[0], vectorized=True, n_resamples=1000, seed=seed)
    return float(low[0]), float(high[0])


def test_group_bootstrap_covers_the_true_value_and_a_row_bootstrap_does_not() -> None:
    """Over 300 simulated test sets the group interval should cover the true accuracy about
    95% of the time. Percentile intervals from 30 groups run slightly narrow, and 300
    draws have a standard error of 1.3 points, so the test accepts 0.90-0.985. A row
    bootstrap ignores the clustering and must fall clearly short (below 0.85)."""
    rng = np.random.default_rng(2026)
    group_hits = row_hits = 0
    simulations = 300
    for seed in range(simulations):
        groups, human, judge = clustered_sample(rng)
        low, high = accuracy_interval(groups, human, judge, seed)
        group_hits += low <= TRUE_ACCURACY <= high
        row_low, row_high = row_bootstrap_interval((human == judge).astype(float), n_resamples=1000, seed=seed)
        row_hits += row_low <= TRUE_ACCURACY <= row_high
    group_coverage = group_hits / simulations
    row_coverage = row_hits / simulations
    print(
        f"coverage of 95% intervals, 300 sets: group bootstrap {group_coverage:.1%}, row bootstrap {row_coverage:.1%}"
    )
    assert 0.90 <= group_coverage <= 0.985, group_coverage
    assert row_coverage < 0.85, row_coverage


def test_resamples_are_paired_across_statistics_with_the_same_seed() -> None:
    """Two different statistics (two judges' accuracies, say) bootstrapped with one seed see
    the same group resamples in the same order, so their intervals and the interval of their
    difference are paired; another seed draws other resamples."""
    seen: dict[str, list[tuple[int, ...]]] = {"mean": [], "max": [], "other seed": []}
    values = np.arange(12, dtype=float) ** 2

    def recording(name: str, reduce):
        def statistic(sample: np.ndarray) -> np.ndarray:
            seen[name].append(tuple(int(g) for g in sample))
            return np.array([reduce(values[sample])])

        return statistic

    group_bootstrap(recording("mean", np.mean), 12, vectorized=False, n_resamples=200, seed=7)
    group_bootstrap(recording("max", np.max), 12, vectorized=False, n_resamples=200, seed=7)
    group_bootstrap(recording("other seed", np.mean), 12, vectorized=False, n_resamples=200, seed=8)
    assert len(seen["mean"]) >= 200
    assert seen["mean"] == seen["max"]
    assert seen["mean"] != seen["other seed"]


def test_group_index_keeps_rows_of_a_group_together() -> None:
    index = GroupIndex.from_groups(["b", "a", "b", "c", "a"])
    assert index.n_groups == 3
    assert sorted(index.rows(np.array([0, 0])).tolist()) == [0, 0, 2, 2]


def test_mcnemar_is_the_exact_binomial_test_on_discordant_rows() -> None:
    first = np.array([1, 1, 1, 0, 0, 0, 0, 1, 1, 0], bool)
    second = np.array([1, 0, 1, 1, 1, 1, 1, 1, 0, 1], bool)
    result = mcnemar_exact(first, second)
    assert (result.only_first_correct, result.only_second_correct) == (2, 5)
    assert result.p_value == pytest.approx(binomtest(2, 7, 0.5).pvalue)
    assert mcnemar_exact(first, first).p_value == 1.0

"""The monitor's confidence sequence: a stable judge alarms in at most alpha of many
streams however often it is looked at, a judge that got worse is caught, and one
observation per group (not per row) is what keeps the error level when rows of a prompt
agree together."""

from __future__ import annotations

import numpy as np
import pytest

from judgecal.stats.sequential import (
    confidence_sequence,
    first_alarm,
    grid_with,
    group_shares,
    selective_observations,
    sequence_alpha,
)

ALPHA = 0.05
STREAMS = 400
BATCHES = 30
GROUPS = 8  # prompts per batch
ROWS = 5  # rows per prompt


def simulate(rng: np.random.Generator, agreement: np.ndarray, *, spread: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """Per batch, per group: the share of its rows a judge got right, and per row whether it
    did. Each prompt has its own chance (beta around the batch's agreement), so rows of a
    prompt agree together."""
    mean = np.repeat(agreement, GROUPS)
    chance = rng.beta(mean * spread, (1 - mean) * spread)
    right = rng.random((len(chance), ROWS)) < chance[:, None]
    return right.mean(axis=1), right.ravel()


def test_a_stable_judge_alarms_in_at_most_alpha_of_the_streams() -> None:
    rng = np.random.default_rng(0)
    level = 0.8
    alarms = [first_alarm(simulate(rng, np.full(BATCHES, level))[0], level, alpha=ALPHA) > 0 for _ in range(STREAMS)]
    share = float(np.mean(alarms))
    print(f"stable judge at the level: {share:.3f} of {STREAMS} streams of {BATCHES} batches ever alarmed")
    assert share <= ALPHA  # these draws: 0.003


def test_one_observation_per_row_would_break_the_error_level() -> None:
    """The same streams fed row by row, as if rows of a prompt were independent, alarm far
    more often than alpha: why the monitor counts groups."""
    rng = np.random.default_rng(0)
    level = 0.8
    alarms = [
        first_alarm(simulate(rng, np.full(BATCHES, level), spread=1.0)[1], level, alpha=ALPHA) > 0 for _ in range(100)
    ]
    share = float(np.mean(alarms))
    print(f"row by row, prompts strongly alike: {share:.3f} of 100 streams alarmed")
    assert share > 2 * ALPHA


def test_a_drop_of_ten_points_is_caught_after_it_happens() -> None:
    rng = np.random.default_rng(1)
    level, drop_at = 0.8, 10
    delays = []
    for _ in range(100):
        agreement = np.where(np.arange(BATCHES) < drop_at, level, level - 0.1)
        alarm = first_alarm(simulate(rng, agreement)[0], level, alpha=ALPHA)
        delays.append(np.inf if alarm == 0 else int(np.ceil(alarm / GROUPS)) - drop_at)
    delays_ = np.array(delays)
    caught = float(np.mean(np.isfinite(delays_) & (delays_ > 0)))
    print(f"drop at batch {drop_at}: caught in {caught:.2f} of streams, median delay {np.median(delays_):.0f} batches")
    assert caught >= 0.8
    assert np.mean(delays_ <= 0) <= ALPHA  # alarms before the drop are false ones


def test_the_bounds_only_tighten_and_the_alarm_is_the_upper_bound_below_the_level() -> None:
    rng = np.random.default_rng(2)
    x = simulate(rng, np.r_[np.full(10, 0.8), np.full(20, 0.6)])[0]
    bounds = confidence_sequence(x, alpha=ALPHA, grid=grid_with(0.8))
    assert np.all(np.diff(bounds.upper) <= 0) and np.all(np.diff(bounds.lower) >= 0)
    assert all(lo <= up for lo, up in zip(bounds.lower, bounds.upper, strict=True))
    below = [t + 1 for t, upper in enumerate(bounds.upper) if upper < 0.8]
    assert below and below[0] == first_alarm(x, 0.8, alpha=ALPHA)


@pytest.mark.parametrize("mean", [0.3, 0.9])
def test_the_bounds_cover_the_mean_of_a_long_stream(mean: float) -> None:
    x = np.random.default_rng(3).binomial(1, mean, 2000).astype(float)
    bounds = confidence_sequence(x, alpha=ALPHA)
    assert bounds.lower[-1] <= mean <= bounds.upper[-1]
    assert bounds.upper[-1] - bounds.lower[-1] < 0.15


def test_group_shares_keep_the_order_groups_first_appear_in() -> None:
    assert group_shares([True, False, True, True], ["b", "a", "b", "a"]) == [1.0, 0.5]


def selective_stream(
    rng: np.random.Generator, precision: dict[str, np.ndarray], coverage: float, *, say_true: float = 0.3
) -> dict[str, list[float]]:
    """A selective judge's observations over a stream, counted as its monitor counts them
    (``selective_observations``, batch by batch): each prompt has its own chance of being
    answered (beta around ``coverage``) and, per verdict, its own chance that people agree
    with it (beta around that verdict's precision in the batch); an answer says 'true'
    with chance ``say_true``."""
    streams: dict[str, list[float]] = {}
    for batch in range(len(precision["true"])):
        answered = rng.random((GROUPS, ROWS)) < rng.beta(coverage * 8, (1 - coverage) * 8, GROUPS)[:, None]
        says_true = rng.random((GROUPS, ROWS)) < say_true
        chance = {v: rng.beta(p[batch] * 8, (1 - p[batch]) * 8, GROUPS)[:, None] for v, p in precision.items()}
        right = np.where(
            says_true, rng.random((GROUPS, ROWS)) < chance["true"], rng.random((GROUPS, ROWS)) < chance["false"]
        )
        said = np.where(answered, np.where(says_true, "true", "false"), None).ravel().tolist()
        human = np.where(right == says_true, "true", "false").ravel().tolist()
        groups = np.repeat([f"b{batch}g{g}" for g in range(GROUPS)], ROWS).tolist()
        for name, values in selective_observations(said, human, groups, ["true", "false"]).items():
            streams.setdefault(name, []).extend(values)
        agreement = [right.ravel()[i] for i, s in enumerate(said) if s is not None]
        streams.setdefault("agreement", []).extend(
            group_shares(agreement, [groups[i] for i, s in enumerate(said) if s is not None])
        )
    return streams


SELECTIVE_LEVELS = {"agreement": 0.7, "precision.true": 0.7, "precision.false": 0.9, "coverage": 0.6}


def alarmed(streams: dict[str, list[float]], alpha: float) -> list[str]:
    """The sequences whose upper bound ever fell below their level, each at ``alpha``."""
    return [name for name, x in streams.items() if first_alarm(x, SELECTIVE_LEVELS[name], alpha=alpha) > 0]


def test_a_stable_selective_judge_alarms_in_at_most_alpha_of_the_streams_over_all_its_sequences() -> None:
    """Each verdict's precision and the coverage stay at their levels (the hardest case):
    the monitor follows four sequences, each at alpha / 4, and the share of streams where
    any of them ever alarms stays at most alpha."""
    rng = np.random.default_rng(4)
    each = sequence_alpha(ALPHA, len(SELECTIVE_LEVELS))
    precision = {"true": np.full(20, 0.7), "false": np.full(20, 0.9)}
    fell = [alarmed(selective_stream(rng, precision, 0.6), each) for _ in range(200)]
    share = float(np.mean([bool(names) for names in fell]))
    print(f"stable selective judge: {share:.3f} of 200 streams ever alarmed, each sequence at {each}")
    assert each == ALPHA / 4 and share <= ALPHA

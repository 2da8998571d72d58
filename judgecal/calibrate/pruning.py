"""Pruning a trial that calls the model: stop judging dev once its per-row scores are
clearly worse, on average, than the best judge's so far on the same rows."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
from scipy import stats


class PairedMeanPruner(optuna.pruners.BasePruner):
    """Prunes a trial whose mean per-row dev score is below the best trial's on the same
    rows by a one-sided paired t-test. Steps are dev row indices, judged in an order that
    interleaves groups, so the rows reported so far are a grouped sample of dev.

    The best trial is the best judge of any strategy found so far: the search runs the
    strategies that make no LM calls first, so an LM trial is compared from its first rows.
    Looks come at rungs growing threefold, as in successive halving: before
    ``n_startup_steps`` (a third of dev) at ``rungs`` (a ninth, a twenty-seventh, ...),
    tested at a level spent in proportion to the rows seen (``p_threshold`` times the rung
    over the third: an early look needs a much clearer loss), then at ``p_threshold``
    after every chunk, as before. Each rung is tested once, on the first report that
    reaches it (reports come every ``chunk`` rows).

    Not Optuna's ``WilcoxonPruner``: per-row scores are class-weighted right-or-wrong,
    so a model that answers "no" to every row gains a little on each negative the best
    trial gets wrong and loses a lot on each positive it gets right. A signed-rank test
    sees about as many gains as losses and keeps such a trial (p 0.54 on 624 dev rows of
    the shared relevance file, means 0.50 against 0.71); the mean, which the selection
    score follows, shows it is worse."""

    def __init__(
        self, p_threshold: float = 0.1, n_startup_steps: int = 2, *, rungs: tuple[int, ...] = (), chunk: int = 1
    ) -> None:
        self.p_threshold = p_threshold
        self.n_startup_steps = n_startup_steps
        self.rungs = rungs
        self.chunk = chunk

    @classmethod
    def for_dev(cls, dev_rows: int, chunk: int, p_threshold: float) -> PairedMeanPruner:
        """Rungs at a third of dev, then a ninth, a twenty-seventh... down to the first chunk
        of at least ``LEAST_RUNG`` rows."""
        warm_up = max(2, math.ceil(dev_rows / 3))
        rungs: list[int] = []
        rung = warm_up / 3
        while rung >= max(LEAST_RUNG, chunk):
            rungs.append(math.ceil(rung))
            rung /= 3
        return cls(p_threshold, warm_up, rungs=tuple(sorted(rungs)), chunk=chunk)

    def level(self, reported: int) -> float | None:
        """The test's level with ``reported`` rows seen, or ``None``: no look there."""
        if reported >= self.n_startup_steps:
            return self.p_threshold
        for rung in self.rungs:
            if rung <= reported < rung + self.chunk:
                return self.p_threshold * rung / self.n_startup_steps
        return None

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        values = trial.intermediate_values
        level = self.level(len(values))
        if level is None or len(values) < 2:
            return False
        best = _best_trial(study)
        if best is None or best.number == trial.number:
            return False
        theirs = dev_row_scores(best)
        common = sorted(values.keys() & theirs.keys())
        if len(common) < 2 or self.level(len(common)) is None:
            return False
        diff = np.array([values[step] - theirs[step] for step in common])
        if diff.mean() >= 0:
            return False
        if np.ptp(diff) == 0:  # the same loss on every row: nothing to test
            return True
        return bool(stats.ttest_1samp(diff, 0.0, alternative="less").pvalue < level)


# The user attribute holding a cross-validated trial's per-row dev scores, by dev index.
DEV_ROW_SCORES = "dev_row_scores"


def dev_row_scores(trial: optuna.trial.FrozenTrial) -> dict[int, float]:
    """A trial's per-row dev scores by dev index: an LM trial's reports as it judged dev, or
    a cross-validated trial's, kept in one attribute (each report is a commit of its own
    to the study's storage: 10,016 of them took 164 s of one search on SQLite)."""
    kept = trial.user_attrs.get(DEV_ROW_SCORES)
    if kept is not None:
        return dict(enumerate(kept))
    return dict(trial.intermediate_values)


# The fewest rows an early rung looks at: fewer say little about a judge.
LEAST_RUNG = 16


def _best_trial(study: optuna.Study) -> Any:
    try:
        return study.best_trial
    except ValueError:  # no trial has completed yet
        return None

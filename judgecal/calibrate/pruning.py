"""Pruning a trial that calls the model: stop judging dev once its per-row scores are
clearly worse, on average, than the best trial's on the same rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from scipy import stats


class PairedMeanPruner(optuna.pruners.BasePruner):
    """Prunes a trial whose mean per-row dev score is below the best trial's on the same
    rows by a one-sided paired t-test at ``p_threshold``, once it has reported
    ``n_startup_steps`` rows (steps are dev row indices).

    Not Optuna's ``WilcoxonPruner``: per-row scores are class-weighted right-or-wrong,
    so a model that answers "no" to every row gains a little on each negative the best
    trial gets wrong and loses a lot on each positive it gets right. A signed-rank test
    sees about as many gains as losses and keeps such a trial (p 0.54 on 624 dev rows of
    the shared relevance file, means 0.50 against 0.71); the mean, which the selection
    score follows, shows it is worse."""

    def __init__(self, p_threshold: float = 0.1, n_startup_steps: int = 2) -> None:
        self.p_threshold = p_threshold
        self.n_startup_steps = n_startup_steps

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        values = trial.intermediate_values
        if len(values) < self.n_startup_steps:
            return False
        best = _best_trial(study)
        if best is None or best.number == trial.number:
            return False
        common = sorted(values.keys() & best.intermediate_values.keys())
        if len(common) < self.n_startup_steps:
            return False
        diff = np.array([values[step] - best.intermediate_values[step] for step in common])
        if diff.mean() >= 0:
            return False
        if np.ptp(diff) == 0:  # the same loss on every row: nothing to test
            return True
        return bool(stats.ttest_1samp(diff, 0.0, alternative="less").pvalue < self.p_threshold)


def _best_trial(study: optuna.Study) -> Any:
    try:
        return study.best_trial
    except ValueError:  # no trial has completed yet
        return None

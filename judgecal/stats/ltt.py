"""Learn then Test as judgecal uses it: MAPIE 1.6's risk controllers over candidate
thresholds, one family of tests per verdict, with precision risks whose rows may be
counted through their design effect, and a Holm procedure that survives undefined
p-values. :mod:`judgecal.stats.selective` chooses a band from what these find valid.

MAPIE is imported inside each function: loading and applying a band never needs it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np


def effective_rows(selected: np.ndarray, correct: np.ndarray, codes: np.ndarray) -> int:
    """How many independent rows the precision over ``selected`` rows is worth when rows of
    one group (prompt) share an error: their count divided by the design effect (the
    cluster-robust variance of the ratio over its binomial variance, at least 1)."""
    selected = np.asarray(selected, bool)
    n = int(selected.sum())
    if n == 0:
        return -1
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    if n_groups < 2:
        return 1  # one prompt: nothing says how prompts differ
    answered = np.bincount(codes, weights=selected.astype(float), minlength=n_groups)
    right = np.bincount(codes, weights=(selected & correct).astype(float), minlength=n_groups)
    precision = right.sum() / answered.sum()
    v_cluster = n_groups / (n_groups - 1) * np.sum((right - precision * answered) ** 2) / answered.sum() ** 2
    v_binomial = max(precision * (1 - precision), 1e-12) / answered.sum()
    return max(1, int(np.floor(n / max(1.0, v_cluster / v_binomial))))


def _precision_risks(verdicts: Sequence[int], codes: np.ndarray | None, *, binary: bool) -> list[Any]:
    """MAPIE's precision of each verdict (binary: ``precision`` for 1, ``negative_predictive_value``
    for 0; otherwise one-vs-rest, ``build_precision_ovr``), or, when ``codes`` (the group of
    each calibration row) are given, the same precision whose row count is divided by its
    design effect."""
    from mapie.risk_control.risks import BinaryRisk, build_precision_ovr, negative_predictive_value, precision

    if codes is None:
        if binary:
            return [precision if verdict == 1 else negative_predictive_value for verdict in verdicts]
        return build_precision_ovr(list(verdicts))

    class DesignEffectPrecision(BinaryRisk):
        """Precision of one verdict; its effective rows are the rows it was given on divided
        by their design effect (the same binomial test, on as many independent rows as they are worth)."""

        def __init__(self, verdict: int) -> None:
            super().__init__(
                risk_occurrence=lambda y_true, y_pred: y_pred.ravel() == y_true.ravel(),
                risk_condition=lambda y_true, y_pred: y_pred.ravel() == verdict,
                higher_is_better=True,
            )
            self.verdict = verdict

        def get_value_and_effective_sample_size(self, y_true: Any, y_pred: Any) -> tuple[float, int]:
            said = np.asarray(y_pred, float).ravel() == self.verdict
            correct = np.asarray(y_true, float).ravel() == np.asarray(y_pred, float).ravel()
            n_eff = effective_rows(said, correct, codes)
            if n_eff < 0:
                return 1, -1  # as MAPIE marks a risk with no rows: not controlled
            return float(1 - correct[said].mean()), n_eff

    return [DesignEffectPrecision(verdict) for verdict in verdicts]


def nan_safe_holm() -> Any:
    """Holm, with an undefined p-value (a verdict never given at that threshold) counted as
    1: MAPIE 1.6 returns NaN there, ``np.argmin`` picks the NaN first, and plain Holm then
    stops before testing anything (no valid threshold at all)."""
    from mapie.risk_control.fwer_control import FWERBonferroniHolm

    class NanSafeHolm(FWERBonferroniHolm):
        def run(self, p_values: np.ndarray, delta: float) -> np.ndarray:
            return super().run(np.nan_to_num(np.asarray(p_values, float), nan=1.0), delta)

    return NanSafeHolm()


def _as_proba(x: np.ndarray) -> np.ndarray:
    s = np.asarray(x, float).ravel()
    return np.column_stack([1 - s, s])


def _identity(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, float)


class Tested(NamedTuple):
    """What a family of tests found: the valid candidates (sorted), and each candidate's
    p-value in the candidates' order (1 where the verdict is never given)."""

    valid: list[float]
    p_values: list[float]


def _valid(controller: Any, x: np.ndarray, y: np.ndarray) -> Tested:
    """The candidates a controller finds valid. MAPIE's UserWarnings ("no predict parameters
    were found", "all predictions are either 0 or 1") are not shown: a band not found is
    reported with its shortfalls, and 0/1 scores are refused before a band is chosen."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        controller.calibrate(x, y)
    p_values = np.nan_to_num(np.asarray(controller.p_values, float).ravel(), nan=1.0)
    return Tested(sorted(float(v) for v in controller.valid_predict_params), p_values.tolist())


def valid_binary_thresholds(
    p: np.ndarray,
    y: np.ndarray,
    codes: np.ndarray | None,
    candidates: np.ndarray,
    verdict: int,
    target: float,
    level: float,
) -> Tested:
    """Thresholds at which "yes" (``verdict`` 1, given at ``p >= t``) or "no" (0, given at
    ``p < t``) has precision >= ``target``, all together with probability >= 1 - ``level``."""
    from mapie.risk_control import BinaryClassificationController

    [risk] = _precision_risks([verdict], codes, binary=True)
    controller = BinaryClassificationController(
        predict_function=_as_proba,
        risk=risk,
        target_level=float(target),
        confidence_level=1 - level,
        best_predict_param_choice="recall" if verdict == 1 else "predicted_positive_fraction",
        list_predict_params=candidates,
        fwer_method=nan_safe_holm(),
    )
    return _valid(controller, p, y)


def valid_label_thresholds(
    proba: np.ndarray,
    y: np.ndarray,
    codes: np.ndarray | None,
    candidates: np.ndarray,
    family: Sequence[int],
    targets: Sequence[float],
    level: float,
) -> Tested:
    """Thresholds t at which every label of ``family`` (given where it is the most likely
    and its probability >= t) has precision >= its target, together with probability >=
    1 - ``level`` (MAPIE takes the largest p-value over the family's labels)."""
    from mapie.risk_control import MultiClassificationLTTController

    controller = MultiClassificationLTTController(
        predict_function=_identity,
        risks=_precision_risks(family, codes, binary=False),
        target_level=[float(t) for t in targets],
        confidence_level=1 - level,
        list_predict_params=candidates,
        classes=np.arange(proba.shape[1]),
        fwer_method=nan_safe_holm(),
    )
    return _valid(controller, proba, y)

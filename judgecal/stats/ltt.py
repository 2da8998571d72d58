"""Learn then Test as judgecal uses it: MAPIE 1.6's risk controllers over candidate
thresholds, one family of tests per verdict, with precision risks whose rows may be
counted through their design effect, and the procedure over a family's candidates: Holm,
which survives undefined p-values, or a fixed sequence, most confident candidate first
among those given on enough rows to pass.
:mod:`judgecal.stats.selective` chooses a band from what these find valid.

MAPIE is imported inside each function: loading and applying a band never needs it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

Procedure = Literal["fixed-sequence", "holm"]


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


def fewest_rows(target: float, level: float) -> int:
    """The fewest rows on which a verdict right every time passes its test at ``level``: with
    no error both of MAPIE's Hoeffding-Bentkus p-values are ``target ** rows``. A candidate
    where the verdict is given on fewer rows can never pass, whatever their labels."""
    return max(1, int(np.ceil(np.log(level) / np.log(target) - 1e-9)))


def sequence(given: np.ndarray, fewest: int, *, descending: bool) -> np.ndarray:
    """The order a fixed sequence tests the candidates in: by their values, most confident
    first (``descending`` for a verdict given where the score is at least the threshold),
    leaving out those where the verdict is given on fewer than ``fewest`` rows (``given``:
    the rows per candidate). Read from the calibration rows' scores, never their labels."""
    order = np.arange(len(given))[::-1] if descending else np.arange(len(given))
    return order[np.asarray(given)[order] >= fewest]


def fixed_sequence(order: np.ndarray, starts: int) -> Any:
    """MAPIE's fixed-sequence test (``FWERFixedSequenceTesting``: ``starts`` equally spaced
    starts, each at delta / starts, each going on until a candidate fails) over the
    candidates in ``order`` (:func:`sequence`); a candidate left out of it is never valid.

    Wrapped rather than passed as it is: MAPIE orders a fixed sequence by whether the
    calibration rows' risks rise or fall along the candidates, which reads their labels;
    here the order is set before any label is read."""
    from mapie.risk_control.fwer_control import FWERFixedSequenceTesting, FWERProcedure

    class FixedSequence(FWERProcedure):
        def run(self, p_values: np.ndarray, delta: float) -> np.ndarray:
            if len(order) == 0:
                return np.array([], dtype=int)
            p = np.nan_to_num(np.asarray(p_values, float)[order], nan=1.0)
            inner = FWERFixedSequenceTesting(n_starts=min(starts, len(order)))
            return np.sort(order[inner.run(p, delta)])

        # MAPIE's step-by-step hooks: unused, ``run`` hands the whole sequence to MAPIE's own test.
        def _init_state(self, n_lambdas: int, delta: float) -> None:
            raise NotImplementedError

        def _select_next_hypothesis(self, p_values: np.ndarray) -> None:
            raise NotImplementedError

        def _local_significance_levels(self) -> np.ndarray:
            raise NotImplementedError

        def _update_on_reject(self, hypothesis_index: int) -> None:
            raise NotImplementedError

    return FixedSequence()


def family_test(procedure: Procedure, starts: int, order: np.ndarray) -> Any:
    """The procedure that controls the family-wise error over one verdict's candidates
    (``order``: a fixed sequence's, from :func:`sequence`)."""
    return nan_safe_holm() if procedure == "holm" else fixed_sequence(order, starts)


def method_words(procedure: Procedure, starts: int) -> str:
    """How a band's candidates were tested, as the guarantee's method line says it."""
    within = (
        "Holm within each verdict's family"
        if procedure == "holm"
        else f"a fixed sequence within each verdict's family (most confident candidate first, "
        f"{starts} {'start' if starts == 1 else 'starts'})"
    )
    return f"learn then test (MAPIE 1.6.0), Hoeffding-Bentkus p-values, {within}"


def recorded_test(procedure: Procedure, starts: int) -> dict[str, Any]:
    """A guarantee's record of the test: the starts only for a fixed sequence."""
    return {"procedure": procedure, "starts": starts if procedure == "fixed-sequence" else None}


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
    procedure: Procedure = "holm",
    starts: int = 1,
) -> Tested:
    """Thresholds at which "yes" (``verdict`` 1, given at ``p >= t``) or "no" (0, given at
    ``p < t``) has precision >= ``target``, all together with probability >= 1 - ``level``
    (``procedure`` over the candidates; a fixed sequence tests "yes" from the highest
    candidate down, "no" from the lowest up, from the first given on enough rows to pass)."""
    from mapie.risk_control import BinaryClassificationController

    [risk] = _precision_risks([verdict], codes, binary=True)
    given = np.array([np.sum(p >= t) if verdict == 1 else np.sum(p < t) for t in candidates])
    order = sequence(given, fewest_rows(target, level / starts), descending=verdict == 1)
    controller = BinaryClassificationController(
        predict_function=_as_proba,
        risk=risk,
        target_level=float(target),
        confidence_level=1 - level,
        best_predict_param_choice="recall" if verdict == 1 else "predicted_positive_fraction",
        list_predict_params=candidates,
        fwer_method=family_test(procedure, starts, order),
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
    procedure: Procedure = "holm",
    starts: int = 1,
) -> Tested:
    """Thresholds t at which every label of ``family`` (given where it is the most likely
    and its probability >= t) has precision >= its target, together with probability >=
    1 - ``level`` (MAPIE takes the largest p-value over the family's labels; a fixed
    sequence tests from the highest candidate down, from the first where every label of the
    family is given on enough rows to pass)."""
    from mapie.risk_control import MultiClassificationLTTController

    top = proba.argmax(axis=1)
    given = np.array([min(np.sum((top == k) & (proba[:, k] >= t)) for k in family) for t in candidates])
    order = sequence(given, max(fewest_rows(target, level / starts) for target in targets), descending=True)
    controller = MultiClassificationLTTController(
        predict_function=_identity,
        risks=_precision_risks(family, codes, binary=False),
        target_level=[float(t) for t in targets],
        confidence_level=1 - level,
        list_predict_params=candidates,
        classes=np.arange(proba.shape[1]),
        fwer_method=family_test(procedure, starts, order),
    )
    return _valid(controller, proba, y)

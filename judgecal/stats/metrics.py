"""Agreement between a judge's verdicts and human labels.

Label-based metrics are computed from confusion matrices, vectorised over any leading
axes, because the group bootstrap evaluates them on thousands of resampled matrices at
once; scikit-learn computes the same quantities from label arrays one at a time, and the
tests pin every formula here to scikit-learn on random inputs. Krippendorff's α comes
from the ``krippendorff`` package, rank correlations from SciPy, and the scores of
confidences (Brier, ROC-AUC) from scikit-learn; expected calibration error has no
implementation in those libraries and is written here.

Rows of a confusion matrix are human labels, columns are verdicts, and the last
category of both is ``INVALID``: a verdict the judge failed to give. It counts as a
disagreement in every metric (Krippendorff's α included, where it is a category of its
own) and is reported as ``invalid_rate``. No metric is set to a value by convention where
it is undefined, except κ of two raters using one category throughout (1, as documented).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

INVALID = "<invalid>"


BINARY_METRICS = (
    "kappa",
    "mcc",
    "alpha",
    "accuracy",
    "balanced_accuracy",
    "f1",
    "precision",
    "recall",
    "selected_rate",
    "human_rate",
    "selected_ratio",
    "invalid_rate",
)


CATEGORICAL_METRICS = ("kappa", "mcc", "alpha", "agreement", "balanced_accuracy", "invalid_rate")


ORDINAL_METRICS = (
    "weighted_kappa",
    "spearman",
    "kendall",
    "alpha",
    "agreement",
    "mean_difference",
    "invalid_rate",
)


@dataclass(frozen=True)
class LabelSpace:
    """The labels of a task in a fixed order, and how to read them."""

    labels: tuple[Any, ...]
    positive: Any = None
    ordinal: bool = False

    @property
    def size(self) -> int:
        """Number of categories including ``INVALID``."""
        return len(self.labels) + 1

    @property
    def kind(self) -> str:
        if self.ordinal:
            return "ordinal"
        return "binary" if self.positive is not None else "categorical"

    def index(self, values: Sequence[Any]) -> np.ndarray:
        """Category index of each value; ``None`` (no verdict) maps to ``INVALID``."""
        lookup = {label: i for i, label in enumerate(self.labels)}
        invalid = len(self.labels)
        out = np.empty(len(values), dtype=np.int64)
        for position, value in enumerate(values):
            if value is None:
                out[position] = invalid
            elif value in lookup:
                out[position] = lookup[value]
            else:
                raise ValueError(f"{value!r} is not one of the labels {self.labels}")
        return out

    def metric_names(self) -> tuple[str, ...]:
        return {"binary": BINARY_METRICS, "categorical": CATEGORICAL_METRICS, "ordinal": ORDINAL_METRICS}[self.kind]


def confusion(human: np.ndarray, judge: np.ndarray, size: int) -> np.ndarray:
    """Counts of (human, verdict) category pairs as a ``size`` × ``size`` matrix."""
    return np.bincount(human * size + judge, minlength=size * size).reshape(size, size).astype(float)


def confusion_by_group(human: np.ndarray, judge: np.ndarray, groups: np.ndarray, size: int) -> np.ndarray:
    """One confusion matrix per group code: shape (groups, size, size)."""
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    flat = groups * size * size + human * size + judge
    return np.bincount(flat, minlength=n_groups * size * size).reshape(n_groups, size, size).astype(float)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray, empty: float = 0.0) -> np.ndarray:
    numerator, denominator = np.broadcast_arrays(np.asarray(numerator, float), np.asarray(denominator, float))
    out = np.full(numerator.shape, empty, dtype=float)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def kappa_from_confusion(cm: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Cohen's κ (optionally weighted, weights = disagreement costs) over the leading axes.

    When both raters use one and the same category throughout, agreement is perfect and
    κ is 1 (scikit-learn returns NaN there).
    """
    n = cm.sum(axis=(-2, -1))
    size = cm.shape[-1]
    if weights is None:
        weights = 1.0 - np.eye(size)
    rows = cm.sum(axis=-1)
    cols = cm.sum(axis=-2)
    expected = _safe_divide(rows[..., :, None] * cols[..., None, :], n[..., None, None])
    observed_cost = (weights * cm).sum(axis=(-2, -1))
    expected_cost = (weights * expected).sum(axis=(-2, -1))
    kappa = 1.0 - _safe_divide(observed_cost, expected_cost, empty=np.nan)
    return np.where(expected_cost == 0, np.where(observed_cost == 0, 1.0, 0.0), kappa)


def mcc_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Matthews correlation (multiclass form, as scikit-learn); 0 when undefined."""
    n = cm.sum(axis=(-2, -1))
    correct = np.trace(cm, axis1=-2, axis2=-1)
    rows = cm.sum(axis=-1)
    cols = cm.sum(axis=-2)
    covariance = correct * n - (rows * cols).sum(axis=-1)
    spread = (n**2 - (cols**2).sum(axis=-1)) * (n**2 - (rows**2).sum(axis=-1))
    return _safe_divide(covariance, np.sqrt(spread))


def metrics_from_confusion(cm: np.ndarray, space: LabelSpace) -> dict[str, np.ndarray]:
    """Every label-based metric of the task's kind, over the leading axes of ``cm``."""
    n = cm.sum(axis=(-2, -1))
    size = space.size
    invalid = size - 1
    correct = np.trace(cm, axis1=-2, axis2=-1)
    rows = cm.sum(axis=-1)  # human label counts
    cols = cm.sum(axis=-2)  # verdict counts
    recall_per_class = _safe_divide(np.diagonal(cm, axis1=-2, axis2=-1), rows, empty=np.nan)[..., :invalid]
    present = rows[..., :invalid] > 0
    balanced = _safe_divide(np.where(present, recall_per_class, 0.0).sum(axis=-1), present.sum(axis=-1))
    out: dict[str, np.ndarray] = {
        "accuracy": _safe_divide(correct, n),
        "balanced_accuracy": balanced,
        "invalid_rate": _safe_divide(cols[..., invalid], n),
        "mcc": mcc_from_confusion(cm),
    }
    if space.kind == "ordinal":
        values = np.asarray(space.labels, dtype=float)
        spread = (values.max() - values.min()) or 1.0
        weights = np.zeros((size, size))
        weights[:invalid, :invalid] = ((values[:, None] - values[None, :]) / spread) ** 2
        weights[:invalid, invalid] = 1.0  # no verdict: the largest disagreement
        weights[invalid, :invalid] = 1.0
        out["weighted_kappa"] = kappa_from_confusion(cm, weights)
        out["agreement"] = out.pop("accuracy")
        judged = cols[..., :invalid]
        out["mean_difference"] = _safe_divide((judged * values).sum(axis=-1), judged.sum(axis=-1), np.nan) - (
            _safe_divide((rows[..., :invalid] * values).sum(axis=-1), rows[..., :invalid].sum(axis=-1), np.nan)
        )
        return out
    out["kappa"] = kappa_from_confusion(cm)
    if space.kind == "binary":
        p = space.labels.index(space.positive)
        true_positive = cm[..., p, p]
        selected = cols[..., p]
        actual = rows[..., p]
        precision = _safe_divide(true_positive, selected)
        recall = _safe_divide(true_positive, actual)
        out.update(
            precision=precision,
            recall=recall,
            f1=_safe_divide(2 * true_positive, selected + actual),
            selected_rate=_safe_divide(selected, n),
            human_rate=_safe_divide(actual, n),
            selected_ratio=_safe_divide(selected, actual, empty=np.nan),
        )
    else:
        out["agreement"] = out.pop("accuracy")
    return out


def label_metrics(space: LabelSpace, human: Sequence[Any], judge: Sequence[Any]) -> dict[str, float]:
    """Point estimates for one judge; see :func:`metrics_from_confusion`."""
    if len(human) != len(judge):
        raise ValueError(f"{len(human)} human labels but {len(judge)} verdicts")
    if not len(human):
        raise ValueError("no rows to score")
    human_idx, judge_idx = space.index(human), space.index(judge)
    cm = confusion(human_idx, judge_idx, space.size)
    values = {name: float(value) for name, value in metrics_from_confusion(cm, space).items()}
    values["alpha"] = krippendorff_alpha([list(human), list(judge)], space, invalid=True)
    if space.kind == "ordinal":
        values.update(rank_correlations(space, human, judge))
    return {name: values[name] for name in space.metric_names() if name in values}


def krippendorff_alpha(ratings: Sequence[Sequence[Any]], space: LabelSpace, *, invalid: bool = False) -> float:
    """Krippendorff's α over coders × units, from the ``krippendorff`` package.

    ``None`` is a missing rating (an annotator who did not rate the unit), or, with
    ``invalid=True`` (a judge against humans), a verdict the judge failed to give: then it
    is a category of its own, at the largest distance from every label, so it counts as a
    disagreement as in every other metric. NaN when fewer than two values occur among the
    pairable ratings: α = 1 − D_o / D_e is undefined when no disagreement is expected.
    """
    import krippendorff

    size = len(space.labels)
    codes = {label: float(i) for i, label in enumerate(space.labels)}
    missing = float(size) if invalid else np.nan
    data = np.array([[missing if r is None else codes[r] for r in coder] for coder in ratings], dtype=float)
    pairable = (~np.isnan(data)).sum(axis=0) >= 2
    values = data[:, pairable]
    if len(np.unique(values[~np.isnan(values)])) < 2:
        return float("nan")
    domain = np.arange(size + 1 if invalid else size, dtype=float)
    if not space.ordinal:
        return float(krippendorff.alpha(reliability_data=data, value_domain=domain, level_of_measurement="nominal"))
    level = _ordinal_with_invalid if invalid else "ordinal"
    return float(krippendorff.alpha(reliability_data=data, value_domain=domain, level_of_measurement=level))


def _ordinal_with_invalid(
    v1: np.ndarray, v2: np.ndarray, i1: np.ndarray, i2: np.ndarray, n_v: np.ndarray, dtype: Any = np.float64
) -> np.ndarray:
    """Krippendorff's ordinal distance over the labels (the last category of the domain
    is ``INVALID``); a missing verdict is as far from any label as the two extreme labels
    are from each other, the largest disagreement the scale has."""
    labels = len(n_v) - 1
    counts = np.asarray(n_v[:labels], dtype=float)
    cumulative = np.concatenate([[0.0], np.cumsum(counts)])

    def ordinal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        low, high = np.minimum(a, b), np.maximum(a, b)
        return (cumulative[high + 1] - cumulative[low] - (counts[low] + counts[high]) / 2) ** 2

    widest = ordinal(np.array(0), np.array(labels - 1))
    first, second = np.broadcast_arrays(i1, i2)
    between_labels = ordinal(np.minimum(first, labels - 1), np.minimum(second, labels - 1))
    one_invalid = (first == labels) != (second == labels)
    both_invalid = (first == labels) & (second == labels)
    return np.where(both_invalid, 0.0, np.where(one_invalid, widest, between_labels)).astype(dtype)


def rank_correlations(space: LabelSpace, human: Sequence[Any], judge: Sequence[Any]) -> dict[str, float]:
    """Spearman ρ and Kendall τ-b over rows with a verdict (SciPy)."""
    from scipy.stats import kendalltau, spearmanr

    pairs = [(float(h), float(j)) for h, j in zip(human, judge, strict=True) if j is not None]
    if len(pairs) < 2:
        return {"spearman": float("nan"), "kendall": float("nan")}
    x, y = np.array(pairs).T
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"spearman": float("nan"), "kendall": float("nan")}
    return {"spearman": float(spearmanr(x, y).statistic), "kendall": float(kendalltau(x, y).statistic)}


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Weighted mean |accuracy − confidence| over equal-width confidence bins."""
    confidence = np.asarray(confidence, float)
    correct = np.asarray(correct, float)
    if not len(confidence):
        return float("nan")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return float(total / len(confidence))


def confidence_metrics(
    space: LabelSpace,
    human: Sequence[Any],
    probability: Sequence[float | None],
    *,
    threshold: float = 0.5,
    decisions: Sequence[bool | None] | None = None,
) -> dict[str, float]:
    """How well the judge's probability of the positive label (binary) tracks humans.

    ``probability`` is P(positive) per row; rows without one are left out. Expected
    calibration error scores the judge's confidence in the decision it made: the verdict
    (``decisions``: whether it chose the positive label) where given, otherwise P ≥
    ``threshold``, the judge's cut (0.5 for a judge that is not thresholded).
    """
    if space.kind != "binary":
        raise ValueError("confidence metrics need a binary task (P of the positive label)")
    chosen = decisions if decisions is not None else [None] * len(human)
    kept = [(h == space.positive, p, d) for h, p, d in zip(human, probability, chosen, strict=True) if p is not None]
    if not kept:
        return {}
    y = np.array([k for k, _, _ in kept], dtype=float)
    p = np.clip(np.array([q for _, q, _ in kept], dtype=float), 0.0, 1.0)
    decided = np.array([bool(d) if d is not None else q >= threshold for _, q, d in kept], dtype=bool)
    confidence = np.where(decided, p, 1 - p)
    out = {
        "brier": float(np.mean((p - y) ** 2)),
        "ece": expected_calibration_error(confidence, decided == (y == 1)),
        "roc_auc": roc_auc(y, p),
    }
    return out


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve as the Mann–Whitney U statistic (ties count half): the
    bootstrap calls it thousands of times, where scikit-learn's input checks dominate.
    Tests pin it to ``sklearn.metrics.roc_auc_score``."""
    from scipy.stats import rankdata

    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def order_consistency(
    original: Sequence[str | None], swapped: Sequence[str | None], *, first: str = "A", second: str = "B"
) -> float:
    """Share of pairs whose verdict survives swapping the two responses.

    ``swapped`` holds verdicts on the swapped pairs, in the swapped pair's own terms: a
    consistent judge that said "A" first says "B" after the swap, and "tie" both times.
    """
    flags = order_consistent(original, swapped, first=first, second=second)
    if not len(flags):
        raise ValueError("no rows to score")
    return float(np.mean(flags))


def order_consistent(
    original: Sequence[str | None], swapped: Sequence[str | None], *, first: str = "A", second: str = "B"
) -> np.ndarray:
    if len(original) != len(swapped):
        raise ValueError(f"{len(original)} verdicts but {len(swapped)} swapped verdicts")
    flip = {first: second, second: first}
    return np.array(
        [o is not None and s is not None and flip.get(s, s) == o for o, s in zip(original, swapped, strict=True)],
        dtype=float,
    )


def first_position_rate(verdicts: Sequence[str | None], *, first: str = "A") -> float:
    """How often the judge picks the response shown first."""
    return float(np.mean([v == first for v in verdicts])) if verdicts else float("nan")


BINARY_SPACE = LabelSpace(labels=(True, False), positive=True)


def binary_metrics(human: Sequence[bool], judge: Sequence[bool | None]) -> dict[str, float]:
    return label_metrics(BINARY_SPACE, human, judge)


def categorical_metrics(
    human: Sequence[str], judge: Sequence[str | None], labels: Sequence[str] | None = None
) -> dict[str, float]:
    space = (
        LabelSpace(labels=tuple(labels))
        if labels
        else LabelSpace(labels=tuple(sorted({*human, *(j for j in judge if j is not None)})))
    )
    return label_metrics(space, human, judge)

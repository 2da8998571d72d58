"""Agreement between a judge's verdicts and human labels.

Statistics come from scikit-learn; what is written here is only the bookkeeping around
them: verdicts a judge failed to give count as disagreements (in their own category),
and the judge's selected rate is reported beside the human rate because over-selection
is the failure LLM judges show most.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, precision_score, recall_score

INVALID = "<invalid>"

BINARY_METRICS = (
    "kappa",
    "accuracy",
    "balanced_accuracy",
    "f1",
    "precision",
    "recall",
    "selected_rate",
    "human_rate",
    "invalid_rate",
)
CATEGORICAL_METRICS = ("kappa", "agreement", "invalid_rate")


def _as_category(value: Any) -> str:
    return INVALID if value is None else str(value)


def binary_metrics(human: Sequence[bool], judge: Sequence[bool | None]) -> dict[str, float]:
    """Agreement on a yes/no task; ``None`` verdicts count as not selected and as wrong."""
    if len(human) != len(judge):
        raise ValueError(f"{len(human)} human labels but {len(judge)} verdicts")
    if not human:
        raise ValueError("no rows to score")
    y_true = np.array([bool(h) for h in human])
    selected = np.array([j is True for j in judge])
    invalid = np.array([j is None for j in judge])
    categories_true = [_as_category(h) for h in human]
    categories_judge = [_as_category(j) for j in judge]
    kappa = _kappa(categories_true, categories_judge)
    correct = (selected == y_true) & ~invalid
    recall_pos = correct[y_true].mean() if y_true.any() else float("nan")
    recall_neg = correct[~y_true].mean() if (~y_true).any() else float("nan")
    return {
        "kappa": kappa,
        "accuracy": float(correct.mean()),
        "balanced_accuracy": float(np.nanmean([recall_pos, recall_neg])),
        "f1": float(f1_score(y_true, selected, zero_division=0.0)),
        "precision": float(precision_score(y_true, selected, zero_division=0.0)),
        "recall": float(recall_score(y_true, selected, zero_division=0.0)),
        "selected_rate": float(selected.mean()),
        "human_rate": float(y_true.mean()),
        "invalid_rate": float(invalid.mean()),
    }


def categorical_metrics(human: Sequence[str], judge: Sequence[str | None]) -> dict[str, float]:
    """Agreement on a task with several labels (pairwise: A / B / tie)."""
    if len(human) != len(judge):
        raise ValueError(f"{len(human)} human labels but {len(judge)} verdicts")
    if not human:
        raise ValueError("no rows to score")
    y_true = [_as_category(h) for h in human]
    y_judge = [_as_category(j) for j in judge]
    return {
        "kappa": _kappa(y_true, y_judge),
        "agreement": float(accuracy_score(y_true, y_judge)),
        "invalid_rate": float(np.mean([j is None for j in judge])),
    }


def order_consistency(
    original: Sequence[str | None], swapped: Sequence[str | None], *, first: str = "A", second: str = "B"
) -> float:
    """Share of pairs whose verdict survives swapping the two responses.

    ``swapped`` holds verdicts on the swapped pairs, in the swapped pair's own terms: a
    consistent judge that said "A" first says "B" after the swap, and "tie" both times.
    """
    if len(original) != len(swapped):
        raise ValueError(f"{len(original)} verdicts but {len(swapped)} swapped verdicts")
    if not original:
        raise ValueError("no rows to score")
    flip = {first: second, second: first}
    same = [o is not None and s is not None and flip.get(s, s) == o for o, s in zip(original, swapped, strict=True)]
    return float(np.mean(same))


def first_position_rate(verdicts: Sequence[str | None], *, first: str = "A") -> float:
    """How often the judge picks the response shown first."""
    return float(np.mean([v == first for v in verdicts])) if verdicts else float("nan")


def _kappa(y_true: Sequence[str], y_judge: Sequence[str]) -> float:
    """Cohen's κ; 0 (not NaN) when one rater uses a single category and disagrees."""
    labels = sorted(set(y_true) | set(y_judge))
    if len(labels) == 1:
        return 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        value = cohen_kappa_score(y_true, y_judge, labels=labels)
    return 0.0 if np.isnan(value) else float(value)

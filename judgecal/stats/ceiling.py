"""How much humans agree with each other: the ceiling a judge is measured against.

With several annotators per row, a judge's agreement with the human majority means
little on its own: if annotators agree with each other at κ 0.43, a judge at κ 0.30
reaches 70% of what another person would. Krippendorff's α comes from the
``krippendorff`` package and Fleiss' κ from ``statsmodels``; the leave-one-out
comparison (each annotator against the majority of the others, the same footing the
judge stands on) is written here because no library offers it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from judgecal.stats.metrics import LabelSpace, confusion, kappa_from_confusion, krippendorff_alpha
from judgecal.stats.uncertainty import Estimate, GroupIndex, group_bootstrap


class HumanCeiling(BaseModel):
    """Human–human agreement on the rows that carry several annotators' labels."""

    model_config = ConfigDict(frozen=True)

    rows: int
    annotators_per_row: float
    alpha: Estimate
    fleiss_kappa: float | None
    annotator_vs_rest_kappa: Estimate
    annotator_vs_rest_agreement: Estimate
    soft_agreement: float


def majority(labels: Sequence[Any]) -> Any:
    """The strict majority label, or None when there is none."""
    counts = Counter(labels).most_common()
    if not counts:
        return None
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return None
    return counts[0][0]


def leave_one_out_pairs(annotations: Sequence[Sequence[Any] | None]) -> tuple[list[Any], list[Any], list[int]]:
    """(annotator label, majority of the other annotators, row) for every annotator of
    every row whose other annotators have a strict majority."""
    mine, rest, rows = [], [], []
    for row, labels in enumerate(annotations):
        if not labels or len(labels) < 3:
            continue
        for i, label in enumerate(labels):
            others = majority([*labels[:i], *labels[i + 1 :]])
            if others is not None:
                mine.append(label)
                rest.append(others)
                rows.append(row)
    return mine, rest, rows


def soft_agreement(labels_given: Sequence[Any], annotations: Sequence[Sequence[Any] | None]) -> float:
    """Mean share of annotators who gave the same label (a soft-label accuracy)."""
    shares = [
        sum(1 for a in ann if a == given) / len(ann)
        for given, ann in zip(labels_given, annotations, strict=True)
        if ann
    ]
    return float(np.mean(shares)) if shares else float("nan")


def human_soft_agreement(annotations: Sequence[Sequence[Any] | None]) -> float:
    """The human counterpart: each annotator's share of agreeing other annotators."""
    shares = []
    for ann in annotations:
        if not ann or len(ann) < 2:
            continue
        for i, label in enumerate(ann):
            others = [*ann[:i], *ann[i + 1 :]]
            shares.append(sum(1 for o in others if o == label) / len(others))
    return float(np.mean(shares)) if shares else float("nan")


def fleiss_kappa(annotations: Sequence[Sequence[Any] | None], space: LabelSpace) -> float | None:
    """Fleiss' κ over rows with the most common number of annotators (statsmodels)."""
    from statsmodels.stats.inter_rater import fleiss_kappa as statsmodels_fleiss

    sizes = Counter(len(a) for a in annotations if a)
    if not sizes:
        return None
    size = sizes.most_common(1)[0][0]
    if size < 2:
        return None
    table = np.array(
        [
            [sum(1 for a in ann if a == label) for label in space.labels]
            for ann in annotations
            if ann and len(ann) == size
        ]
    )
    if len(table) < 2:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        value = float(statsmodels_fleiss(table, method="fleiss"))
    return None if np.isnan(value) else value


def human_ceiling(
    space: LabelSpace,
    annotations: Sequence[Sequence[Any] | None],
    groups: Sequence[str],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> HumanCeiling | None:
    """Human–human agreement with group-bootstrap intervals; None without multi-annotator rows."""
    keep = [i for i, ann in enumerate(annotations) if ann and len(ann) >= 2]
    if len(keep) < 2:
        return None
    annotations = [list(annotations[i]) for i in keep]
    groups = [groups[i] for i in keep]
    index = GroupIndex.from_groups(groups)
    width = max(len(a) for a in annotations)
    coders = [[ann[j] if j < len(ann) else None for ann in annotations] for j in range(width)]
    alpha_value = krippendorff_alpha(coders, space)

    mine, rest, rows_of = leave_one_out_pairs(annotations)
    mine_idx, rest_idx = space.index(mine), space.index(rest)
    row_group = index.codes[np.array(rows_of, dtype=int)] if rows_of else np.array([], int)
    per_group = np.zeros((index.n_groups, space.size, space.size))
    np.add.at(per_group, (row_group, mine_idx, rest_idx), 1.0)
    cm = confusion(mine_idx, rest_idx, space.size)
    vs_rest_kappa = float(kappa_from_confusion(cm)) if rows_of else float("nan")
    vs_rest_agreement = float(np.trace(cm) / cm.sum()) if rows_of else float("nan")

    def matrix_statistic(sample: np.ndarray) -> np.ndarray:
        resampled = per_group[sample].sum(axis=-3)
        agreement = np.trace(resampled, axis1=-2, axis2=-1) / np.maximum(resampled.sum(axis=(-2, -1)), 1)
        return np.stack([kappa_from_confusion(resampled), agreement])

    def alpha_statistic(sample: np.ndarray) -> np.ndarray:
        rows = index.rows(sample)
        return np.array([krippendorff_alpha([[coder[r] for r in rows] for coder in coders], space)])

    if index.n_groups >= 2 and rows_of:
        low, high = group_bootstrap(
            matrix_statistic, index.n_groups, vectorized=True, n_resamples=n_resamples, seed=seed
        )
        a_low, a_high = group_bootstrap(
            alpha_statistic, index.n_groups, vectorized=False, n_resamples=min(n_resamples, 500), seed=seed
        )
    else:
        low = high = np.array([np.nan, np.nan])
        a_low = a_high = np.array([np.nan])
    return HumanCeiling(
        rows=len(annotations),
        annotators_per_row=float(np.mean([len(a) for a in annotations])),
        alpha=Estimate(value=alpha_value, low=float(a_low[0]), high=float(a_high[0])),
        fleiss_kappa=fleiss_kappa(annotations, space),
        annotator_vs_rest_kappa=Estimate(value=vs_rest_kappa, low=float(low[0]), high=float(high[0])),
        annotator_vs_rest_agreement=Estimate(value=vs_rest_agreement, low=float(low[1]), high=float(high[1])),
        soft_agreement=human_soft_agreement(annotations),
    )

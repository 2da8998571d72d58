"""Judges' verdicts on held-out rows, and every number a report states about them.

An :class:`EvaluationRecord` is the evidence: for each test row its group, the human
label (and individual annotators' labels), and each judge's verdict, confidence and
order-swapped verdict. It is saved with every calibration run, and
:func:`evaluate_record` turns it into an :class:`AgreementReport`: metrics with
group-bootstrap intervals, the paired difference between two judges with McNemar's test,
the human ceiling and the bias measures. Reports can be recomputed from the record alone.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from judgecal.report.records import EvaluationRecord, JudgeRecord
from judgecal.stats.bias import BiasMeasure, personalization_bias, position_bias, selection_bias, verbosity_bias
from judgecal.stats.ceiling import HumanCeiling, human_ceiling, leave_one_out_pairs, soft_agreement
from judgecal.stats.metrics import (
    LabelSpace,
    confidence_metrics,
    confusion_by_group,
    kappa_from_confusion,
    krippendorff_alpha,
    label_metrics,
    metrics_from_confusion,
    order_consistent,
    rank_correlations,
)
from judgecal.stats.uncertainty import DEFAULT_RESAMPLES, Estimate, GroupIndex, McNemar, group_bootstrap, mcnemar_exact


class JudgeScore(BaseModel):
    name: str
    rows: int
    metrics: dict[str, Estimate]
    confidence_metrics: dict[str, Estimate] = Field(default_factory=dict)
    bias: list[BiasMeasure] = Field(default_factory=list)
    soft_agreement: float | None = None
    fraction_of_ceiling: Estimate | None = None


class Comparison(BaseModel):
    """``candidate`` − ``baseline`` on the same rows, paired by group resample."""

    baseline: str
    candidate: str
    metric: str
    deltas: dict[str, Estimate]
    mcnemar: McNemar | None = None
    outcome: Literal["improved", "worse", "inconclusive"]
    statement: str


class AgreementReport(BaseModel):
    judge_name: str
    task: str
    kind: str
    split: str
    rows: int
    groups: int
    human_rates: dict[str, float]
    primary_metric: str
    judges: list[JudgeScore]
    comparison: Comparison | None = None
    ceiling: HumanCeiling | None = None
    n_resamples: int
    seed: int
    confidence_level: float = 0.95

    def judge(self, name: str) -> JudgeScore:
        for score in self.judges:
            if score.name == name:
                return score
        raise KeyError(name)


def evaluate_record(
    record: EvaluationRecord,
    *,
    baseline: str | None = "raw",
    candidate: str | None = "calibrated",
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> AgreementReport:
    """Every judge's metrics with intervals, the baseline → candidate comparison, the
    human ceiling and the bias measures."""
    space = record.space
    groups = GroupIndex.from_groups(record.groups)
    primary = "weighted_kappa" if space.kind == "ordinal" else "kappa"
    ceiling = None
    if record.annotators is not None:
        ceiling = human_ceiling(space, record.annotators, record.groups, n_resamples=min(n_resamples, 1000), seed=seed)
    scores = [
        _score_judge(record, name, judge, space, groups, ceiling, n_resamples=n_resamples, seed=seed)
        for name, judge in record.judges.items()
    ]
    comparison = None
    if baseline in record.judges and candidate in record.judges:
        comparison = compare_judges(
            record, baseline, candidate, space, groups, primary, n_resamples=n_resamples, seed=seed
        )
    human_idx = space.index(record.human)
    rates = {str(label): float(np.mean(human_idx == i)) for i, label in enumerate(space.labels)}
    return AgreementReport(
        judge_name=record.judge_name,
        task=record.task,
        kind=space.kind,
        split=record.split,
        rows=len(record.ids),
        groups=groups.n_groups,
        human_rates=rates,
        primary_metric=primary,
        judges=scores,
        comparison=comparison,
        ceiling=ceiling,
        n_resamples=n_resamples,
        seed=seed,
    )


def _rows_of(judge: JudgeRecord) -> np.ndarray:
    """The rows a judge is measured on: not those it abstained on, nor a reference judge's
    rows without a recorded verdict; any other missing verdict is a failure, counted."""
    keep = np.ones(len(judge.verdicts), dtype=bool)
    if judge.recorded:
        keep &= np.array([v is not None for v in judge.verdicts], dtype=bool)
    if judge.abstained is not None:
        keep &= ~np.asarray(judge.abstained, dtype=bool)
    return np.flatnonzero(keep)


def _subset_groups(groups: GroupIndex, rows: np.ndarray) -> tuple[np.ndarray, int]:
    """Group codes of ``rows`` renumbered densely."""
    codes = groups.codes[rows]
    _, dense = np.unique(codes, return_inverse=True)
    return dense, int(dense.max()) + 1 if len(dense) else 0


# α and the rank correlations are recomputed row by row for each resample, and so are
# the confidence metrics: they take at most this many resamples.
SLOW_RESAMPLES = 500


@dataclass(frozen=True)
class _Answered:
    """The rows one judge answered, the humans' labels and the judge's verdicts on them,
    and their groups numbered densely: every measure of that judge reads these."""

    rows: np.ndarray
    human: list[Any]
    verdicts: list[Any]
    swapped: list[Any] | None
    codes: np.ndarray
    n_groups: int

    @functools.cached_property
    def members(self) -> tuple[np.ndarray, ...]:
        """Positions of each group's rows, to draw a resample row by row."""
        return tuple(np.flatnonzero(self.codes == g) for g in range(self.n_groups))

    def picked(self, sample: np.ndarray) -> np.ndarray:
        """The positions of the rows of a group resample."""
        return np.concatenate([self.members[g] for g in sample])

    @functools.cached_property
    def consistent(self) -> np.ndarray | None:
        """Per row, whether the verdict held with the responses swapped (pairwise tasks
        judged both ways)."""
        if self.swapped is None:
            return None
        return order_consistent(
            [str(v) if v is not None else None for v in self.verdicts],
            [str(v) if v is not None else None for v in self.swapped],
        )


def _answered(record: EvaluationRecord, judge: JudgeRecord, groups: GroupIndex) -> _Answered:
    rows = _rows_of(judge)
    codes, n_groups = _subset_groups(groups, rows)
    return _Answered(
        rows=rows,
        human=[record.human[i] for i in rows],
        verdicts=[judge.verdicts[i] for i in rows],
        swapped=[judge.swapped[i] for i in rows] if judge.swapped is not None else None,
        codes=codes,
        n_groups=n_groups,
    )


def _score_judge(
    record: EvaluationRecord,
    name: str,
    judge: JudgeRecord,
    space: LabelSpace,
    groups: GroupIndex,
    ceiling: HumanCeiling | None,
    *,
    n_resamples: int,
    seed: int,
) -> JudgeScore:
    """One judge's measures, each on the rows it answered (a reference judge's missing
    verdicts are left out, not counted as failures)."""
    answered = _answered(record, judge, groups)
    fraction = None
    if record.annotators is not None and ceiling is not None:
        annotators = [record.annotators[i] for i in answered.rows]
        fraction = _fraction_of_ceiling(space, answered, annotators, n_resamples=n_resamples, seed=seed)
    return JudgeScore(
        name=name,
        rows=len(answered.rows),
        metrics=_label_estimates(space, answered, record.pairwise, n_resamples=n_resamples, seed=seed),
        confidence_metrics=_confidence_estimates(space, judge, answered, n_resamples=n_resamples, seed=seed),
        bias=_bias_measures(record, space, answered),
        soft_agreement=_soft_agreement(record, space, answered),
        fraction_of_ceiling=fraction,
    )


def _label_estimates(
    space: LabelSpace, answered: _Answered, pairwise: bool, *, n_resamples: int, seed: int
) -> dict[str, Estimate]:
    """Every label metric with its group-bootstrap interval, in the order reports list them
    (a pairwise task's with the share of first-position verdicts)."""
    point = label_metrics(space, answered.human, answered.verdicts)
    if answered.consistent is not None:
        point["order_consistency"] = float(answered.consistent.mean())
    if pairwise:
        point["first_position_rate"] = float(np.mean([v == "A" for v in answered.verdicts]))
    metrics = {
        **_confusion_estimates(space, answered, point, pairwise, n_resamples=n_resamples, seed=seed),
        **_row_by_row_estimates(space, answered, point, n_resamples=n_resamples, seed=seed),
    }
    order = [*space.metric_names(), "first_position_rate", "order_consistency"]
    return {m: metrics[m] for m in order if m in metrics}


def _confusion_estimates(
    space: LabelSpace, answered: _Answered, point: dict[str, float], pairwise: bool, *, n_resamples: int, seed: int
) -> dict[str, Estimate]:
    """The metrics a resample's summed confusion matrices give (and the position and
    order-consistency rates beside them): all resamples at once."""
    codes, n_groups = answered.codes, answered.n_groups
    per_group = confusion_by_group(space.index(answered.human), space.index(answered.verdicts), codes, space.size)
    names = [m for m in space.metric_names() if m in metrics_from_confusion(per_group[:1].sum(axis=0), space)]
    consistent_sums = None
    if answered.consistent is not None:
        consistent_sums = np.bincount(codes, weights=answered.consistent, minlength=n_groups)
    counts = np.bincount(codes, minlength=n_groups).astype(float)

    def statistic(sample: np.ndarray) -> np.ndarray:
        cm = per_group[sample].sum(axis=-3)
        values = metrics_from_confusion(cm, space)
        out = [values[m] for m in names]
        if pairwise:
            out.append(cm[..., :, space.labels.index("A")].sum(axis=-1) / cm.sum(axis=(-2, -1)))
        if consistent_sums is not None:
            out.append(consistent_sums[sample].sum(axis=-1) / counts[sample].sum(axis=-1))
        return np.stack(out)

    interval_names = (
        names
        + (["first_position_rate"] if pairwise else [])
        + (["order_consistency"] if consistent_sums is not None else [])
    )
    if n_groups < 2:
        return {m: Estimate(value=point[m], low=np.nan, high=np.nan) for m in interval_names}
    low, high = group_bootstrap(statistic, n_groups, vectorized=True, n_resamples=n_resamples, seed=seed)
    return {m: Estimate(value=point[m], low=float(low[i]), high=float(high[i])) for i, m in enumerate(interval_names)}


def _row_by_row_estimates(
    space: LabelSpace, answered: _Answered, point: dict[str, float], *, n_resamples: int, seed: int
) -> dict[str, Estimate]:
    """Krippendorff's α and the rank correlations, which need the rows themselves."""
    slow = [m for m in ("alpha", "spearman", "kendall") if m in point]
    if not slow or answered.n_groups < 2:
        return {}

    def statistic(sample: np.ndarray) -> np.ndarray:
        picked = answered.picked(sample)
        h = [answered.human[i] for i in picked]
        v = [answered.verdicts[i] for i in picked]
        out = [krippendorff_alpha([h, v], space, invalid=True)]
        if space.kind == "ordinal":
            ranks = rank_correlations(space, h, v)
            out += [ranks["spearman"], ranks["kendall"]]
        return np.array(out)

    resamples = min(n_resamples, SLOW_RESAMPLES)
    low, high = group_bootstrap(statistic, answered.n_groups, vectorized=False, n_resamples=resamples, seed=seed)
    return {m: Estimate(value=point[m], low=float(low[i]), high=float(high[i])) for i, m in enumerate(slow)}


def _confidence_estimates(
    space: LabelSpace, judge: JudgeRecord, answered: _Answered, *, n_resamples: int, seed: int
) -> dict[str, Estimate]:
    """Brier score, ECE and ROC AUC of a binary judge that states a probability."""
    if space.kind != "binary" or judge.probability is None:
        return {}
    probability = [judge.probability[i] for i in answered.rows]
    # ECE at the judge's own cut: its verdict is the decision it made at that cut.
    decisions = [None if v is None else v == space.positive for v in answered.verdicts]
    point = confidence_metrics(space, answered.human, probability, decisions=decisions)
    if not point or answered.n_groups < 2:
        return {}

    def statistic(sample: np.ndarray) -> np.ndarray:
        picked = answered.picked(sample)
        values = confidence_metrics(
            space,
            [answered.human[i] for i in picked],
            [probability[i] for i in picked],
            decisions=[decisions[i] for i in picked],
        )
        return np.array([values.get(k, np.nan) for k in point])

    resamples = min(n_resamples, SLOW_RESAMPLES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        low, high = group_bootstrap(statistic, answered.n_groups, vectorized=False, n_resamples=resamples, seed=seed)
    return {k: Estimate(value=v, low=float(low[i]), high=float(high[i])) for i, (k, v) in enumerate(point.items())}


def _bias_measures(record: EvaluationRecord, space: LabelSpace, answered: _Answered) -> list[BiasMeasure]:
    """Selection bias of a binary judge; position, personalization and verbosity bias of
    a pairwise one, where the record holds what each needs."""
    human, verdicts, rows = answered.human, answered.verdicts, answered.rows
    if space.kind == "binary":
        return selection_bias(
            [h == space.positive for h in human], [None if v is None else v == space.positive for v in verdicts]
        )
    if not record.pairwise:
        return []
    preferred = [str(h) for h in human]
    bias = position_bias(preferred, verdicts, answered.swapped)
    if record.personalized is not None:
        bias += personalization_bias(preferred, verdicts, [record.personalized[i] for i in rows])
    if record.length_a is not None and record.length_b is not None:
        bias += verbosity_bias(
            preferred, verdicts, [record.length_a[i] for i in rows], [record.length_b[i] for i in rows]
        )
    return bias


def _soft_agreement(record: EvaluationRecord, space: LabelSpace, answered: _Answered) -> float | None:
    """The mean share of annotators who gave the judge's verdict: from the annotators'
    own labels where the record has them, else from a binary task's soft labels."""
    if record.annotators is not None:
        return soft_agreement(answered.verdicts, [record.annotators[i] for i in answered.rows])
    if record.soft_labels is None or space.kind != "binary":
        return None
    pairs = [
        (record.soft_labels[i], answered.verdicts[k])
        for k, i in enumerate(answered.rows)
        if record.soft_labels[i] is not None
    ]
    if not pairs:
        return None
    return float(np.mean([share if v == space.positive else 1 - share for share, v in pairs]))


def _fraction_of_ceiling(
    space: LabelSpace, answered: _Answered, annotators: list[Any], *, n_resamples: int, seed: int
) -> Estimate | None:
    """Judge κ against the majority ÷ annotator κ against the majority of the others,
    both on the same group resample."""
    mine, rest, rows_of = leave_one_out_pairs(annotators)
    if not rows_of:
        return None
    codes, n_groups = answered.codes, answered.n_groups
    judge_cm = confusion_by_group(space.index(answered.human), space.index(answered.verdicts), codes, space.size)
    human_cm = np.zeros((n_groups, space.size, space.size))
    np.add.at(human_cm, (codes[np.array(rows_of)], space.index(mine), space.index(rest)), 1.0)

    def ratio(sample: np.ndarray) -> np.ndarray:
        judge_kappa = kappa_from_confusion(judge_cm[sample].sum(axis=-3))
        human_kappa = kappa_from_confusion(human_cm[sample].sum(axis=-3))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(human_kappa > 0, judge_kappa / human_kappa, np.nan)

    value = float(ratio(np.arange(n_groups)))
    if n_groups < 2:
        return Estimate(value=value, low=np.nan, high=np.nan)
    low, high = group_bootstrap(lambda s: ratio(s)[None], n_groups, vectorized=True, n_resamples=n_resamples, seed=seed)
    return Estimate(value=value, low=float(low[0]), high=float(high[0]))


def compare_judges(
    record: EvaluationRecord,
    baseline: str,
    candidate: str,
    space: LabelSpace,
    groups: GroupIndex,
    metric: str,
    *,
    n_resamples: int,
    seed: int,
) -> Comparison:
    """Paired differences on the same rows and resamples, McNemar's exact test on which rows
    each judge got right, and the verdict in words: an improvement only when the interval
    of the primary metric's difference lies above zero."""
    first, second = record.judges[baseline], record.judges[candidate]
    rows = np.intersect1d(_rows_of(first), _rows_of(second))
    human = [record.human[i] for i in rows]
    codes, n_groups = _subset_groups(groups, rows)
    human_idx = space.index(human)
    first_idx = space.index([first.verdicts[i] for i in rows])
    second_idx = space.index([second.verdicts[i] for i in rows])
    first_cm = confusion_by_group(human_idx, first_idx, codes, space.size)
    second_cm = confusion_by_group(human_idx, second_idx, codes, space.size)
    names = [m for m in space.metric_names() if m in metrics_from_confusion(first_cm.sum(axis=0), space)]

    def delta(sample: np.ndarray) -> np.ndarray:
        a = metrics_from_confusion(first_cm[sample].sum(axis=-3), space)
        b = metrics_from_confusion(second_cm[sample].sum(axis=-3), space)
        return np.stack([b[m] - a[m] for m in names])

    point = delta(np.arange(n_groups))
    if n_groups >= 2:
        low, high = group_bootstrap(delta, n_groups, vectorized=True, n_resamples=n_resamples, seed=seed)
    else:
        low = high = np.full(len(names), np.nan)
    deltas = {m: Estimate(value=float(point[i]), low=float(low[i]), high=float(high[i])) for i, m in enumerate(names)}
    test = mcnemar_exact(first_idx == human_idx, second_idx == human_idx) if space.kind != "ordinal" else None
    key = deltas[metric]
    if key.low > 0:
        outcome, words, where = "improved", "improved agreement with humans", "lies above 0"
    elif key.high < 0:
        outcome, words, where = "worse", "made agreement with humans worse", "lies below 0"
    else:
        outcome, words = "inconclusive", "shows no demonstrated change in agreement with humans"
        where = "includes 0, so these rows cannot tell the two apart"
    statement = (
        f"{candidate.capitalize()} vs {baseline}: {words}. Δ{metric} = {key.value:+.3f}; its 95% group-bootstrap "
        f"interval [{key.low:+.3f}, {key.high:+.3f}] {where} ({len(rows)} rows in {n_groups} groups)."
    )
    if test is not None:
        statement += (
            f" McNemar's exact test: {test.only_second_correct} rows right only for {candidate}, "
            f"{test.only_first_correct} only for {baseline}, p = {test.p_value:.3g}."
        )
        if outcome == "inconclusive" and test.p_value < 0.05:
            statement += (
                " That test counts rows as independent and asks which rows each got right, not κ; the interval "
                "counts groups, so it is the one that speaks for new groups."
            )
    return Comparison(
        baseline=baseline,
        candidate=candidate,
        metric=metric,
        deltas=deltas,
        mcnemar=test,
        outcome=outcome,
        statement=statement,
    )

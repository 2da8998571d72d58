"""Judges' verdicts on held-out rows, and every number a report states about them.

An :class:`EvaluationRecord` is the evidence: for each test row its group, the human
label (and individual annotators' labels), and each judge's verdict, confidence and
order-swapped verdict. It is saved with every calibration run, and
:func:`evaluate_record` turns it into an :class:`AgreementReport`: metrics with
group-bootstrap intervals, the paired difference between two judges with McNemar's test,
the human ceiling and the bias measures. Reports can be recomputed from the record alone.
"""

from __future__ import annotations

import warnings
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
    if judge.recorded:
        return np.flatnonzero([v is not None for v in judge.verdicts])
    return np.arange(len(judge.verdicts))


def _subset_groups(groups: GroupIndex, rows: np.ndarray) -> tuple[np.ndarray, int]:
    """Group codes of ``rows`` renumbered densely."""
    codes = groups.codes[rows]
    _, dense = np.unique(codes, return_inverse=True)
    return dense, int(dense.max()) + 1 if len(dense) else 0


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
    rows = _rows_of(judge)
    human = [record.human[i] for i in rows]
    verdicts = [judge.verdicts[i] for i in rows]
    point = label_metrics(space, human, verdicts)
    codes, n_groups = _subset_groups(groups, rows)
    human_idx, judge_idx = space.index(human), space.index(verdicts)
    per_group = confusion_by_group(human_idx, judge_idx, codes, space.size)
    names = [m for m in space.metric_names() if m in metrics_from_confusion(per_group[:1].sum(axis=0), space)]
    swapped = [judge.swapped[i] for i in rows] if judge.swapped is not None else None
    consistent_sums = None
    if swapped is not None:
        flags = order_consistent(
            [str(v) if v is not None else None for v in verdicts], [str(v) if v is not None else None for v in swapped]
        )
        consistent_sums = np.bincount(codes, weights=flags, minlength=n_groups)
        counts = np.bincount(codes, minlength=n_groups).astype(float)
        point["order_consistency"] = float(flags.mean())
    pairwise = space.kind == "categorical" and {"A", "B"} <= set(space.labels)
    if pairwise:
        point["first_position_rate"] = float(np.mean([v == "A" for v in verdicts]))

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
    metrics: dict[str, Estimate] = {}
    if n_groups >= 2:
        low, high = group_bootstrap(statistic, n_groups, vectorized=True, n_resamples=n_resamples, seed=seed)
        for i, metric in enumerate(interval_names):
            metrics[metric] = Estimate(value=point[metric], low=float(low[i]), high=float(high[i]))
    else:
        metrics = {m: Estimate(value=point[m], low=np.nan, high=np.nan) for m in interval_names}
    slow = [m for m in ("alpha", "spearman", "kendall") if m in point]
    slow_resamples = min(n_resamples, 500)
    members = tuple(np.flatnonzero(codes == g) for g in range(n_groups))
    if slow and n_groups >= 2:

        def slow_statistic(sample: np.ndarray) -> np.ndarray:
            picked = np.concatenate([members[g] for g in sample])
            h = [human[i] for i in picked]
            v = [verdicts[i] for i in picked]
            out = [krippendorff_alpha([h, v], space, invalid=True)]
            if space.kind == "ordinal":
                ranks = rank_correlations(space, h, v)
                out += [ranks["spearman"], ranks["kendall"]]
            return np.array(out)

        low, high = group_bootstrap(slow_statistic, n_groups, vectorized=False, n_resamples=slow_resamples, seed=seed)
        for i, metric in enumerate(slow):
            metrics[metric] = Estimate(value=point[metric], low=float(low[i]), high=float(high[i]))
    ordered = {
        m: metrics[m] for m in [*space.metric_names(), "first_position_rate", "order_consistency"] if m in metrics
    }

    confidence: dict[str, Estimate] = {}
    if space.kind == "binary" and judge.probability is not None:
        probability = [judge.probability[i] for i in rows]
        # ECE at the judge's own cut: its verdict is the decision it made at that cut.
        decisions = [None if v is None else v == space.positive for v in verdicts]
        point_conf = confidence_metrics(space, human, probability, decisions=decisions)
        if point_conf and n_groups >= 2:

            def conf_statistic(sample: np.ndarray) -> np.ndarray:
                picked = np.concatenate([members[g] for g in sample])
                values = confidence_metrics(
                    space,
                    [human[i] for i in picked],
                    [probability[i] for i in picked],
                    decisions=[decisions[i] for i in picked],
                )
                return np.array([values.get(k, np.nan) for k in point_conf])

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                low, high = group_bootstrap(
                    conf_statistic, n_groups, vectorized=False, n_resamples=slow_resamples, seed=seed
                )
            confidence = {
                k: Estimate(value=v, low=float(low[i]), high=float(high[i]))
                for i, (k, v) in enumerate(point_conf.items())
            }

    bias: list[BiasMeasure] = []
    if space.kind == "binary":
        bias = selection_bias(
            [h == space.positive for h in human], [None if v is None else v == space.positive for v in verdicts]
        )
    elif pairwise:
        bias = position_bias([str(h) for h in human], verdicts, swapped)
        if record.personalized is not None:
            bias += personalization_bias([str(h) for h in human], verdicts, [record.personalized[i] for i in rows])
        if record.length_a is not None and record.length_b is not None:
            bias += verbosity_bias(
                [str(h) for h in human],
                verdicts,
                [record.length_a[i] for i in rows],
                [record.length_b[i] for i in rows],
            )

    soft = None
    fraction = None
    if record.soft_labels is not None and space.kind == "binary":
        pairs = [(record.soft_labels[i], verdicts[k]) for k, i in enumerate(rows) if record.soft_labels[i] is not None]
        if pairs:
            soft = float(np.mean([share if v == space.positive else 1 - share for share, v in pairs]))
    if record.annotators is not None:
        annotators = [record.annotators[i] for i in rows]
        soft = soft_agreement(verdicts, annotators)
        if ceiling is not None:
            fraction = _fraction_of_ceiling(
                space, human, verdicts, annotators, codes, n_groups, n_resamples=n_resamples, seed=seed
            )
    return JudgeScore(
        name=name,
        rows=len(rows),
        metrics=ordered,
        confidence_metrics=confidence,
        bias=bias,
        soft_agreement=soft,
        fraction_of_ceiling=fraction,
    )


def _fraction_of_ceiling(
    space: LabelSpace,
    human: list[Any],
    verdicts: list[Any],
    annotators: list[Any],
    codes: np.ndarray,
    n_groups: int,
    *,
    n_resamples: int,
    seed: int,
) -> Estimate | None:
    """Judge κ against the majority ÷ annotator κ against the majority of the others,
    both on the same group resample."""
    mine, rest, rows_of = leave_one_out_pairs(annotators)
    if not rows_of:
        return None
    judge_cm = confusion_by_group(space.index(human), space.index(verdicts), codes, space.size)
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
    return Comparison(
        baseline=baseline,
        candidate=candidate,
        metric=metric,
        deltas=deltas,
        mcnemar=test,
        outcome=outcome,
        statement=statement,
    )

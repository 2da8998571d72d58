"""Corrected estimates: what humans would say about a large set, from judge verdicts on all
of it and human labels on a small part.

A judge that over-selects makes the naive estimate (the judge's own rate) biased however
many rows it judges; the human-only estimate is unbiased but wide. Prediction-powered
inference (PPI++, Angelopoulos, Duchi & Zrnic 2023) uses the small labelled set to
correct the judge's rate and, with a tuned weight λ, is never wider than the human-only
interval. The estimators come from ``ppi-python``, the authors' implementation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from judgecal.data.judged import JudgedRow, read_judged_rows
from judgecal.data.rows import DataError, LabelValue, RowShape, load_rows


class Interval(BaseModel):
    model_config = ConfigDict(frozen=True)

    estimate: float
    low: float
    high: float
    rows: int

    @property
    def width(self) -> float:
        return self.high - self.low


class CorrectedEstimate(BaseModel):
    """The human-level rate of ``target``, three ways."""

    target: str
    confidence_level: float
    prediction_powered: Interval
    judge_only: Interval
    human_only: Interval
    weight: float  # PPI++'s λ: 0 ignores the judge, 1 trusts its correction fully
    judge_signal: str

    def statement(self) -> str:
        ppi, naive, human = self.prediction_powered, self.judge_only, self.human_only
        return (
            f"Rate of {self.target}: {ppi.estimate:.3f} [{ppi.low:.3f}, {ppi.high:.3f}] prediction-powered "
            f"({human.rows} human labels + {naive.rows} judged rows, λ = {self.weight:.2f}); the judge alone says "
            f"{naive.estimate:.3f} [{naive.low:.3f}, {naive.high:.3f}], the human labels alone "
            f"{human.estimate:.3f} [{human.low:.3f}, {human.high:.3f}]."
        )


def corrected_rate(
    human: np.ndarray,
    judge_labelled: np.ndarray,
    judge_unlabelled: np.ndarray,
    *,
    target: str,
    confidence: float = 0.95,
    judge_signal: str = "verdict",
) -> CorrectedEstimate:
    """PPI++ interval of the mean of ``human`` (0/1 target indicators) given the judge's
    signal (0/1 verdicts or probabilities) on the same rows and on unlabelled rows."""
    from ppi_py import classical_mean_ci, ppi_mean_ci, ppi_mean_pointestimate

    human = np.asarray(human, dtype=float)
    judge_labelled = np.asarray(judge_labelled, dtype=float)
    judge_unlabelled = np.asarray(judge_unlabelled, dtype=float)
    if len(human) < 2 or len(judge_unlabelled) < 2:
        raise ValueError("need at least 2 human-labelled rows and 2 unlabelled judged rows")
    alpha = 1 - confidence
    point = float(np.ravel(ppi_mean_pointestimate(human, judge_labelled, judge_unlabelled))[0])
    low, high = (float(np.ravel(v)[0]) for v in ppi_mean_ci(human, judge_labelled, judge_unlabelled, alpha=alpha))
    naive_low, naive_high = (float(np.ravel(v)[0]) for v in classical_mean_ci(judge_unlabelled, alpha=alpha))
    human_low, human_high = (float(np.ravel(v)[0]) for v in classical_mean_ci(human, alpha=alpha))
    weight = _ppi_weight(human, judge_labelled, judge_unlabelled)
    return CorrectedEstimate(
        target=target,
        confidence_level=confidence,
        prediction_powered=Interval(estimate=point, low=low, high=high, rows=len(human) + len(judge_unlabelled)),
        judge_only=Interval(
            estimate=float(judge_unlabelled.mean()), low=naive_low, high=naive_high, rows=len(judge_unlabelled)
        ),
        human_only=Interval(estimate=float(human.mean()), low=human_low, high=human_high, rows=len(human)),
        weight=weight,
        judge_signal=judge_signal,
    )


def _ppi_weight(human: np.ndarray, judge_labelled: np.ndarray, judge_unlabelled: np.ndarray) -> float:
    """PPI++'s power-tuning weight for a mean, Cov(Y, f) / ((1 + n/N) Var(f)) clipped to
    [0, 1]: the value ppi-python tunes internally, recomputed here for the report."""
    n, big_n = len(human), len(judge_unlabelled)
    covariance = float(np.mean((human - human.mean()) * (judge_labelled - judge_labelled.mean())))
    variance = float(np.var(np.concatenate([judge_labelled, judge_unlabelled]), ddof=1))
    if variance == 0:
        return 0.0
    return float(np.clip(covariance / ((1 + n / big_n) * variance), 0.0, 1.0))


def estimate_from_files(
    spec: RowShape,
    verdicts_path: Path,
    labels_path: Path,
    *,
    target: LabelValue | None = None,
    use_probability: bool = True,
    confidence: float = 0.95,
) -> CorrectedEstimate:
    """Join the judge's verdicts (every row) with the human labels (a subset) by row id.
    A selective judge's abstained rows count like any other through their probability."""
    target = _target(spec, target)
    judged = read_judged_rows(verdicts_path, spec)
    labelled = load_rows(labels_path, spec).rows
    by_id = {row.id: row for row in judged.rows}
    missing = [row.id for row in labelled if row.id not in by_id]
    if missing:
        raise DataError(
            f"{len(missing)} labelled rows have no judge verdict, e.g. {missing[:3]}; judge them too",
            path=verdicts_path,
            field="id",
        )
    signal, judge_signal = judge_signals(judged.rows, spec, target, use_probability=use_probability, path=verdicts_path)
    labelled_ids = {row.id for row in labelled}
    human = np.array([float(row.label == target) for row in labelled])
    judged_labelled = np.array([signal[row.id] for row in labelled])
    unlabelled = np.array([signal[row.id] for row in judged.rows if row.id not in labelled_ids])
    return corrected_rate(
        human,
        judged_labelled,
        unlabelled,
        target=answer_text(target),
        confidence=confidence,
        judge_signal=judge_signal,
    )


def _target(spec: RowShape, target: LabelValue | None) -> LabelValue:
    target = spec.positive if target is None else spec.parse_label(target)
    if target is None:
        raise DataError("this task has no positive label; name the label to estimate the rate of (--target)")
    return target


def answer_text(label: LabelValue) -> str:
    return json.dumps(label) if isinstance(label, bool) else str(label)


def judge_signals(
    judged: Sequence[JudgedRow], spec: RowShape, target: LabelValue, *, use_probability: bool, path: Path
) -> tuple[dict[str, float], str]:
    """The judge's signal for each row, by id: its P(target) when it gave one on every row
    and ``target`` is the positive label, else 1 where its verdict is ``target``. An
    abstained row has no verdict, so it needs the probability."""
    positive_is_target = spec.positive is not None and target == spec.positive
    probability_ok = use_probability and positive_is_target and all(row.probability is not None for row in judged)
    if not probability_ok:
        abstained = next((row for row in judged if row.abstained), None)
        if abstained is not None:
            why = (
                "--verdict-only was given"
                if not use_probability
                else "the target is not the positive label"
                if not positive_is_target
                else "some rows have no probability"
            )
            raise DataError(
                f"the judge abstained on this row and {why}: a selective judge's rows are estimated from its "
                "probability of the positive label on every row",
                path=path,
                line=abstained.line,
                field="verdict",
            )
        return {row.id: float(row.verdict == target) for row in judged}, "verdict"
    return {row.id: float(row.probability) for row in judged if row.probability is not None}, "probability"


def simulate_coverage(
    *,
    simulations: int,
    n_labelled: int,
    n_unlabelled: int,
    true_rate: float,
    hit: float,
    false_alarm: float,
    seed: int = 0,
) -> dict[str, float]:
    """Share of simulated data sets whose interval covers the true rate, for each method,
    with a judge that says yes with probability ``hit`` on positives and ``false_alarm``
    on negatives (over-selection when false_alarm is high)."""
    rng = np.random.default_rng(seed)
    covered: dict[str, list[bool]] = {"prediction_powered": [], "judge_only": [], "human_only": []}
    for _ in range(simulations):
        y = rng.uniform(size=n_labelled + n_unlabelled) < true_rate
        f = np.where(y, rng.uniform(size=y.size) < hit, rng.uniform(size=y.size) < false_alarm).astype(float)
        result = corrected_rate(y[:n_labelled].astype(float), f[:n_labelled], f[n_labelled:], target="true")
        for name in covered:
            interval: Interval = getattr(result, name)
            covered[name].append(interval.low <= true_rate <= interval.high)
    return {name: float(np.mean(values)) for name, values in covered.items()}

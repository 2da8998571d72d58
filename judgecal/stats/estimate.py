"""Corrected estimates: what humans would say about a large set, from judge verdicts on all
of it and human labels on a small part.

A judge that over-selects makes the naive estimate (the judge's own rate) biased however
many rows it judges; the human-only estimate is unbiased but wide. Prediction-powered
inference (PPI++, Angelopoulos, Duchi & Zrnic 2023) uses the small labelled set to
correct the judge's rate and, with a tuned weight λ, is never wider than the human-only
interval. The estimators come from ``ppi-python``, the authors' implementation.

When the labelled rows were drawn with known inclusion probabilities (``judgecal
label-next``, :mod:`judgecal.stats.active`), :func:`estimate_from_design` weights each
label by its inverse probability instead (active inference, Zrnic & Candès 2024), which
``ppi-python`` 0.2.3 does not implement.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from judgecal.data.judged import JudgedRow, read_judged_rows
from judgecal.data.rows import DataError, LabelValue, RowShape, load_rows
from judgecal.stats.active import LabellingDesign


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
        silent = next((row for row in judged if row.verdict is None), None)
        if silent is not None:
            why = (
                "--verdict-only was given"
                if not use_probability
                else "the target is not the positive label"
                if not positive_is_target
                else "some rows have no probability"
            )
            said = "the judge abstained on this row" if silent.abstained else "this row has no verdict"
            raise DataError(
                f"{said} and {why}: such rows are estimated from the judge's probability of the positive label "
                "on every row",
                path=path,
                line=silent.line,
                field="verdict",
            )
        return {row.id: float(row.verdict == target) for row in judged}, "verdict"
    return {row.id: float(row.probability) for row in judged if row.probability is not None}, "probability"


class ActiveEstimate(BaseModel):
    """The human-level rate of ``target`` over the N judged rows of a labelling design,
    from the labels of the rows it drew (active inference), beside the judge alone and
    the labels alone (inverse-probability weighted, λ = 0)."""

    target: str
    confidence_level: float
    active: Interval
    judge_only: Interval
    human_only: Interval
    weight: float  # λ: 0 uses the labels alone, 1 corrects the judge's signal fully
    judge_signal: str
    strategy: str
    labels: int = Field(description="Labelled rows the estimate used: the drawn ones and those labelled before.")
    left_out: list[str] = Field(default_factory=list, description="Labelled rows the design did not draw: not used.")

    def statement(self) -> str:
        active, naive, human = self.active, self.judge_only, self.human_only
        left = f"; {len(self.left_out)} labelled rows the design did not draw were left out" if self.left_out else ""
        return (
            f"Rate of {self.target} among the {active.rows} judged rows: {active.estimate:.3f} "
            f"[{active.low:.3f}, {active.high:.3f}] from {self.labels} labels of rows drawn by {self.strategy} "
            f"sampling (active inference, λ = {self.weight:.2f}); the judge alone says {naive.estimate:.3f}, "
            f"the labels alone {human.estimate:.3f} [{human.low:.3f}, {human.high:.3f}]{left}."
        )


def active_rate(
    signal: np.ndarray,
    labelled_signal: np.ndarray,
    human: np.ndarray,
    pi: np.ndarray,
    *,
    units: np.ndarray | None = None,
    weight: float | None = None,
    confidence: float = 0.95,
) -> tuple[Interval, float]:
    """Active-inference interval of the mean of Y over N rows (Zrnic & Candès 2024):

        θ = (1/N) Σ_i [λ f_i + (Y_i − λ f_i) ξ_i / π_i],  Var = (1/N²) Σ_drawn (Y − λ f)² (1 − π) / π²

    ``signal`` is f on all N rows; ``labelled_signal``, ``human`` and ``pi`` are f, Y and
    π of the labelled (drawn) rows. Unbiased for any fixed λ; ``weight=None`` takes the λ
    of least estimated variance, clipped to [0, 1]. Rows drawn as whole groups give
    ``units`` (their group): group totals replace rows and the interval uses Student's t
    on the number of groups drawn. ppi_py 0.2.3 has no such estimator, hence this one."""
    signal, f, y, pi = (np.asarray(a, dtype=float) for a in (signal, labelled_signal, human, pi))
    if units is not None:
        _, inverse = np.unique(np.asarray(units, dtype=str), return_inverse=True)
        f, y = np.bincount(inverse, weights=f), np.bincount(inverse, weights=y)
        pi = np.bincount(inverse, weights=pi) / np.bincount(inverse)  # one π per group
    w = (1 - pi) / pi**2
    if weight is None:
        denominator = float(np.sum(w * f * f))
        weight = float(np.clip(np.sum(w * y * f) / denominator, 0, 1)) if denominator > 0 else 0.0
    n = len(signal)
    residual = y - weight * f
    estimate = float((weight * signal.sum() + np.sum(residual / pi)) / n)
    half = _quantile(confidence, units is not None, int(np.sum(pi < 1))) * float(np.sqrt(np.sum(w * residual**2))) / n
    return Interval(estimate=estimate, low=estimate - half, high=estimate + half, rows=n), weight


def _quantile(confidence: float, by_group: bool, drawn_units: int) -> float:
    """Normal for rows drawn one by one; Student's t on the groups drawn when few groups
    carry the whole estimate."""
    from scipy.stats import norm, t

    if by_group:
        return float(t.ppf(0.5 + confidence / 2, max(1, drawn_units - 1)))
    return float(norm.ppf(0.5 + confidence / 2))


def estimate_from_design(
    spec: RowShape,
    verdicts_path: Path,
    labels_path: Path,
    design: LabellingDesign,
    *,
    design_path: Path,
    target: LabelValue | None = None,
    use_probability: bool = True,
    confidence: float = 0.95,
) -> ActiveEstimate:
    """The rate of ``target`` over the judged rows ``design`` drew from, from the labels of
    the drawn rows (and of those labelled before the draw, π = 1). Refuses another file
    of judged rows than the one drawn from, and drawn rows without a label."""
    from ppi_py import classical_mean_ci

    target = _target(spec, target)
    judged = read_judged_rows(verdicts_path, spec)
    if judged.digest != design.source_digest:
        raise DataError(
            f"{verdicts_path} is not the file these rows were drawn from ({design.source}, {design.source_digest}); "
            "judged rows added or changed since would bias the estimate: pass that file",
            path=design_path,
            field="source_digest",
        )
    labelled = {row.id: row for row in load_rows(labels_path, spec).rows}
    pi = {row.id: row.inclusion_probability for row in design.drawn} | dict.fromkeys(design.labelled_before, 1.0)
    unlabelled = [row_id for row_id in pi if row_id not in labelled]
    if unlabelled:
        shown = ", ".join(unlabelled[:20]) + (", ..." if len(unlabelled) > 20 else "")
        raise DataError(
            f"{len(unlabelled)} rows the design drew have no label: {shown}; label them all (leaving out a drawn "
            "row biases the estimate)",
            path=labels_path,
            field="id",
        )
    signal, judge_signal = judge_signals(judged.rows, spec, target, use_probability=use_probability, path=verdicts_path)
    used = list(pi)
    all_signal = np.array([signal[row.id] for row in judged.rows])
    f = np.array([signal[row_id] for row_id in used])
    y = np.array([float(labelled[row_id].label == target) for row_id in used])
    p = np.array([pi[row_id] for row_id in used])
    units = None
    if design.by == "group":
        group_of = {row.id: f"group:{row.group}" for row in design.drawn}
        units = np.array([group_of.get(row_id, f"row:{row_id}") for row_id in used])
    # λ tuned on the handful of groups drawn would be noisy enough to undercover (0.90 of
    # 95% in tests/stats/test_active.py's simulation); λ = 1 keeps whole-group draws valid.
    fixed = 1.0 if design.by == "group" else None
    active, weight = active_rate(all_signal, f, y, p, units=units, weight=fixed, confidence=confidence)
    human, _ = active_rate(all_signal, f, y, p, units=units, weight=0.0, confidence=confidence)
    naive_low, naive_high = (float(np.ravel(v)[0]) for v in classical_mean_ci(all_signal, alpha=1 - confidence))
    return ActiveEstimate(
        target=answer_text(target),
        confidence_level=confidence,
        active=active,
        judge_only=Interval(estimate=float(all_signal.mean()), low=naive_low, high=naive_high, rows=len(all_signal)),
        human_only=human,
        weight=weight,
        judge_signal=judge_signal,
        strategy=design.strategy,
        labels=len(used),
        left_out=sorted(set(labelled) - set(pi)),
    )


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

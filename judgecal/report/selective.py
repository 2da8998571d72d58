"""What a selective judge did on the test rows: how many it answered, how often people
agreed with each verdict it gave and how many of each class it caught where it answered,
with group-bootstrap intervals; whether each precision target held there; and the
risk–coverage curve (each verdict's precision as the judge answers more rows).

The band was chosen on calibration rows; these numbers are the check on rows of prompts
(groups) the judge never saw, which is what a user with few prompts can trust.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from judgecal.data.rows import LabelValue
from judgecal.judges.verdict import answer_key
from judgecal.report import plots
from judgecal.stats.selective import CROSS_FIT_SOURCE, BandChoice
from judgecal.stats.uncertainty import DEFAULT_RESAMPLES, Estimate, GroupIndex, group_bootstrap

TargetStatus = Literal["held", "missed", "not settled", "never given"]

STATUS_WORDS = {
    "held": "held (the interval lies above the target)",
    "missed": "missed (the estimate is below the target)",
    "not settled": "not settled (the interval includes the target)",
    "never given": "never given (holds vacuously)",
}

RISK_COVERAGE_PLOT = "risk_coverage.png"


class TargetCheck(BaseModel):
    verdict: str
    target: float
    precision: Estimate | None
    status: TargetStatus


class RiskCoverage(BaseModel):
    """Each verdict's precision on the test rows the judge would answer at each coverage,
    answering the rows it is surest of first; the chosen band's coverage marked."""

    coverage: list[float]
    precision: dict[str, list[float | None]]
    chosen: float


class SelectiveReport(BaseModel):
    """A selective judge on the test rows: coverage, each verdict's precision and each
    class's recall on the rows it answered (95% group-bootstrap intervals), each target's
    status, and the band with its guarantee."""

    choice: BandChoice
    split: str = "test"
    rows: int
    groups: int
    answered: dict[str, int]
    coverage: Estimate
    precision: dict[str, Estimate]
    recall: dict[str, Estimate] = Field(
        description="Per human label: the share of answered rows of that label the judge got right."
    )
    targets: list[TargetCheck]
    curve: RiskCoverage | None = None
    n_resamples: int = DEFAULT_RESAMPLES
    seed: int = 0


def selective_report(
    choice: BandChoice,
    *,
    labels: Sequence[LabelValue],
    human: Sequence[LabelValue],
    verdicts: Sequence[LabelValue | None],
    scores: np.ndarray,
    groups: Sequence[str],
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> SelectiveReport:
    """The selective judge's ``verdicts`` on test rows (None where it abstained or failed),
    against the ``human`` labels; ``scores``: the base's P(positive) per row (binary) or
    P(each label), for the risk–coverage curve."""
    keys = [answer_key(label) for label in labels]
    index = GroupIndex.from_groups(list(groups))
    y = np.array([labels.index(label) for label in human])
    said = np.array([-1 if v is None else labels.index(v) for v in verdicts])
    counts = _group_counts(index, y, said, len(labels))
    values = _ratios(counts.sum(axis=0), len(labels))
    low, high = group_bootstrap(
        lambda sample: _ratios(counts[sample].sum(axis=-2), len(labels)),
        index.n_groups,
        vectorized=True,
        n_resamples=n_resamples,
        seed=seed,
    )
    estimates = [Estimate(value=v, low=lo, high=hi) for v, lo, hi in zip(values, low, high, strict=True)]
    k = len(labels)
    precision = dict(zip(keys, estimates[1 : 1 + k], strict=True))
    targets = [_check(choice, key, precision[key]) for key in keys]
    return SelectiveReport(
        choice=choice,
        rows=len(y),
        groups=index.n_groups,
        answered={key: int(np.sum(said == j)) for j, key in enumerate(keys)},
        coverage=estimates[0],
        precision=precision,
        recall=dict(zip(keys, estimates[1 + k :], strict=True)),
        targets=targets,
        curve=risk_coverage(choice, scores, y, keys, chosen=estimates[0].value),
        n_resamples=n_resamples,
        seed=seed,
    )


def _group_counts(index: GroupIndex, y: np.ndarray, said: np.ndarray, k: int) -> np.ndarray:
    """Per group: rows, answered rows, then per label the rows it was said on and was right
    on, then per human label the answered rows of that label and those the judge got right."""
    columns = [np.ones(len(y)), said >= 0]
    columns += [said == j for j in range(k)] + [(said == j) & (y == j) for j in range(k)]
    columns += [(said >= 0) & (y == j) for j in range(k)] + [(said == j) & (y == j) for j in range(k)]
    table = np.column_stack(columns).astype(float)
    return np.stack([table[rows].sum(axis=0) for rows in index.members])


def _ratios(sums: np.ndarray, k: int) -> np.ndarray:
    """Coverage, each verdict's precision, each class's recall from summed counts (the last
    axis); outputs first, as the group bootstrap wants them."""
    sums = np.moveaxis(np.asarray(sums, float), -1, 0)
    rows, answered = sums[0], sums[1]
    said, right = sums[2 : 2 + k], sums[2 + k : 2 + 2 * k]
    of_class, caught = sums[2 + 2 * k : 2 + 3 * k], sums[2 + 3 * k : 2 + 4 * k]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.concatenate([(answered / rows)[None], right / said, caught / of_class])


def _check(choice: BandChoice, key: str, precision: Estimate) -> TargetCheck:
    target = choice.guarantee.precision[key]
    never = choice.band is not None and any(a.verdict == key and a.threshold is None for a in choice.band.answers)
    if never:
        return TargetCheck(verdict=key, target=target, precision=None, status="never given")
    if np.isnan(precision.value):
        return TargetCheck(verdict=key, target=target, precision=precision, status="not settled")
    if precision.value < target:
        status: TargetStatus = "missed"
    elif precision.low >= target:
        status = "held"
    else:
        status = "not settled"
    return TargetCheck(verdict=key, target=target, precision=precision, status=status)


def risk_coverage(
    choice: BandChoice, scores: np.ndarray, y: np.ndarray, keys: Sequence[str], *, chosen: float
) -> RiskCoverage | None:
    """Precision of each verdict on the rows answered first, as the share answered grows:
    binary judges answer rows farthest from the band's middle first (the side of the middle
    is the verdict), others the rows whose most likely label is most likely."""
    if choice.band is None or not len(y):
        return None
    scores = np.asarray(scores, float)
    thresholds = [answer.threshold for answer in choice.band.answers]
    if scores.ndim == 1:
        hi, lo = thresholds
        middle = (hi + lo) / 2 if hi is not None and lo is not None else (lo if hi is None else hi)
        side = np.where(scores >= middle, 0, 1)  # a binary task's labels: positive first
        order = np.argsort(-np.abs(scores - middle), kind="stable")
        if hi is None:
            order = np.argsort(scores, kind="stable")
        elif lo is None:
            order = np.argsort(-scores, kind="stable")
    else:
        side, order = scores.argmax(axis=1), np.argsort(-scores.max(axis=1), kind="stable")
    steps = np.unique(np.linspace(max(1, len(y) // 50), len(y), 50).astype(int))
    curve: dict[str, list[float | None]] = {key: [] for key in keys}
    for step in steps:
        kept = order[:step]
        for j, key in enumerate(keys):
            said = kept[side[kept] == j]
            curve[key].append(float(np.mean(y[said] == j)) if len(said) else None)
    return RiskCoverage(coverage=[float(s / len(y)) for s in steps], precision=curve, chosen=chosen)


def read_selective(saved: dict[str, Any]) -> tuple[SelectiveReport | None, BandChoice]:
    """A run's ``selective.json`` read back: what the judge did on the test rows (None when
    no band met the targets) and its band, or why there is none."""
    test = saved.get("test")
    return (SelectiveReport.model_validate(test) if test else None), BandChoice.model_validate(saved["band"])


def selective_metrics(report: SelectiveReport) -> dict[str, float]:
    """``selective.coverage``, ``selective.precision.<verdict>``, ``selective.recall.<label>``
    on the test rows, and the coverage on the calibration rows, for MLflow."""
    out = {"selective.coverage": report.coverage.value}
    out |= {f"selective.precision.{key}": e.value for key, e in report.precision.items()}
    out |= {f"selective.recall.{key}": e.value for key, e in report.recall.items()}
    calibration = report.choice.calibration_rows.coverage
    if calibration is not None:
        out["selective.calibration_coverage"] = calibration
    return {key: float(value) for key, value in out.items() if np.isfinite(value)}


def held_out_summary(report: SelectiveReport) -> str:
    """One sentence on the test rows: coverage and each verdict's precision, with intervals."""
    parts = [
        f"where it says '{key}', people agree {_share(e)}"
        for key, e in report.precision.items()
        if report.answered.get(key)
    ]
    return (
        f"On the {report.rows} {report.split} rows ({report.groups} groups) it answers {_share(report.coverage)}; "
        + "; ".join(parts)
        + " (95% group-bootstrap intervals)."
    )


def _share(estimate: Estimate) -> str:
    if np.isnan(estimate.value):
        return "–"
    if np.isnan(estimate.low):
        return f"{estimate.value:.0%}"
    return f"{estimate.value:.0%} [{estimate.low:.0%}, {estimate.high:.0%}]"


def description_lines(report: SelectiveReport | None, choice: BandChoice | None) -> list[str]:
    """The run description's paragraph on selective judging: the guarantee (or why there is
    no band) and the test rows' numbers."""
    if choice is None:
        return []
    if report is None or not choice.found:
        return [f"**Selective judging: no band.** {choice.guarantee.statement}"]
    return [
        f"**Selective judging.** {choice.guarantee.statement}",
        "",
        f"{held_out_summary(report)} {targets_summary(report)}",
    ]


def targets_summary(report: SelectiveReport) -> str:
    """Each target's status on the held-out rows, in one sentence."""
    return "Targets: " + ", ".join(f"'{t.verdict}' ≥ {t.target:.2f}: {t.status}" for t in report.targets) + "."


def band_rows_sentence(choice: BandChoice) -> str:
    """Which rows the band was chosen on, and how they relate to the judge it wraps."""
    rows = choice.calibration_rows
    where = f"{rows.count} rows in {rows.groups} groups (fingerprint `{rows.fingerprint[:23]}`)"
    if rows.source == CROSS_FIT_SOURCE:
        return (
            f"The band was chosen by cross-fitting on {where}, train + dev: each row scored by the judge fitted "
            f"on the other {(rows.folds or 0) - 1} of {rows.folds} grouped folds, never on its own group; the "
            "judge exported is fitted on all of them, so it is not the judge the band was tested on."
        )
    return f"The band was chosen on {where} held back as calibration rows, never used to fit or select the judge."


def card_section(
    report: SelectiveReport | None, choice: BandChoice | None, folder: Path
) -> tuple[list[str], Path | None]:
    """The judge card's section on selective judging, and its risk–coverage plot."""
    if choice is None:
        return [], None
    lines = ["## Selective judging", ""]
    if report is None or not choice.found:
        lines += [choice.guarantee.statement, "", "The judge exported answers every row.", ""]
        return lines, None
    lines += [
        f"**{choice.guarantee.statement}**",
        "",
        f"{band_rows_sentence(choice)} Method: {choice.guarantee.method}. The check below is on the {report.rows} "
        f"{report.split} rows ({report.groups} groups), which neither fitting, selection nor the band saw.",
        "",
        f"Coverage (rows answered): {_share(report.coverage)}.",
        "",
        "| verdict | rows said | precision where said | target | target on test rows | recall of the label "
        "where answered |",
        "|---|---|---|---|---|---|",
    ]
    for check in report.targets:
        key = check.verdict
        lines.append(
            f"| {key} | {report.answered.get(key, 0)} | {_share(report.precision[key])} | {check.target:.2f} | "
            f"{STATUS_WORDS[check.status]} | {_share(report.recall[key])} |"
        )
    lines += [
        "",
        "Precision is computed on the rows where the judge gave that verdict; recall on the answered rows of "
        "that human label. The agreement tables above describe the calibrated judge before its band: every "
        "test row, each with a verdict.",
        "",
    ]
    image = None
    if report.curve is not None:
        image = plots.risk_coverage(
            report.curve.coverage,
            report.curve.precision,
            report.choice.guarantee.precision,
            report.curve.chosen,
            folder / RISK_COVERAGE_PLOT,
            title=f"precision of each verdict as the judge answers more {report.split} rows",
        )
        lines += [f"![Risk–coverage]({image.name})", ""]
    return lines, image

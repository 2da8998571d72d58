"""What a calibration says in a few words and numbers: its title, its headline metrics,
its description, and the full metric table.

The MLflow run list shows run names, not metrics, so the name states the result
(``relevance: κ 0.02 → 0.41 (Δ +0.39)``); the run's description holds the verdict
sentence and a short table; the chart view shows a handful of headline metrics, and
every other number goes into one logged table.
"""

from __future__ import annotations

import math
from typing import Any

from judgecal.artifacts import CARD_DIR, HTML_CARD_FILE, METRICS_TABLE
from judgecal.report.agreement import AgreementReport
from judgecal.report.records import REFERENCE_PREFIX

KAPPA = {"binary": "kappa", "categorical": "kappa", "ordinal": "weighted_kappa"}


MAIN = {"binary": "f1", "categorical": "agreement", "ordinal": "agreement"}


SYMBOL = {"kappa": "κ", "weighted_kappa": "weighted κ", "f1": "F1", "agreement": "agreement"}


def _value(report: AgreementReport, judge: str, metric: str) -> float | None:
    try:
        estimate = report.judge(judge).metrics.get(metric)
    except KeyError:
        return None
    return None if estimate is None or math.isnan(estimate.value) else estimate.value


def title(report: AgreementReport, name: str | None = None) -> str:
    """``relevance: κ 0.02 → 0.41 (Δ +0.39)``."""
    short = short_title(report)
    name = name or report.judge_name
    return f"{name}: {short}" if short else name


def short_title(report: AgreementReport) -> str:
    """``κ 0.02 → 0.41 Δ+0.39``: what fits the run list's name column, which MLflow cuts
    at about twenty characters (the experiment already names the judge)."""
    metric = KAPPA[report.kind]
    raw, calibrated = _value(report, "raw", metric), _value(report, "calibrated", metric)
    if raw is None or calibrated is None:
        return ""
    return f"{SYMBOL[metric]} {raw:.2f} → {calibrated:.2f} Δ{calibrated - raw:+.2f}"


def headline_metrics(report: AgreementReport) -> dict[str, float]:
    """The few numbers worth a chart: κ and the task's main measure, raw, calibrated and
    Δ (with the interval of Δκ), the selected rate beside the human rate or the order
    consistency, and McNemar's p-value."""
    kind = report.kind
    names = [KAPPA[kind], MAIN[kind]]
    if kind == "binary":
        names.append("selected_rate")
    out: dict[str, float] = {}
    for judge in ("raw", "calibrated"):
        for metric in [*names, "order_consistency"]:
            value = _value(report, judge, metric)
            if value is not None:
                out[f"{judge}.{metric}"] = value
    comparison = report.comparison
    if comparison is not None:
        for metric in [*names, "order_consistency"]:
            delta = comparison.deltas.get(metric)
            if delta is not None and not math.isnan(delta.value):
                out[f"delta.{metric}"] = delta.value
        key = comparison.deltas.get(comparison.metric)
        if key is not None:
            out[f"delta.{comparison.metric}.low"] = key.low
            out[f"delta.{comparison.metric}.high"] = key.high
        if comparison.mcnemar is not None:
            out["p_value"] = comparison.mcnemar.p_value
    if kind == "binary":
        positive = next(iter(report.human_rates), None)
        if positive is not None:
            out["human_rate"] = report.human_rates[positive]
    if report.ceiling is not None:
        out["human.annotator_vs_rest_kappa"] = report.ceiling.annotator_vs_rest_kappa.value
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}


def headline_rows(report: AgreementReport) -> list[tuple[str, str, str, str]]:
    """(measure, raw, calibrated, Δ) with intervals, for the description and the terminal."""
    kind = report.kind
    names = [KAPPA[kind], MAIN[kind]]
    if kind == "binary":
        names.append("selected_rate")
    if any("order_consistency" in s.metrics for s in report.judges):
        names.append("order_consistency")
    if report.kind == "categorical" and any("first_position_rate" in s.metrics for s in report.judges):
        names.append("first_position_rate")
    rows = []
    for metric in names:
        cells = []
        for judge in ("raw", "calibrated"):
            try:
                estimate = report.judge(judge).metrics.get(metric)
            except KeyError:
                estimate = None
            cells.append(_interval(estimate))
        delta = report.comparison.deltas.get(metric) if report.comparison is not None else None
        rows.append((metric, cells[0], cells[1], _interval(delta, signed=True)))
    if kind == "binary" and report.human_rates:
        rate = next(iter(report.human_rates.values()))
        rows.append(("human_rate", f"{rate:.2f}", f"{rate:.2f}", ""))
    return rows


def _interval(estimate: Any, signed: bool = False) -> str:
    if estimate is None or math.isnan(estimate.value):
        return "–"
    fmt = "{:+.2f}" if signed else "{:.2f}"
    if math.isnan(estimate.low):
        return fmt.format(estimate.value)
    return f"{fmt.format(estimate.value)} [{fmt.format(estimate.low)}, {fmt.format(estimate.high)}]"


def description(report: AgreementReport, *, extra: str = "") -> str:
    """Markdown for the run's description: the verdict in words and the headline table."""
    lines = []
    if report.comparison is not None:
        lines += [f"**{report.comparison.statement}**", ""]
    lines += [
        f"{report.rows} {report.split} rows in {report.groups} groups; 95% intervals from a bootstrap over groups.",
        "",
        "| measure | raw | calibrated | Δ |",
        "|---|---|---|---|",
    ]
    lines += [f"| {m} | {r} | {c} | {d} |" for m, r, c, d in headline_rows(report)]
    lines += [
        "",
        f"The judge card with its plots: `{CARD_DIR}/{HTML_CARD_FILE}` in the artifacts; every metric: "
        f"`{METRICS_TABLE}`.",
    ]
    if extra:
        lines += ["", extra]
    return "\n".join(lines)


def metric_table(report: AgreementReport) -> dict[str, list[Any]]:
    """Every judge's every metric with its interval, as columns for ``mlflow.log_table``."""
    columns: dict[str, list[Any]] = {"judge": [], "metric": [], "value": [], "low": [], "high": []}

    def add(judge: str, metric: str, estimate: Any) -> None:
        columns["judge"].append(judge)
        columns["metric"].append(metric)
        columns["value"].append(_finite(estimate.value))
        columns["low"].append(_finite(estimate.low))
        columns["high"].append(_finite(estimate.high))

    for score in report.judges:
        name = score.name.replace(REFERENCE_PREFIX, "reference:")
        for metric, estimate in {**score.metrics, **score.confidence_metrics}.items():
            add(name, metric, estimate)
        if score.fraction_of_ceiling is not None:
            add(name, "fraction_of_ceiling", score.fraction_of_ceiling)
    if report.comparison is not None:
        for metric, estimate in report.comparison.deltas.items():
            add("Δ calibrated − raw", metric, estimate)
    return columns


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)

"""The judge card: a calibration's numbers in one markdown file with its plots, and the
same table for the terminal.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.table import Table

from judgecal.artifacts import CARD_FILE, HTML_CARD_FILE
from judgecal.report import plots
from judgecal.report.agreement import AgreementReport
from judgecal.report.records import EvaluationRecord, JudgeRecord
from judgecal.report.selective import SelectiveReport, card_section
from judgecal.stats.metrics import confusion
from judgecal.stats.selective import BandChoice
from judgecal.stats.uncertainty import Estimate

if TYPE_CHECKING:
    from judgecal.backends.calls import LMUsage

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:0.6em 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "th:first-child,td:first-child{text-align:left}img{max-width:100%;display:block;margin:0.5em 0}"
    "code{background:#f3f3f3;padding:0 3px}"
)


def _cell(estimate: Estimate | None, signed: bool = False, digits: int = 3, separator: str = " ") -> str:
    if estimate is None or np.isnan(estimate.value):
        return "–"
    fmt = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    if np.isnan(estimate.low):
        return fmt.format(estimate.value)
    return f"{fmt.format(estimate.value)}{separator}[{fmt.format(estimate.low)}, {fmt.format(estimate.high)}]"


def _number(value: float | None) -> str:
    return "–" if value is None or np.isnan(value) else f"{value:.3f}"


def metric_rows(report: AgreementReport) -> list[str]:
    names: list[str] = []
    for score in report.judges:
        names += [m for m in score.metrics if m not in names]
    return names


def terminal_table(report: AgreementReport) -> Table:
    """Metric | each judge [95% interval] | Δ candidate − baseline [interval]."""
    table = Table(
        title=f"{report.judge_name}: {report.rows} {report.split} rows in {report.groups} groups "
        f"(95% intervals, bootstrap over groups)",
        title_justify="left",
        show_lines=True,
    )
    table.add_column("metric", no_wrap=True)
    for score in report.judges:
        table.add_column(score.name, justify="right", no_wrap=True)
    if report.comparison is not None:
        table.add_column("Δ", justify="right", no_wrap=True)
    for metric in metric_rows(report):
        cells = [_cell(score.metrics.get(metric), digits=2, separator="\n") for score in report.judges]
        if report.comparison is not None:
            delta = report.comparison.deltas.get(metric)
            text = _cell(delta, signed=True, digits=2, separator="\n")
            if delta is not None and metric == report.comparison.metric:
                colour = {"improved": "green", "worse": "red"}.get(report.comparison.outcome)
                text = f"[bold {colour}]{text}[/]" if colour else f"[bold]{text}[/]"
            cells.append(text)
        table.add_row(metric, *cells)
    return table


def write_card(
    report: AgreementReport,
    record: EvaluationRecord,
    folder: str | Path,
    *,
    selective: SelectiveReport | None = None,
    band: BandChoice | None = None,
    usage: LMUsage | None = None,
) -> Path:
    """Write ``judge_card.md`` and its PNG plots into ``folder``; returns the markdown path.
    ``band``: a selective judge's band (or why there is none), ``selective``: what it did on
    the test rows, ``usage``: the LM calls the run made, with their tokens and cost."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = _plots(report, record, folder)
    selective_lines, _ = card_section(selective, band, folder)
    lines = [
        *_introduction(report, record),
        *selective_lines,
        *_agreement_section(report),
        *_ceiling_section(report),
        *_soft_label_section(report),
        *_confidence_section(report),
        *_bias_section(report),
        *cost_section(usage),
        "## Plots",
        "",
    ]
    for caption, image in images:
        lines += [f"![{caption}]({image.name})", ""]
    path = folder / CARD_FILE
    path.write_text("\n".join(lines), encoding="utf-8")
    write_html(path, f"Judge card: {report.judge_name}")
    return path


def cost_section(usage: LMUsage | None) -> list[str]:
    """What the run asked of its judge model: a reader weighing a recalibration needs it."""
    if usage is None:
        return []
    cost = (
        "unknown: LiteLLM's cost table has no price for the model (set `[lm] price_per_million`)"
        if usage.cost_usd is None
        else f"${usage.cost_usd:.4f}"
    )
    return [
        "## What the run cost",
        "",
        f"- LM calls: {usage.calls:,}, of which {usage.cached:,} were answered from DSPy's cache (free)",
        f"- tokens of the calls the model answered: {usage.prompt_tokens:,} prompt, "
        f"{usage.completion_tokens:,} completion",
        f"- cost: {cost} (a model run in this process costs nothing)",
        "",
    ]


def _introduction(report: AgreementReport, record: EvaluationRecord) -> list[str]:
    """The verdict in words first, then what was measured on which rows and how."""
    lines = [f"# Judge card: {report.judge_name}", ""]
    if report.comparison is not None:
        lines += [f"**{report.comparison.statement}**", ""]
    rates = ", ".join(f"{label} {share:.1%}" for label, share in report.human_rates.items())
    lines += [
        f"Task `{report.task}` ({report.kind}). Measured on the {report.split} split: {report.rows} rows in "
        f"{report.groups} groups, which the optimizer never saw. Human labels: {rates}.",
        "",
        f"Intervals are 95% percentile intervals from {report.n_resamples} bootstrap resamples of whole groups "
        f"(seed {report.seed}); differences are paired (both judges on the same resample).",
        "",
    ]
    if record.data_fingerprint:
        lines += [
            f"Data fingerprint `{record.data_fingerprint[:16]}`, split fingerprint "
            f"`{(record.split_fingerprint or '')[:16]}`.",
            "",
        ]
    return lines


def _agreement_section(report: AgreementReport) -> list[str]:
    """Every metric of every judge with its interval, and the paired difference."""
    lines = ["## Agreement with humans", ""]
    header = ["metric", *[score.name for score in report.judges]]
    if report.comparison is not None:
        header.append(f"Δ {report.comparison.candidate} − {report.comparison.baseline}")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric in metric_rows(report):
        cells = [_cell(score.metrics.get(metric)) for score in report.judges]
        if report.comparison is not None:
            cells.append(_cell(report.comparison.deltas.get(metric), signed=True))
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    lines.append("")
    rows_note = [f"{score.name}: {score.rows}" for score in report.judges if score.rows != report.rows]
    if rows_note:
        lines += ["Recorded judges are scored on the rows they answered (" + ", ".join(rows_note) + ").", ""]
    if report.comparison is not None and report.comparison.mcnemar is not None:
        test = report.comparison.mcnemar
        lines += [
            f"McNemar's exact test on which rows each judge got right: {test.only_second_correct} right only for "
            f"{report.comparison.candidate}, {test.only_first_correct} right only for "
            f"{report.comparison.baseline}, p = {test.p_value:.3g} (treats rows as independent; the group "
            "interval above is the criterion).",
            "",
        ]
    return lines


def _ceiling_section(report: AgreementReport) -> list[str]:
    """How far humans agree with each other, and how close each judge comes to that."""
    if report.ceiling is None:
        return []
    ceiling = report.ceiling
    lines = [
        "## Human ceiling",
        "",
        f"{ceiling.rows} rows carry {ceiling.annotators_per_row:.1f} annotators' labels on average.",
        "",
        "| human–human agreement | value |",
        "|---|---|",
        f"| Krippendorff's α | {_cell(ceiling.alpha)} |",
        f"| Fleiss' κ | {_number(ceiling.fleiss_kappa)} |",
        f"| each annotator vs the majority of the others: κ | {_cell(ceiling.annotator_vs_rest_kappa)} |",
        f"| each annotator vs the majority of the others: agreement | {_cell(ceiling.annotator_vs_rest_agreement)} |",
        f"| soft agreement (share of other annotators agreeing) | {_number(ceiling.soft_agreement)} |",
        "",
        "| judge | κ vs majority | fraction of the human ceiling (κ ÷ annotator-vs-rest κ) | soft agreement |",
        "|---|---|---|---|",
    ]
    for score in report.judges:
        lines.append(
            f"| {score.name} | {_cell(score.metrics.get('kappa') or score.metrics.get('weighted_kappa'))} | "
            f"{_cell(score.fraction_of_ceiling)} | {_number(score.soft_agreement)} |"
        )
    lines.append("")
    return lines


def _soft_label_section(report: AgreementReport) -> list[str]:
    """Without annotators' own labels, the rows' soft labels still say how many agreed."""
    if report.ceiling is not None or all(score.soft_agreement is None for score in report.judges):
        return []
    lines = [
        "## Agreement with soft labels",
        "",
        "Mean share of annotators who agree with each verdict (from the rows' soft labels).",
        "",
        "| judge | soft agreement |",
        "|---|---|",
    ]
    lines += [f"| {score.name} | {_number(score.soft_agreement)} |" for score in report.judges]
    lines.append("")
    return lines


def _confidence_section(report: AgreementReport) -> list[str]:
    confident = [score for score in report.judges if score.confidence_metrics]
    if not confident:
        return []
    lines = [
        "## Confidence",
        "",
        "How well the judge's P(positive) tracks the human labels.",
        "",
        "| judge | Brier (lower is better) | ECE (lower is better) | ROC-AUC |",
        "|---|---|---|---|",
    ]
    for score in confident:
        c = score.confidence_metrics
        lines.append(f"| {score.name} | {_cell(c.get('brier'))} | {_cell(c.get('ece'))} | {_cell(c.get('roc_auc'))} |")
    lines.append("")
    return lines


def _bias_section(report: AgreementReport) -> list[str]:
    """Each bias measure once, the humans' value beside every judge's, and what it means."""
    measures: list[str] = []
    for score in report.judges:
        measures += [b.name for b in score.bias if b.name not in measures]
    if not measures:
        return []
    lines = [
        "## Biases",
        "",
        "| measure | humans | " + " | ".join(s.name for s in report.judges) + " |",
        "|" + "---|" * (2 + len(report.judges)),
    ]
    descriptions = {}
    for measure in measures:
        human_value = None
        cells = []
        for score in report.judges:
            found = next((b for b in score.bias if b.name == measure), None)
            cells.append(_number(found.judge) if found else "–")
            if found is not None:
                descriptions[measure] = found.description
                human_value = found.human if human_value is None else human_value
        lines.append(f"| {measure} | {_number(human_value)} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- `{name}`: {text}" for name, text in descriptions.items()]
    lines.append("")
    return lines


def write_html(markdown_path: Path, title: str) -> Path:
    """The card as one HTML file with its plots embedded: MLflow's artifact viewer shows
    an HTML file whole, where it shows a markdown file's image links as text."""
    import base64
    import html
    import re

    from markdown_it import MarkdownIt

    folder = markdown_path.parent
    body = MarkdownIt("commonmark").enable("table").render(markdown_path.read_text(encoding="utf-8"))

    def embed(match: re.Match[str]) -> str:
        image = folder / match.group(1)
        if not image.exists():
            return match.group(0)
        return 'src="data:image/png;base64,' + base64.b64encode(image.read_bytes()).decode("ascii") + '"'

    body = re.sub(r'src="([^"/:]+\.png)"', embed, body)
    page = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    )
    target = folder / HTML_CARD_FILE
    target.write_text(page, encoding="utf-8")
    return target


# The metrics the interval plot shows, where a judge has them.
PLOTTED_METRICS = (
    "kappa",
    "weighted_kappa",
    "alpha",
    "mcc",
    "balanced_accuracy",
    "f1",
    "agreement",
    "order_consistency",
)


def _plots(report: AgreementReport, record: EvaluationRecord, folder: Path) -> list[tuple[str, Path]]:
    """The card's plots, each as (caption, PNG path). The judges run here are plotted;
    recorded reference judges only when there is nothing else."""
    live = {name: judge for name, judge in record.judges.items() if not judge.recorded}
    shown = live or record.judges
    images = [_confusion_plot(report, record, shown, folder)]
    reliability = _reliability_plot(report, record, shown, folder)
    if reliability is not None:
        images.append(reliability)
    images += [_group_plot(report, record, shown, folder), _interval_plot(report, folder)]
    return images


def _confusion_plot(
    report: AgreementReport, record: EvaluationRecord, shown: dict[str, JudgeRecord], folder: Path
) -> tuple[str, Path]:
    space = record.space
    labels = [str(label) for label in space.labels]
    human_idx = space.index(record.human)
    matrices = {}
    for name, judge in shown.items():
        cm = confusion(human_idx, space.index(judge.verdicts), space.size)[: len(labels)]
        if not cm[:, -1].any():
            cm = cm[:, : len(labels)]  # no invalid verdicts: no column for them
        matrices[name] = cm
    image = plots.confusion_matrices(
        matrices,
        labels,
        folder / "confusion_matrices.png",
        title=f"{report.judge_name}: human label vs verdict ({report.rows} {report.split} rows)",
    )
    return "Confusion matrices", image


def _reliability_plot(
    report: AgreementReport, record: EvaluationRecord, shown: dict[str, JudgeRecord], folder: Path
) -> tuple[str, Path] | None:
    """Only binary judges that state a probability have a reliability diagram."""
    space = record.space
    if space.kind != "binary":
        return None
    outcome = (space.index(record.human) == space.labels.index(space.positive)).astype(float)
    curves = {}
    for name, judge in shown.items():
        if judge.probability is not None and any(p is not None for p in judge.probability):
            kept = np.array([p is not None for p in judge.probability])
            probability = np.array([p for p in judge.probability if p is not None], float)
            curves[name] = (probability, outcome[kept])
    if not curves:
        return None
    image = plots.reliability_diagram(
        curves, folder / "reliability.png", title=f"{report.judge_name}: are the judge's probabilities calibrated?"
    )
    return "Reliability diagram", image


def _group_plot(
    report: AgreementReport, record: EvaluationRecord, shown: dict[str, JudgeRecord], folder: Path
) -> tuple[str, Path]:
    group_names = list(dict.fromkeys(record.groups))
    sizes = np.array([record.groups.count(g) for g in group_names])
    per_group = {name: _group_agreement(record, judge, group_names) for name, judge in shown.items()}
    image = plots.per_group_agreement(
        group_names,
        per_group,
        sizes,
        folder / "per_group_agreement.png",
        title=f"{report.judge_name}: agreement with humans per group",
    )
    return "Agreement per group", image


def _interval_plot(report: AgreementReport, folder: Path) -> tuple[str, Path]:
    headline = [m for m in PLOTTED_METRICS if any(m in s.metrics for s in report.judges)]
    estimates = {s.name: {m: (e.value, e.low, e.high) for m, e in s.metrics.items()} for s in report.judges}
    references = {}
    if report.ceiling is not None:
        references["human κ ceiling"] = report.ceiling.annotator_vs_rest_kappa.value
    image = plots.metric_intervals(
        headline,
        estimates,
        folder / "metric_intervals.png",
        title=f"{report.judge_name}: agreement with 95% group-bootstrap intervals",
        references=references,
    )
    return "Metrics with intervals", image


def _group_agreement(record: EvaluationRecord, judge: JudgeRecord, group_names: list[str]) -> np.ndarray:
    values = []
    for group in group_names:
        rows = [
            i
            for i, g in enumerate(record.groups)
            if g == group and (not judge.recorded or judge.verdicts[i] is not None)
        ]
        values.append(np.mean([judge.verdicts[i] == record.human[i] for i in rows]) if rows else np.nan)
    return np.array(values)

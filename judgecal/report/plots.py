"""Plots people compare runs by; written as PNG files and logged to MLflow.

Each function takes plain numbers (no judgecal objects beyond the report) and writes
one PNG whose title says what it shows. Figures are drawn on matplotlib's Agg canvas
directly, without pyplot, so the process's backend stays whatever it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

COLOURS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860")


def _figure(**settings: object) -> Figure:
    """A figure on its own Agg canvas: nothing registered with pyplot, nothing to close."""
    figure = Figure(**settings)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def confusion_matrices(matrices: dict[str, np.ndarray], labels: Sequence[str], path: Path, *, title: str) -> Path:
    """Side-by-side confusion matrices (rows: human label, columns: verdict), shaded by the
    share of each human row and annotated with counts."""
    figure = _figure(figsize=(3.6 * len(matrices) + 0.6, 3.8), layout="constrained")
    axes = figure.subplots(1, len(matrices), squeeze=False)
    for axis, (name, matrix) in zip(axes[0], matrices.items(), strict=True):
        shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                axis.text(
                    j,
                    i,
                    f"{int(matrix[i, j])}",
                    ha="center",
                    va="center",
                    color="white" if shares[i, j] > 0.6 else "black",
                    fontsize=9,
                )
        columns = [*labels, "no verdict"] if matrix.shape[1] > len(labels) else list(labels)
        axis.set_xticks(range(matrix.shape[1]), columns, rotation=30, ha="right")
        axis.set_yticks(range(matrix.shape[0]), list(labels)[: matrix.shape[0]])
        axis.set_xlabel("judge verdict")
        axis.set_ylabel("human label")
        axis.set_title(name, fontsize=10)
    figure.suptitle(title, fontsize=11)
    return _save(figure, path)


def reliability_diagram(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, *, title: str, bins: int = 10
) -> Path:
    """Observed share of positive human labels against the judge's P(positive), per bin;
    points on the diagonal are calibrated probabilities. Marker area shows the bin's rows."""
    figure = _figure(figsize=(5.2, 4.6), layout="constrained")
    axis = figure.subplots()
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    edges = np.linspace(0, 1, bins + 1)
    for colour, (name, (probability, outcome)) in zip(COLOURS, curves.items(), strict=False):
        which = np.clip(np.digitize(probability, edges[1:-1], right=True), 0, bins - 1)
        xs, ys, sizes = [], [], []
        for b in range(bins):
            members = which == b
            if members.any():
                xs.append(probability[members].mean())
                ys.append(outcome[members].mean())
                sizes.append(members.sum())
        axis.plot(xs, ys, color=colour, marker="o", linewidth=1.2, markersize=3, label=name)
        axis.scatter(xs, ys, s=np.array(sizes) * 200 / max(1, len(probability)) + 8, color=colour, alpha=0.35)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("judge's P(positive)")
    axis.set_ylabel("share of rows humans labelled positive")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8, loc="upper left")
    return _save(figure, path)


def per_group_agreement(
    groups: Sequence[str],
    values: dict[str, np.ndarray],
    sizes: np.ndarray,
    path: Path,
    *,
    title: str,
    metric: str = "agreement",
) -> Path:
    """One row per group: each judge's agreement with humans on that group's rows."""
    order = np.argsort(-np.asarray(sizes))
    height = max(3.0, 0.28 * len(groups) + 1.2)
    figure = _figure(figsize=(6.4, height), layout="constrained")
    axis = figure.subplots()
    positions = np.arange(len(groups))
    for offset, (colour, (name, series)) in enumerate(zip(COLOURS, values.items(), strict=False)):
        shift = (offset - (len(values) - 1) / 2) * 0.18
        axis.scatter(np.asarray(series)[order], positions + shift, color=colour, s=22, label=name, zorder=3)
    axis.set_yticks(positions, [f"{groups[i]} (n={int(sizes[i])})" for i in order], fontsize=7)
    axis.invert_yaxis()
    axis.set_xlim(-0.02, 1.02)
    axis.set_xlabel(f"{metric} with humans within the group")
    axis.grid(axis="x", alpha=0.3)
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(figure, path)


def metric_intervals(
    metrics: Sequence[str],
    estimates: dict[str, dict[str, tuple[float, float, float]]],
    path: Path,
    *,
    title: str,
    references: dict[str, float] | None = None,
    xlabel: str = "value on the test split (95% group-bootstrap interval)",
) -> Path:
    """Point estimates and 95% intervals of each metric for each judge (a forest plot);
    dashed lines mark reference values such as the human ceiling."""
    figure = _figure(figsize=(7.6, 0.55 * len(metrics) * max(1, len(estimates)) / 1.6 + 1.8), layout="constrained")
    axis = figure.subplots()
    positions = np.arange(len(metrics))
    for offset, (colour, (name, values)) in enumerate(zip(COLOURS, estimates.items(), strict=False)):
        shift = (offset - (len(estimates) - 1) / 2) * 0.2
        labelled = False
        for i, metric in enumerate(metrics):
            if metric not in values:
                continue
            value, low, high = values[metric]
            if np.isnan(value):
                continue
            axis.errorbar(
                value,
                i + shift,
                xerr=[[max(0, value - low)], [max(0, high - value)]],
                fmt="o",
                color=colour,
                markersize=4,
                capsize=3,
                label=None if labelled else name,
            )
            labelled = True
    for label, value in (references or {}).items():
        axis.axvline(value, color="grey", linestyle="--", linewidth=1)
        axis.text(value, -0.55, label, fontsize=7, color="grey", ha="center", va="bottom")
    axis.set_yticks(positions, list(metrics))
    axis.invert_yaxis()
    axis.axvline(0, color="black", linewidth=0.6)
    axis.grid(axis="x", alpha=0.3)
    axis.set_xlabel(xlabel)
    axis.set_title(title, fontsize=10)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(figure, path)


def risk_coverage(
    coverage: Sequence[float],
    precision: dict[str, Sequence[float | None]],
    targets: dict[str, float],
    chosen: float,
    path: Path,
    *,
    title: str,
) -> Path:
    """Each verdict's precision on the rows answered as the share answered grows (the rows
    the judge is surest of first), its target dotted, the chosen band's coverage marked."""
    figure = _figure(figsize=(6.4, 4.2), layout="constrained")
    axis = figure.subplots()
    for colour, (verdict, values) in zip(COLOURS, precision.items(), strict=False):
        ys = np.array([np.nan if v is None else v for v in values], float)
        axis.plot(coverage, ys, color=colour, linewidth=1.5, label=f"precision of '{verdict}'")
        if verdict in targets:
            axis.axhline(targets[verdict], color=colour, linestyle=":", linewidth=1.2)
    axis.axvline(chosen, color="black", linewidth=1, label=f"chosen band: coverage {chosen:.2f}")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("coverage (share of rows answered)")
    axis.set_ylabel("precision on the rows answered")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8, loc="lower left")
    axis.grid(alpha=0.3)
    return _save(figure, path)


def size_curves(panels: Sequence[dict], path: Path, *, title: str) -> Path:
    """One panel per planned decision: what the simulated studies gave at each number of
    groups (points), the monotone curve fitted through them (line), the target (dashed)
    and the number of groups chosen (dotted). Each panel is a dict of plain numbers:
    ``label``, ``sizes``, ``simulated``, ``smooth_sizes``, ``fitted``, ``target``, ``chosen``."""
    figure = _figure(figsize=(4.6 * len(panels) + 0.4, 3.8), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for axis, panel, colour in zip(axes, panels, COLOURS, strict=False):
        axis.plot(panel["sizes"], panel["simulated"], "o", color=colour, label="simulated studies")
        axis.plot(panel["smooth_sizes"], panel["fitted"], "-", color=colour, label="fitted curve")
        axis.axhline(panel["target"], color="grey", linestyle="--", linewidth=1, label="target")
        axis.axvline(
            panel["chosen"], color="black", linestyle=":", linewidth=1, label=f"plan: {panel['chosen']} groups"
        )
        axis.set_xscale("log")
        axis.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("groups labelled")
        axis.set_title(panel["label"], fontsize=9)
        axis.legend(fontsize=7)
    figure.suptitle(title, fontsize=11)
    return _save(figure, path)


@dataclass(frozen=True)
class SequencePanel:
    """One sequence in the monitor's plot: each batch's own value (with its 95% interval,
    NaN where it has none), the bounds after each batch and the level."""

    quantity: str  # the axis label: "agreement with people"
    short: str  # in the legend: "this batch's agreement"
    values: Sequence[tuple[float, float, float]]
    upper: Sequence[float]
    lower: Sequence[float]
    level: float


def monitor_sequence(
    batches: Sequence[int],
    panels: Sequence[SequencePanel],
    path: Path,
    *,
    title: str,
) -> Path:
    """One panel per sequence, stacked: each batch's value with its interval, the confidence
    sequence after each batch (shaded between its bounds, the upper bound drawn), the level
    the upper bound is checked against (dashed) and, from the batch where that panel's upper
    bound went below its level, a red band and the crossing marked: only the sequences that
    fell look alarmed."""
    figure = _figure(figsize=(8.4, 4.2 if len(panels) == 1 else 1.0 + 2.4 * len(panels)), layout="constrained")
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    x = np.asarray(batches, float)
    right = (x.max() if len(x) else 1) + 0.5
    for axis, panel in zip(axes, panels, strict=True):
        _sequence_panel(axis, x, panel)
        below = [i for i, upper in enumerate(panel.upper) if upper < panel.level]
        if below:
            first = below[0]
            axis.axvspan(x[first] - 0.5, right, color=COLOURS[3], alpha=0.12, label=f"below since batch {x[first]:g}")
            axis.plot(x[below], np.asarray(panel.upper)[below], "o", color=COLOURS[3], markersize=7, zorder=5)
        axis.set_xlim(0.5, right)
        axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[-1].set_xticks(x)
    axes[-1].set_xlabel("batch")
    axes[0].set_title(title, fontsize=10)
    return _save(figure, path)


def _sequence_panel(axis: Any, x: np.ndarray, panel: SequencePanel) -> None:
    axis.fill_between(
        x, panel.lower, panel.upper, color=COLOURS[0], alpha=0.18, label="confidence sequence (all batches so far)"
    )
    axis.plot(x, panel.upper, "-o", color=COLOURS[0], linewidth=1.8, markersize=4, label="its upper bound")
    values = np.array([a[0] for a in panel.values], float)
    errors = np.array([[max(0, a[0] - a[1]) for a in panel.values], [max(0, a[2] - a[0]) for a in panel.values]], float)
    axis.errorbar(
        x + 0.08, values, yerr=np.nan_to_num(errors), fmt="s", color=COLOURS[1], capsize=3, markersize=5,
        label=f"this batch's {panel.short}" + (" (95%)" if np.isfinite([a[1] for a in panel.values]).any() else ""),
    )  # fmt: skip
    axis.axhline(panel.level, color="black", linestyle="--", linewidth=1.2, label=f"level {panel.level:.3f}")
    axis.set_ylim(0, 1.02)
    axis.set_ylabel(panel.quantity)
    axis.grid(alpha=0.3)

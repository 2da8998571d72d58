"""Plots people compare runs by; written as PNG files and logged to MLflow."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def raw_vs_calibrated(
    metrics: Sequence[str],
    raw: dict[str, float],
    calibrated: dict[str, float],
    path: Path,
    *,
    title: str,
) -> Path:
    """Grouped bars: each metric for the raw and the calibrated judge on the test split."""
    names = [m for m in metrics if m in raw and m in calibrated]
    positions = np.arange(len(names))
    width = 0.38
    figure, axes = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 2), 4.2))
    raw_bars = axes.bar(positions - width / 2, [raw[m] for m in names], width, label="raw (zero-shot)")
    cal_bars = axes.bar(positions + width / 2, [calibrated[m] for m in names], width, label="calibrated")
    for bars in (raw_bars, cal_bars):
        axes.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    axes.set_xticks(positions, names, rotation=20, ha="right")
    axes.axhline(0, color="black", linewidth=0.8)
    low = min(0.0, *(raw[m] for m in names), *(calibrated[m] for m in names))
    axes.set_ylim(low - 0.05 if low < 0 else 0, 1.1)
    axes.set_ylabel("value on the test split")
    axes.set_title(title)
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path

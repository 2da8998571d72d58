"""Does ``judgecal plan`` ask for the labels that give the interval it promises? Checked on
the shared relevance file.

    .venv/bin/python experiments/bench_plan.py [--pilot-groups 8] [--repetitions 20] [--draws 10]

Each repetition draws a pilot of ``--pilot-groups`` prompts at random from the file's 28
and plans, as ``judgecal plan`` does (``plan_width``, the default 200 simulated studies
of 400 bootstrap draws at each size), the prompts needed for an interval of ± each
``--half-widths`` for two quantities:

* ``kappa of gpt-5.4``: the raw judge, GPT-5.4's recorded verdicts;
* ``kappa of gemma minus gpt``: the comparison, Gemma-4-31B's recorded verdicts standing in
  for a calibrated judge (calibrating a stack on every draw would take hours on two cores;
  the comparison's interval is paired on the same rows either way).

Then ``--draws`` times it draws that many prompts at random from the file (without
replacement; with replacement when the plan asks for more than the file holds, counted in
the table), and scores them as ``judgecal report`` would: the 95% group-bootstrap
percentile interval over the drawn prompts (2,000 resamples). The table gives, per
quantity and width, the prompts and rows planned and the mean width of the intervals
obtained as a share of the width asked for, with a t interval over the repetitions
(each repetition's pilot is independent of the others').
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy.stats import t as student

from judgecal.pipeline.plan import Pilot, pilot_from_rows
from judgecal.stats.planning import GroupTypes, Quantity, Simulation, kappa_gain, kappa_of, plan_width
from judgecal.stats.uncertainty import group_bootstrap

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "relevance" / "dev.jsonl"
RAW, OTHER = "gpt-5.4", "gemma-4-31b-it"


@dataclass(frozen=True)
class Outcome:
    """One planned size and the widths its random draws gave."""

    quantity: str
    half_width: float
    groups: int
    rows: int
    widths: list[float]
    with_replacement: bool


def group_tables(pilot: Pilot) -> np.ndarray:
    """Each prompt's confusion matrices, per judge: (prompts, judges, size, size)."""
    size = pilot.space.size
    tables = np.zeros((pilot.n_groups, len(pilot.judges), size * size))
    for j, verdicts in enumerate(pilot.verdicts):
        np.add.at(tables[:, j], (pilot.groups, pilot.human * size + verdicts), 1.0)
    return tables.reshape(pilot.n_groups, len(pilot.judges), size, size)


def obtained_width(tables: np.ndarray, quantity: Quantity, seed: int) -> float:
    """The 95% group-bootstrap interval's width on these prompts, as a report computes it."""

    def statistic(sample: np.ndarray) -> np.ndarray:
        return quantity.compute(tables[sample].sum(axis=-4))[None, :]

    low, high = group_bootstrap(statistic, len(tables), vectorized=True, n_resamples=2000, seed=seed)
    return float(high[0] - low[0])


def run(args: argparse.Namespace, console: Console) -> list[Outcome]:
    pilot = pilot_from_rows(args.data, "relevance", [RAW, OTHER], verdicts=None)
    tables = group_tables(pilot)
    rows_per_group = tables[:, 0].sum(axis=(1, 2))
    quantities = [kappa_of(0, name=f"kappa of {RAW}"), kappa_gain(0, 1, name="kappa of gemma minus gpt")]
    rng = np.random.default_rng(args.seed)
    outcomes: list[Outcome] = []
    for repetition in range(args.repetitions):
        chosen = rng.choice(pilot.n_groups, args.pilot_groups, replace=False)
        types = GroupTypes(
            tables=tables[chosen], weights=np.full(len(chosen), 1 / len(chosen)), rows=rows_per_group[chosen]
        )
        settings = Simulation(simulations=args.simulations, resamples=args.resamples, seed=repetition)
        for quantity in quantities:
            for half_width in args.half_widths if quantity is quantities[0] else args.gain_half_widths:
                plan = plan_width(
                    types, quantity, half_width, settings, start=args.pilot_groups, least_groups=10, most_groups=2000
                )
                replace = plan.groups > pilot.n_groups
                widths = []
                for draw in range(args.draws):
                    drawn = rng.choice(pilot.n_groups, plan.groups, replace=replace)
                    widths.append(obtained_width(tables[drawn], quantity, seed=draw))
                outcomes.append(Outcome(quantity.name, half_width, plan.groups, plan.rows, widths, replace))
        console.print(f"repetition {repetition + 1}/{args.repetitions} done", highlight=False)
    return outcomes


def summary(outcomes: list[Outcome], args: argparse.Namespace) -> Table:
    table = Table(
        title=f"widths obtained with the planned prompts, {args.repetitions} pilots of {args.pilot_groups} prompts, "
        f"{args.draws} draws each",
        title_justify="left",
    )
    for column in (
        "quantity",
        "asked ±",
        "prompts planned (median, range)",
        "rows planned (median)",
        "plans over 28 prompts",
        "obtained / asked width (mean, 95% t interval)",
    ):
        table.add_column(column, justify="left" if column == "quantity" else "right")
    keys = sorted({(o.quantity, o.half_width) for o in outcomes})
    for name, half_width in keys:
        chosen = [o for o in outcomes if o.quantity == name and o.half_width == half_width]
        ratios = np.array([np.mean(o.widths) / (2 * half_width) for o in chosen])
        spread = student.ppf(0.975, len(ratios) - 1) * ratios.std(ddof=1) / np.sqrt(len(ratios))
        groups = np.array([o.groups for o in chosen])
        table.add_row(
            name,
            f"{half_width:g}",
            f"{np.median(groups):.0f} ({groups.min()}–{groups.max()})",
            f"{np.median([o.rows for o in chosen]):,.0f}",
            f"{sum(o.with_replacement for o in chosen)}/{len(chosen)}",
            f"{ratios.mean():.3f} [{ratios.mean() - spread:.3f}, {ratios.mean() + spread:.3f}]",
        )
    return table


def widths(text: str) -> list[float]:
    return [float(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--pilot-groups", type=int, default=8)
    parser.add_argument("--repetitions", type=int, default=20)
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--half-widths", type=widths, default=[0.08, 0.1], help="of kappa (default 0.08,0.1)")
    parser.add_argument("--gain-half-widths", type=widths, default=[0.04, 0.05], help="of the gain (0.04,0.05)")
    parser.add_argument("--simulations", type=int, default=200)
    parser.add_argument("--resamples", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    console = Console()
    started = time.perf_counter()
    outcomes = run(args, console)
    console.print(summary(outcomes, args))
    console.print(f"{time.perf_counter() - started:.0f} s", highlight=False)


if __name__ == "__main__":
    main()

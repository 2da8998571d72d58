"""Does ``judgecal plan`` ask for the labels that give the interval it promises? Checked on
the shared relevance file.

    .venv/bin/python experiments/bench_plan.py [--pilot-groups 8] [--repetitions 20] [--draws 10]
        [--calibrated stack|none] [--calibration-groups 8] [--pilot-uncertainty ignore|mean|upper]
        [--pilot-confidence 0.8] [--json FILE]
    .venv/bin/python experiments/bench_plan.py --influence

Each repetition draws a pilot of ``--pilot-groups`` prompts at random from the file's 28
and plans, as ``judgecal plan`` does (``plan_width``, the default 200 simulated studies
of 400 bootstrap draws at each size), the prompts needed for an interval of ± each
``--half-widths`` for these quantities:

* ``kappa of gpt-5.4``: the raw judge, GPT-5.4's recorded verdicts;
* ``kappa of gemma minus gpt``: a comparison with Gemma-4-31B's recorded verdicts standing
  in for a calibrated judge, the same judge on every draw;
* ``kappa of stack minus gpt`` (``--calibrated stack``, the default): the comparison a user
  makes, a judge calibrated on labelled prompts against the raw judge. The calibration is
  judgecal's ``stacking`` strategy over the two recorded verdicts (no verifiers: a fit
  takes a fraction of a second). The pilot's calibrated verdicts are out of fold: each
  pilot prompt's from a stack fitted on the pilot's other prompts. Each draw calibrates
  afresh: ``--calibration-groups`` prompts are set aside at random, a stack is fitted on
  their rows, and the draw's prompts come from the rest of the file.

Then ``--draws`` times it draws that many prompts at random (without replacement; with
replacement when the plan asks for more than there are to draw from, counted in the
table), and scores them as ``judgecal report`` would: the 95% group-bootstrap percentile
interval over the drawn prompts (2,000 resamples; a comparison's interval is paired on the
same rows). The table gives, per quantity and width, the prompts and rows planned, the
quantity on the pilots and on the draws, the width the pilot's own simulated studies gave
at the size planned (below the width asked when the plan is at the least size allowed, 10
prompts), and the mean width of the intervals obtained as a share of the width asked for,
with a t interval over the repetitions (each repetition's pilot is independent of the
others'). ``--pilot-uncertainty`` sizes every plan as ``judgecal plan
--pilot-uncertainty`` does (``pilot_allowance``: narrower than asked by the factor a pilot
of ``--pilot-groups`` prompts calls for; ``ignore``, the default, as before), and the
pilot's own width is then below the width asked by that factor. ``--influence`` prints
instead how far each prompt moves each quantity on the whole file, which tells whether a
few prompts carry it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy.stats import t as student

from judgecal.calibrate.trained import StackingJudge
from judgecal.data.rows import LabeledRow, load_rows
from judgecal.judges.fitted import RecordedJudge
from judgecal.stats.metrics import LabelSpace
from judgecal.stats.planning import (
    GroupTypes,
    Quantity,
    Simulation,
    kappa_gain,
    kappa_of,
    pilot_allowance,
    plan_width,
)
from judgecal.stats.uncertainty import group_bootstrap
from judgecal.tasks.registry import Task, resolve_task

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "relevance" / "dev.jsonl"
RAW, OTHER = "gpt-5.4", "gemma-4-31b-it"
STAND_IN = "kappa of gemma minus gpt"
CALIBRATED = "kappa of stack minus gpt"


@dataclass(frozen=True)
class Outcome:
    """One planned size and the widths its random draws gave."""

    quantity: str
    half_width: float
    groups: int
    rows: int
    widths: list[float]
    with_replacement: bool
    planned_value: float  # the quantity on the pilot as a whole
    values: list[float]  # the quantity on each draw
    planned_width: float  # the mean width the pilot's simulated studies gave at the planned size
    pilot: list[str]  # the pilot's prompts


@dataclass(frozen=True)
class FileRows:
    """The file's rows, their prompts (codes 0..G-1 in order of appearance) and the
    category index of each row's label and recorded verdicts (``RAW``, ``OTHER``)."""

    task: Task
    space: LabelSpace
    rows: tuple[LabeledRow, ...]
    groups: np.ndarray  # (rows,)
    human: np.ndarray  # (rows,)
    verdicts: np.ndarray  # (2, rows): RAW, OTHER

    @classmethod
    def load(cls, path: Path) -> FileRows:
        return cls.of(load_rows(path, resolve_task("relevance").spec).rows)

    @classmethod
    def of(cls, rows: Sequence[LabeledRow]) -> FileRows:
        """Relevance rows whose ``reference_judges`` hold ``RAW`` and ``OTHER``."""
        from judgecal.report.records import label_space

        task = resolve_task("relevance")
        space = label_space(task.spec)
        codes: dict[str, int] = {}
        groups = np.array([codes.setdefault(row.group, len(codes)) for row in rows], dtype=np.int64)
        verdicts = np.stack([space.index([row.reference_judges[name] for row in rows]) for name in (RAW, OTHER)])
        return cls(task, space, tuple(rows), groups, space.index([row.label for row in rows]), verdicts)

    @property
    def n_groups(self) -> int:
        return int(self.groups.max()) + 1

    def names(self, prompts: np.ndarray) -> list[str]:
        """The ``group`` of each prompt code."""
        first = {int(code): row.group for code, row in zip(self.groups, self.rows, strict=True)}
        return [first[int(code)] for code in prompts]

    def rows_of(self, prompts: np.ndarray) -> np.ndarray:
        """Indices of the rows of these prompts (each prompt once)."""
        return np.flatnonzero(np.isin(self.groups, prompts))

    def tables(self, verdicts: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Each prompt's confusion matrices, per judge: (prompts of the file, judges, size,
        size); ``verdicts`` (judges, len(rows)) are the judges' verdicts on ``rows``, and a
        prompt none of whose rows is given stays empty."""
        size = self.space.size
        out = np.zeros((self.n_groups, len(verdicts), size * size))
        for j, judged in enumerate(verdicts):
            np.add.at(out[:, j], (self.groups[rows], self.human[rows] * size + judged), 1.0)
        return out.reshape(self.n_groups, len(verdicts), size, size)

    def calibrate(self, prompts: np.ndarray) -> StackingJudge:
        """judgecal's ``stacking`` strategy fitted on these prompts' rows, as in
        docs/selective.md: GPT-5.4 as the raw judge, both recorded verdicts as features,
        no verifiers; its cut is chosen on its own grouped out-of-fold predictions."""
        raw = RecordedJudge(self.task, RAW, "relevance")
        fitting = [self.rows[i] for i in self.rows_of(prompts)]
        return StackingJudge(raw, references=(RAW, OTHER), verifiers=()).fit(fitting)

    def judged(self, judge: StackingJudge, rows: np.ndarray) -> np.ndarray:
        return self.space.index([verdict.label for verdict in judge.predict([self.rows[i] for i in rows])])


def obtained_width(tables: np.ndarray, quantity: Quantity, seed: int) -> tuple[float, float]:
    """The 95% group-bootstrap interval's width on these prompts, as a report computes it,
    and the quantity on them."""

    def statistic(sample: np.ndarray) -> np.ndarray:
        return quantity.compute(tables[sample].sum(axis=-4))[None, :]

    low, high = group_bootstrap(statistic, len(tables), vectorized=True, n_resamples=2000, seed=seed)
    return float(high[0] - low[0]), float(quantity.compute(tables.sum(axis=0)))


def cross_fitted_pilot(data: FileRows, pilot: np.ndarray) -> np.ndarray:
    """The pilot's tables for GPT-5.4 and the stack, each pilot prompt's calibrated
    verdicts from a stack fitted on the pilot's other prompts: (pilot prompts, 2, size, size)."""
    rows = data.rows_of(pilot)
    stacked = np.empty(len(rows), dtype=np.int64)
    for prompt in pilot:
        held = data.groups[rows] == prompt
        judge = data.calibrate(pilot[pilot != prompt])
        stacked[held] = data.judged(judge, rows[held])
    return data.tables(np.stack([data.verdicts[0, rows], stacked]), rows)[pilot]


def calibrated_draw(
    data: FileRows, quantity: Quantity, n_groups: int, calibration: int, rng: np.random.Generator, seed: int
) -> tuple[float, float, bool]:
    """One draw with its own calibration: ``calibration`` prompts set aside and the stack
    fitted on them, ``n_groups`` prompts drawn from the rest and the stack's κ gain over
    GPT-5.4 scored on them. Returns the width, the gain and whether prompts were drawn
    with replacement."""
    held = rng.choice(data.n_groups, calibration, replace=False)
    pool = np.setdiff1d(np.arange(data.n_groups), held)
    replace = n_groups > len(pool)
    drawn = rng.choice(pool, n_groups, replace=replace)
    judge = data.calibrate(held)
    rows = data.rows_of(np.unique(drawn))
    tables = data.tables(np.stack([data.verdicts[0, rows], data.judged(judge, rows)]), rows)
    width, value = obtained_width(tables[drawn], quantity, seed=seed)
    return width, value, replace


def plan_for(
    types: GroupTypes, quantity: Quantity, half_width: float, settings: Simulation, args: argparse.Namespace
) -> tuple[int, int, float, float]:
    """The plan ``judgecal plan`` makes from a pilot of ``--pilot-groups`` prompts, sized for
    the pilot's uncertainty as ``--pilot-uncertainty`` says."""
    allowance = pilot_allowance(args.pilot_groups, args.pilot_uncertainty, args.pilot_confidence)
    plan = plan_width(
        types,
        quantity,
        half_width,
        settings,
        start=args.pilot_groups,
        least_groups=10,
        most_groups=2000,
        allowance=allowance,
    )
    return plan.groups, plan.rows, plan.value, plan.width


def outcome(
    name: str,
    half_width: float,
    plan: tuple[int, int, float, float],
    scored: list[tuple[float, float]],
    with_replacement: bool,
    pilot: list[str],
) -> Outcome:
    """A plan (:func:`plan_for`) and its draws' (width, value) as a row of the table."""
    groups, rows, value, width = plan
    widths = [w for w, _ in scored]
    values = [v for _, v in scored]
    return Outcome(name, half_width, groups, rows, widths, with_replacement, value, values, width, pilot)


def pilot_types(tables: np.ndarray) -> GroupTypes:
    return GroupTypes(tables=tables, weights=np.full(len(tables), 1 / len(tables)), rows=tables[:, 0].sum(axis=(1, 2)))


def recorded_outcomes(
    data: FileRows, pilot: np.ndarray, args: argparse.Namespace, repetition: int, rng: np.random.Generator
) -> list[Outcome]:
    """The plans for GPT-5.4's κ and for the stand-in comparison, and their draws."""
    tables = data.tables(data.verdicts, np.arange(len(data.rows)))
    types = pilot_types(tables[pilot])
    settings = Simulation(simulations=args.simulations, resamples=args.resamples, seed=repetition)
    outcomes = []
    plans = [
        (kappa_of(0, name=f"kappa of {RAW}"), args.half_widths),
        (kappa_gain(0, 1, name=STAND_IN), args.gain_half_widths),
    ]
    for quantity, half_widths in plans:
        for half_width in half_widths:
            plan = plan_for(types, quantity, half_width, settings, args)
            groups = plan[0]
            replace = groups > data.n_groups
            scored = [
                obtained_width(tables[rng.choice(data.n_groups, groups, replace=replace)], quantity, seed=draw)
                for draw in range(args.draws)
            ]
            outcomes.append(outcome(quantity.name, half_width, plan, scored, replace, data.names(pilot)))
    return outcomes


def calibrated_outcomes(
    data: FileRows, pilot: np.ndarray, args: argparse.Namespace, repetition: int, rng: np.random.Generator
) -> list[Outcome]:
    """The plans for the stack's κ gain over GPT-5.4 from the pilot's out-of-fold calibrated
    verdicts, and their draws, each calibrated afresh."""
    types = pilot_types(cross_fitted_pilot(data, pilot))
    settings = Simulation(simulations=args.simulations, resamples=args.resamples, seed=repetition)
    quantity = kappa_gain(0, 1, name=CALIBRATED)
    outcomes = []
    for half_width in args.gain_half_widths:
        plan = plan_for(types, quantity, half_width, settings, args)
        drawn = [
            calibrated_draw(data, quantity, plan[0], args.calibration_groups, rng, seed=draw)
            for draw in range(args.draws)
        ]
        scored = [(width, value) for width, value, _ in drawn]
        replace = any(replaced for _, _, replaced in drawn)
        outcomes.append(outcome(quantity.name, half_width, plan, scored, replace, data.names(pilot)))
    return outcomes


def run(args: argparse.Namespace, console: Console) -> list[Outcome]:
    data = FileRows.load(args.data)
    rng = np.random.default_rng(args.seed)
    calibrating = np.random.default_rng([args.seed, 1])  # its own stream: the other rows draw as without it
    outcomes: list[Outcome] = []
    for repetition in range(args.repetitions):
        pilot = rng.choice(data.n_groups, args.pilot_groups, replace=False)
        outcomes += recorded_outcomes(data, pilot, args, repetition, rng)
        if args.calibrated == "stack":
            outcomes += calibrated_outcomes(data, pilot, args, repetition, calibrating)
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
        "plans drawn with replacement",
        "on pilots / on draws (mean)",
        "pilot's own width / asked (mean)",
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
            f"{np.mean([o.planned_value for o in chosen]):.3f} / {np.mean([np.mean(o.values) for o in chosen]):.3f}",
            f"{np.mean([o.planned_width for o in chosen]) / (2 * half_width):.3f}",
            f"{ratios.mean():.3f} [{ratios.mean() - spread:.3f}, {ratios.mean() + spread:.3f}]",
        )
    return table


def influence(data: FileRows) -> Table:
    """How much each prompt moves each quantity on the whole file (the jackknife: the
    quantity minus the quantity without that prompt; the stack fitted on every prompt), and
    the share of the jackknife's sum of squares the most influential prompts carry. A
    quantity one or two prompts carry is one a pilot of a few prompts mostly sees without
    them."""
    every = np.arange(len(data.rows))
    stacked = data.judged(data.calibrate(np.arange(data.n_groups)), every)
    tables = data.tables(np.stack([data.verdicts[0], stacked, data.verdicts[1]]), every)
    whole = tables.sum(axis=0)
    quantities = [
        kappa_of(0, name=f"kappa of {RAW}"),
        kappa_gain(0, 1, name=CALIBRATED),
        kappa_gain(0, 2, name=STAND_IN),
    ]
    table = Table(title="each prompt's pull on the whole file (jackknife)", title_justify="left")
    columns = ("quantity", "on the file", "largest pull", "its prompt", "second", "sum of squares: top 1", "top 3")
    for column in columns:
        table.add_column(column, justify="left" if column == "quantity" else "right")
    for quantity in quantities:
        value = float(quantity.compute(whole))
        pulls = np.abs([value - float(quantity.compute(whole - group)) for group in tables])
        order = np.argsort(pulls)[::-1]
        shares = np.cumsum(pulls[order] ** 2) / np.sum(pulls**2)
        table.add_row(
            quantity.name,
            f"{value:.3f}",
            f"{pulls[order[0]]:.4f}",
            data.names(order[:1])[0],
            f"{pulls[order[1]]:.4f}",
            f"{shares[0]:.2f}",
            f"{shares[2]:.2f}",
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
    parser.add_argument(
        "--calibrated",
        choices=["stack", "none"],
        default="stack",
        help="stack: also plan the gain of a stack calibrated on every draw (default); none: the recorded judges only",
    )
    parser.add_argument(
        "--calibration-groups", type=int, default=8, help="prompts each draw's stack is fitted on (default 8)"
    )
    parser.add_argument(
        "--pilot-uncertainty",
        choices=["ignore", "mean", "upper"],
        default="ignore",
        help="size plans for the pilot's own uncertainty, as judgecal plan does (default ignore)",
    )
    parser.add_argument("--pilot-confidence", type=float, default=0.8, help="of --pilot-uncertainty upper (0.8)")
    parser.add_argument("--json", type=Path, help="write every plan and its draws to this file")
    parser.add_argument(
        "--influence", action="store_true", help="print each prompt's pull on every quantity on the file, and stop"
    )
    args = parser.parse_args()
    console = Console()
    if args.influence:
        console.print(influence(FileRows.load(args.data)))
        return
    started = time.perf_counter()
    outcomes = run(args, console)
    console.print(summary(outcomes, args))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=1) + "\n", encoding="utf-8")
    console.print(f"{time.perf_counter() - started:.0f} s", highlight=False)


if __name__ == "__main__":
    main()

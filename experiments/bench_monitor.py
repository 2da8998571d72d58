"""Benchmark of ``judgecal monitor``'s alarm on simulated streams of batches.

    .venv/bin/python experiments/bench_monitor.py [--streams 500] [--batches 40] [--drop-at 10]

Each stream is a judge re-checked batch after batch: each batch holds ``--groups`` prompts
of ``--rows`` rows; each prompt has its own chance that the judge agrees with people,
drawn from a beta distribution around the batch's agreement (``--spread``: the beta's
a + b; smaller means prompts differ more), and each of its rows agrees with that chance.
The monitor counts one observation per prompt, as ``judgecal monitor`` does
(``judgecal.stats.sequential.first_alarm``, the same code).

* **stable**: agreement stays at the level the monitor checks against (the hardest case
  for false alarms): the share of streams that ever alarm within ``--batches`` batches
  should stay at most ``--alpha``.
* **drop**: agreement is at the level until batch ``--drop-at``, then ``--drop`` (10
  points) lower: the share of streams that alarmed by the end, and the delay in batches
  after the drop (median and quartiles, among streams that alarmed after it).
* **row by row**: the stable streams, counted one observation per row as if rows of a
  prompt were independent: why the monitor does not.

Prints one table per level; each row is a number of prompts per batch.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

from judgecal.stats.sequential import first_alarm


def stream(
    rng: np.random.Generator, agreement: np.ndarray, groups: int, rows: int, spread: float
) -> tuple[np.ndarray, np.ndarray]:
    """One stream: per prompt the share of its rows the judge got right, and per row whether it did."""
    mean = np.repeat(agreement, groups)
    chance = rng.beta(mean * spread, (1 - mean) * spread)
    right = rng.random((len(chance), rows)) < chance[:, None]
    return right.mean(axis=1), right.ravel()


def batch_of(observation: int, per_batch: int) -> int:
    """The batch (1-based) whose check raised an alarm at this observation (1-based)."""
    return int(np.ceil(observation / per_batch))


def simulate(level: float, groups: int, args: argparse.Namespace, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    stable_alarms = row_alarms = 0
    delays: list[int] = []
    caught = early = 0
    for _ in range(args.streams):
        shares, right = stream(rng, np.full(args.batches, level), groups, args.rows, args.spread)
        stable_alarms += first_alarm(shares, level, alpha=args.alpha) > 0
        row_alarms += first_alarm(right, level, alpha=args.alpha) > 0
        agreement = np.where(np.arange(1, args.batches + 1) < args.drop_at, level, level - args.drop)
        alarm = first_alarm(stream(rng, agreement, groups, args.rows, args.spread)[0], level, alpha=args.alpha)
        if alarm:
            batch = batch_of(alarm, groups)
            if batch < args.drop_at:
                early += 1
            else:
                caught += 1
                delays.append(batch - args.drop_at)
    quartiles = np.percentile(delays, [25, 50, 75]) if delays else [np.nan] * 3
    return {
        "stable": stable_alarms / args.streams,
        "row_by_row": row_alarms / args.streams,
        "caught": caught / args.streams,
        "early": early / args.streams,
        "q1": quartiles[0],
        "median": quartiles[1],
        "q3": quartiles[2],
    }


def table(level: float, results: dict[int, dict[str, float]], args: argparse.Namespace) -> Table:
    out = Table(
        title=f"level {level}, alpha {args.alpha}, {args.streams} streams of {args.batches} batches, prompts of "
        f"{args.rows} rows (beta a+b = {args.spread}); drop of {args.drop} at batch {args.drop_at}",
        title_justify="left",
    )
    for column in (
        "prompts per batch",
        "stable: ever alarmed",
        "row by row: ever alarmed",
        "drop: alarmed before it",
        "drop: caught",
        "delay in batches: median [quartiles]",
    ):
        out.add_column(column, justify="right")
    for groups, r in results.items():
        out.add_row(
            str(groups),
            f"{r['stable']:.3f}",
            f"{r['row_by_row']:.3f}",
            f"{r['early']:.3f}",
            f"{r['caught']:.3f}",
            f"{r['median']:.0f} [{r['q1']:.0f}, {r['q3']:.0f}]",
        )
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--groups", default="5,10,20", help="prompts per batch, comma-separated")
    parser.add_argument("--rows", type=int, default=5, help="rows per prompt")
    parser.add_argument("--levels", default="0.7,0.85", help="agreement levels, comma-separated")
    parser.add_argument("--spread", type=float, default=8.0)
    parser.add_argument("--drop", type=float, default=0.1)
    parser.add_argument("--drop-at", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[float, dict[int, dict[str, float]]]:
    args = parse_args(argv)
    console = Console(width=160)
    everything = {}
    for level in (float(v) for v in args.levels.split(",")):
        results = {
            groups: simulate(level, groups, args, args.seed + groups)
            for groups in (int(v) for v in args.groups.split(","))
        }
        console.print(table(level, results, args))
        everything[level] = results
    return everything


if __name__ == "__main__":
    main()

"""Benchmark of ``judgecal monitor``'s alarm on simulated streams of batches.

    .venv/bin/python experiments/bench_monitor.py [--streams 500] [--batches 40] [--drop-at 10]
    .venv/bin/python experiments/bench_monitor.py --selective

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

With ``--selective``, the streams are a selective judge's instead: each prompt has its own
chance of being answered (beta around ``--coverage``), an answer says 'true' with chance
``--say-true`` and people agree with each verdict with the prompt's own chance (beta
around that verdict's precision). Its monitor follows four sequences, each at alpha / 4
(``judgecal.stats.sequential.sequence_alpha``, observations from
``selective_observations``): agreement of the rows answered against the lowest target,
each verdict's precision against its target (``--targets``), coverage against
``--coverage``.

* **stable**: every quantity at its level: the share of streams where any of the four
  sequences ever alarms.
* **drop of 'true'**: from ``--drop-at`` on, people agree with 'true' ``--drop`` less
  often (0.7 → 0.5 by default); 'false' and coverage stay: the share caught, the delay,
  and the share caught by the pooled sequence alone at the whole alpha (the monitor
  before it followed each verdict).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

from judgecal.stats.sequential import first_alarm, group_shares, selective_observations, sequence_alpha


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


def selective_stream(
    rng: np.random.Generator, true_precision: np.ndarray, groups: int, args: argparse.Namespace
) -> tuple[dict[str, list[float]], list[int]]:
    """A selective judge's observations per sequence, counted as its monitor counts them,
    and the batch (1-based) of each observation per sequence."""
    precision = {"true": true_precision, "false": np.full(len(true_precision), args.target_false)}
    streams: dict[str, list[float]] = {}
    batch_of_obs: dict[str, list[int]] = {}
    shape = (groups, args.rows)
    for batch in range(len(true_precision)):
        answered = (
            rng.random(shape)
            < rng.beta(args.coverage * args.spread, (1 - args.coverage) * args.spread, groups)[:, None]
        )
        says_true = rng.random(shape) < args.say_true
        chance = {
            v: rng.beta(p[batch] * args.spread, (1 - p[batch]) * args.spread, groups)[:, None]
            for v, p in precision.items()
        }
        right = np.where(says_true, rng.random(shape) < chance["true"], rng.random(shape) < chance["false"])
        said = np.where(answered, np.where(says_true, "true", "false"), None).ravel().tolist()
        human = np.where(right == says_true, "true", "false").ravel().tolist()
        names = np.repeat([f"b{batch}g{g}" for g in range(groups)], args.rows).tolist()
        observed = selective_observations(said, human, names, ["true", "false"])
        kept = [i for i, s in enumerate(said) if s is not None]
        observed["agreement"] = group_shares(right.ravel()[kept], [names[i] for i in kept])
        for name, values in observed.items():
            streams.setdefault(name, []).extend(values)
            batch_of_obs.setdefault(name, []).extend([batch + 1] * len(values))
    return streams, batch_of_obs


def selective_alarm(streams: dict, batches: dict, levels: dict[str, float], alpha: float) -> tuple[int, list[str]]:
    """The first batch at which any sequence's upper bound fell below its level (0: none),
    and which fell then."""
    first: dict[str, int] = {}
    for name, x in streams.items():
        at = first_alarm(x, levels[name], alpha=alpha)
        if at:
            first[name] = batches[name][at - 1]
    if not first:
        return 0, []
    batch = min(first.values())
    return batch, [name for name, b in first.items() if b == batch]


def simulate_selective(groups: int, args: argparse.Namespace, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    levels = {"agreement": min(args.target_true, args.target_false), "precision.true": args.target_true}
    levels |= {"precision.false": args.target_false, "coverage": args.coverage}
    each = sequence_alpha(args.alpha, len(levels))
    stable = caught = early = pooled = named = 0
    delays: list[int] = []
    for _ in range(args.streams):
        streams, batches = selective_stream(rng, np.full(args.batches, args.target_true), groups, args)
        stable += selective_alarm(streams, batches, levels, each)[0] > 0
        drop = np.where(np.arange(1, args.batches + 1) < args.drop_at, args.target_true, args.target_true - args.drop)
        streams, batches = selective_stream(rng, drop, groups, args)
        batch, fell = selective_alarm(streams, batches, levels, each)
        pooled += first_alarm(streams["agreement"], levels["agreement"], alpha=args.alpha) > 0
        if batch and batch < args.drop_at:
            early += 1
        elif batch:
            caught += 1
            named += fell == ["precision.true"]
            delays.append(batch - args.drop_at)
    quartiles = np.percentile(delays, [25, 50, 75]) if delays else [np.nan] * 3
    return {
        "stable": stable / args.streams,
        "early": early / args.streams,
        "caught": caught / args.streams,
        "named": named / max(caught, 1),
        "pooled": pooled / args.streams,
        "q1": quartiles[0],
        "median": quartiles[1],
        "q3": quartiles[2],
    }


def selective_table(results: dict[int, dict[str, float]], args: argparse.Namespace) -> Table:
    out = Table(
        title=f"selective judge: targets 'true' {args.target_true}, 'false' {args.target_false}, coverage "
        f"{args.coverage}, 'true' {args.say_true} of answers; alpha {args.alpha} over 4 sequences; {args.streams} "
        f"streams of {args.batches} batches, prompts of {args.rows} rows (beta a+b = {args.spread}); 'true' "
        f"{args.drop} lower from batch {args.drop_at}",
        title_justify="left",
    )
    for column in (
        "prompts per batch",
        "stable: ever alarmed",
        "drop: alarmed before it",
        "drop: caught",
        "caught naming 'true' alone",
        "delay in batches: median [quartiles]",
        "pooled alone at alpha: caught",
    ):
        out.add_column(column, justify="right")
    for groups, r in results.items():
        out.add_row(
            str(groups),
            f"{r['stable']:.3f}",
            f"{r['early']:.3f}",
            f"{r['caught']:.3f}",
            f"{r['named']:.3f}",
            f"{r['median']:.0f} [{r['q1']:.0f}, {r['q3']:.0f}]",
            f"{r['pooled']:.3f}",
        )
    return out


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
    parser.add_argument("--drop", type=float, default=None, help="0.1, or 0.2 of 'true' with --selective")
    parser.add_argument("--drop-at", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--selective", action="store_true", help="a selective judge's streams instead")
    parser.add_argument("--target-true", type=float, default=0.7)
    parser.add_argument("--target-false", type=float, default=0.9)
    parser.add_argument("--coverage", type=float, default=0.6)
    parser.add_argument("--say-true", type=float, default=0.2, help="share of answers that say 'true'")
    args = parser.parse_args(argv)
    if args.drop is None:
        args.drop = 0.2 if args.selective else 0.1
    return args


def main(argv: Sequence[str] | None = None) -> dict[float, dict[int, dict[str, float]]]:
    args = parse_args(argv)
    console = Console(width=160)
    if args.selective:
        results = {
            groups: simulate_selective(groups, args, args.seed + groups)
            for groups in (int(v) for v in args.groups.split(","))
        }
        console.print(selective_table(results, args))
        return {args.target_true: results}
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

"""Benchmark of choosing the rows to label: does active labelling beat a random sample?

    .venv/bin/python experiments/bench_labelling.py [--part labelling] [--repetitions 5] [--outer-folds 7]

One script for the parts of this question (``--part``; ``all`` runs every part it has):
``labelling`` (below) and ``selective``, the selective judge's band on held-out prompts
(``bench_selective.py``, which also runs alone; its variants with ``--selective-variants``).
``labelling``: on the shared relevance file, outer grouped folds by prompt as in
``bench_search.py``. In each outer training part, for each repetition:

1. about ``--start`` (150) rows are labelled first, drawn at random within each prompt in
   proportion to its rows (the same rows for every strategy of the repetition);
2. then ``--rounds`` (5) rounds, each drawing ``--budget`` (100) rows in expectation from
   the training rows not labelled yet with ``choose_rows_to_label`` (``uncertainty``,
   ``stratified`` or ``uniform``) on the current judge's probabilities; the judge is
   recalibrated on every label so far (``--strategy stacking``, fitted as a calibration
   fits it) and scored by κ on the outer fold, which nothing was fitted on.

The stack is over the recorded verdicts (GPT-5.4 as the raw judge, ``--recorded``, and
Gemma-4-31B's beside it) and one text leaf, the MiniLM embedding verifier
(``--verifiers embedding``): not the default stack, whose TF-IDF leaf took 6-13 s per fit
of 150-400 rows on 2 shared cores (its character n-grams counted again in every inner
fold) against 0.6-1.5 s for the embedding leaf, too slow for 16 fits (the first labels,
then 5 rounds x 3 strategies) x 5 repetitions x 7 folds. ``--verifiers tfidf,embedding`` runs the default
stack; ``--verifiers ''`` the stack over the recorded verdicts alone.

Learning curve: for each repetition, strategy and round, the outer folds' verdicts are
pooled over all rows and scored by κ; the table gives the mean over repetitions with a
95% Student t interval over repetitions (the spread of the labelling draws, not of the
prompts), and each strategy's paired difference from ``uniform`` the same way.

Interval width at equal budget: every round's draw is also a labelling design, and its
labels give the active-inference estimate (``estimate_from_design``, the path of
``judgecal label-next`` then ``judgecal estimate --design``, through files) of the human
relevant rate of the rows the draw was made from, with the judge's probability as the
signal. The table gives the interval's mean width, its width against ``uniform``'s on
the same fold, repetition and round (a t interval over repetitions), and how often it
covered the true rate (a Wilson interval). The strategies share each round's seed, so in
round 1 (one pool, one judge) they differ only by their inclusion probabilities.

With ``--checkpoint DIR`` each finished outer fold is saved, and the same command run again
reads it back and goes on with the next.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from bench_search import DEFAULT_DATA, load_fold, save_fold
from rich.console import Console
from rich.table import Table

from judgecal.calibrate.guard import RowGuard
from judgecal.calibrate.selection import agreement
from judgecal.calibrate.strategies import STRATEGIES, StrategyEnv, fit_judge
from judgecal.data.judged import read_judged_rows
from judgecal.data.rows import Dataset, LabeledRow, load_rows
from judgecal.judges.embeddings import SentenceEncoder
from judgecal.judges.fitted import FittedJudge, MemoJudge, RecordedJudge
from judgecal.judges.verdict import Verdict
from judgecal.judges.verifiers import grouped_folds
from judgecal.stats.active import Strategy, choose_rows_to_label
from judgecal.stats.estimate import estimate_from_design
from judgecal.tasks.registry import Task, resolve_task
from judgecal.workspace import LoadedModels, Workspace, set_process_environment

LABELLING_STRATEGIES = ("uncertainty", "stratified", "uniform")
BASELINE = "uniform"


def derived_seed(seed: int, *parts: int) -> int:
    """A seed for each (fold, repetition) or (fold, repetition, round), from the run's:
    draws do not depend on the order in which folds run or on which were read back."""
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0])


def initial_rows(rows: Sequence[LabeledRow], size: int, seed: int) -> list[int]:
    """``size`` row indices, drawn at random within each group in proportion to its rows
    (largest remainders round the shares), sorted: the first labels, alike for every strategy."""
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.group, []).append(i)
    names = sorted(groups)
    total = min(size, len(rows))
    shares = np.array([len(groups[g]) for g in names], dtype=float) * total / len(rows)
    counts = np.floor(shares).astype(int)
    for i in np.argsort(-(shares - counts), kind="stable")[: total - int(counts.sum())]:
        counts[i] += 1
    rng = np.random.default_rng(seed)
    chosen = [int(i) for g, n in zip(names, counts, strict=True) for i in rng.permutation(groups[g])[:n]]
    return sorted(chosen)


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student t interval of ``values`` (one per repetition)."""
    from scipy.stats import t

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    half = float(t.ppf(0.5 + confidence / 2, len(x) - 1)) * float(x.std(ddof=1)) / np.sqrt(len(x))
    return mean, mean - half, mean + half


class Stacker:
    """The stack as ``--strategy stacking`` fits it, over one outer training part, with a
    guard that refuses any row of the outer fold."""

    def __init__(self, env: StrategyEnv, guard: RowGuard, verifiers: tuple[str, ...]) -> None:
        self.env = env
        self.guard = guard
        self.verifiers = verifiers

    def fit(self, labelled: Sequence[LabeledRow]) -> FittedJudge:
        params = {"verifiers": self.verifiers}
        return fit_judge(STRATEGIES["stacking"], self.env, params, labelled, None, self.guard).judge


def labels_of(verdicts: Sequence[Verdict]) -> list[Any]:
    return [v.label for v in verdicts]


def write_judged(path: Path, rows: Sequence[LabeledRow], verdicts: Sequence[Verdict]) -> None:
    """The rows not labelled yet as ``judgecal judge`` writes them: id, verdict, P(relevant), group."""
    with path.open("w") as out:
        for row, verdict in zip(rows, verdicts, strict=True):
            record = {
                "id": row.id,
                "group": row.group,
                "verdict": verdict.label,
                "probability": verdict.probability_of(True),
            }
            out.write(json.dumps(record) + "\n")


def draw_and_estimate(
    task: Task,
    pool: Sequence[LabeledRow],
    verdicts: Sequence[Verdict],
    strategy: Strategy,
    budget: float,
    seed: int,
    mix: float,
    scratch: Path,
) -> tuple[set[str], dict[str, Any]]:
    """One round: the rows ``strategy`` draws from ``pool`` (as ``label-next`` draws them
    from the judged file), and the active-inference estimate of the pool's human rate from
    their labels (as ``estimate --design`` gives it), beside the true rate."""
    judged_path, labels_path, design_path = scratch / "judged.jsonl", scratch / "labels.jsonl", scratch / "design.json"
    write_judged(judged_path, pool, verdicts)
    judged = read_judged_rows(judged_path, task.spec)
    design = choose_rows_to_label(
        judged.rows, budget, strategy, mix=mix, seed=seed, source=str(judged_path), source_digest=judged.digest
    )
    drawn = {row.id for row in design.drawn}
    with labels_path.open("w") as out:
        for row in pool:
            if row.id in drawn:
                out.write(json.dumps(row.to_record()) + "\n")
    design_path.write_text(design.model_dump_json())
    estimate = estimate_from_design(task.spec, judged_path, labels_path, design, design_path=design_path)
    truth = float(np.mean([row.label is True for row in pool]))
    active = estimate.active
    return drawn, {
        "labels": len(drawn),
        "truth": truth,
        "estimate": active.estimate,
        "width": active.width,
        "covered": active.low <= truth <= active.high,
        "labels_alone_width": estimate.human_only.width,
        "weight": estimate.weight,
    }


def grow(
    stacker: Stacker,
    part: Sequence[LabeledRow],
    test: Sequence[LabeledRow],
    start: list[int],
    first: FittedJudge,
    strategy: Strategy,
    seeds: Sequence[int],
    args: argparse.Namespace,
    scratch: Path,
) -> dict[str, Any]:
    """One strategy's rounds from the shared start, a round per seed: the labels it holds
    after each, the judge's verdicts on the outer fold, and each round's estimate."""
    labelled = {part[i].id for i in start}
    judge = first
    sizes = [len(labelled)]
    verdicts = [labels_of(first.predict(test))]
    estimates = []
    for seed in seeds:
        pool = [row for row in part if row.id not in labelled]
        drawn, estimate = draw_and_estimate(
            stacker.env.task, pool, judge.predict(pool), strategy, args.budget, seed, args.mix, scratch
        )
        labelled |= drawn
        judge = stacker.fit([row for row in part if row.id in labelled])
        sizes.append(len(labelled))
        verdicts.append(labels_of(judge.predict(test)))
        estimates.append(estimate)
    return {"labels": sizes, "verdicts": verdicts, "estimates": estimates}


def run_fold(
    k: int, held: np.ndarray, rows: Sequence[LabeledRow], env: StrategyEnv, args: argparse.Namespace, scratch: Path
) -> dict[str, Any]:
    """Every repetition of every strategy on one outer fold, and the stack fitted on all
    the training part's labels for reference."""
    held_set = set(held.tolist())
    test = [rows[i] for i in held]
    part = [row for i, row in enumerate(rows) if i not in held_set]
    stacker = Stacker(env, RowGuard.for_rows(test, part), tuple(args.verifiers))
    started = time.perf_counter()
    repetitions = []
    for r in range(args.repetitions):
        start = initial_rows(part, args.start, derived_seed(args.seed, k, r))
        first = stacker.fit([part[i] for i in start])
        # The same seeds for every strategy: round 1 draws from one pool with one judge, so
        # the strategies differ there only by their π.
        seeds = [derived_seed(args.seed, k, r, round_) for round_ in range(1, args.rounds + 1)]
        repetitions.append(
            {
                strategy: grow(stacker, part, test, start, first, strategy, seeds, args, scratch)
                for strategy in args.strategies
            }
        )
    return {
        "ids": [row.id for row in test],
        "all_labels": {"labels": len(part), "verdicts": labels_of(stacker.fit(part).predict(test))},
        "repetitions": repetitions,
        "seconds": time.perf_counter() - started,
    }


def labelling_settings(dataset: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    keys = ("outer_folds", "seed", "recorded", "repetitions", "start", "rounds", "budget", "mix")
    return {
        "variant": "labelling",
        "data": dataset.fingerprint,
        **{key: getattr(args, key) for key in keys},
        "strategies": list(args.strategies),
        "verifiers": list(args.verifiers),
    }


def run_labelling(dataset: Dataset, args: argparse.Namespace, console: Console, workspace: Workspace) -> dict[str, Any]:
    task = resolve_task("relevance")
    rows = list(dataset.rows)
    references = tuple(sorted({name for row in rows for name in row.reference_judges}))
    raw = MemoJudge(RecordedJudge(task, args.recorded, "relevance"))
    env = StrategyEnv(
        task=task, raw=raw, references=references, log=lambda m: None, encoder=SentenceEncoder.for_workspace(workspace)
    )
    settings = labelling_settings(dataset, args)
    folds = grouped_folds(rows, args.outer_folds, args.seed)
    finished = []
    with tempfile.TemporaryDirectory() as scratch:
        for k, held in enumerate(folds):
            fold = load_fold(args.checkpoint, settings, k)
            if fold is None:
                fold = run_fold(k, held, rows, env, args, Path(scratch))
                save_fold(args.checkpoint, settings, k, fold)
                said = f"{len(held)} rows, {fold['seconds']:.0f} s"
            else:
                said = f"read from {args.checkpoint}"
            console.print(f"labelling fold {k + 1}/{len(folds)}: {said}", highlight=False)
            finished.append(fold)
    summary = summarise(task, rows, finished, args)
    console.print(curve_table(summary))
    console.print(width_table(summary))
    if args.plot:
        plot_curves(summary, args.plot)
        console.print(f"learning curves: {args.plot}", highlight=False)
    return summary


def pooled_kappas(task: Task, human: dict[str, Any], finished: list[dict[str, Any]], strategy: str) -> np.ndarray:
    """κ of each repetition at each label count, the outer folds' verdicts pooled:
    an array (repetitions, rounds + 1)."""
    ids = [i for fold in finished for i in fold["ids"]]
    truth = [human[i] for i in ids]
    repetitions = len(finished[0]["repetitions"])
    steps = len(finished[0]["repetitions"][0][strategy]["verdicts"])
    out = np.zeros((repetitions, steps))
    for r in range(repetitions):
        for j in range(steps):
            said = [v for fold in finished for v in fold["repetitions"][r][strategy]["verdicts"][j]]
            out[r, j] = agreement(task, truth, said)
    return out


def summarise(
    task: Task, rows: Sequence[LabeledRow], finished: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    """Learning curves and estimate widths from the finished folds (plain JSON)."""
    human = {row.id: row.label for row in rows}
    ids = [i for fold in finished for i in fold["ids"]]
    kappas = {s: pooled_kappas(task, human, finished, s) for s in args.strategies}
    curves = {}
    for s in args.strategies:
        labels = np.mean([[rep[s]["labels"] for rep in fold["repetitions"]] for fold in finished], axis=(0, 1))
        points = []
        for j in range(kappas[s].shape[1]):
            mean, low, high = t_interval(kappas[s][:, j])
            point = {
                "labels": float(labels[j]),
                "kappa": mean,
                "low": low,
                "high": high,
                "per_repetition": [float(x) for x in kappas[s][:, j]],
            }
            if BASELINE in kappas and s != BASELINE:
                point["versus_uniform"] = t_interval(kappas[s][:, j] - kappas[BASELINE][:, j])
            points.append(point)
        curves[s] = points
    all_labels = [v for fold in finished for v in fold["all_labels"]["verdicts"]]
    by_id = {row.id: row for row in rows}
    recorded = [by_id[i].reference_judges.get(args.recorded) for i in ids]
    return {
        "settings": {
            key: value for key, value in vars(args).items() if key not in ("checkpoint", "json", "plot", "data")
        },
        "rows": len(ids),
        "folds": len(finished),
        "seconds": sum(fold["seconds"] for fold in finished),
        "human_rate": float(np.mean([human[i] is True for i in ids])),
        "curves": curves,
        "estimates": estimate_summary(finished, args.strategies),
        "references": {
            f"{args.recorded}'s recorded verdicts": agreement(task, [human[i] for i in ids], recorded),
            "stack on every label of the training part": agreement(task, [human[i] for i in ids], all_labels),
        },
    }


def estimate_array(finished: list[dict[str, Any]], strategy: str, key: str) -> np.ndarray:
    """One number of every round's estimate: an array (folds, repetitions, rounds)."""
    return np.array(
        [[[float(e[key]) for e in rep[strategy]["estimates"]] for rep in fold["repetitions"]] for fold in finished]
    )


def wilson(k: int, n: int) -> tuple[float, float]:
    from scipy.stats import binomtest

    interval = binomtest(k, n).proportion_ci(0.95, method="wilson")
    return float(interval.low), float(interval.high)


def estimate_summary(finished: list[dict[str, Any]], strategies: Sequence[str]) -> dict[str, Any]:
    """Per strategy: the interval's mean width (over all rounds and per round), its ratio to
    uniform's on the same fold, repetition and round (mean per repetition, t interval over
    repetitions), and how often it covered the pool's true rate (Wilson interval, the
    designs taken as independent)."""
    base = estimate_array(finished, BASELINE, "width") if BASELINE in strategies else None
    out = {}
    for s in strategies:
        width = estimate_array(finished, s, "width")
        covered = estimate_array(finished, s, "covered")
        k, n = int(covered.sum()), covered.size
        out[s] = {
            "designs": n,
            "labels": float(estimate_array(finished, s, "labels").mean()),
            "width": float(width.mean()),
            "width_by_round": [float(w) for w in width.mean(axis=(0, 1))],
            "labels_alone_width": float(estimate_array(finished, s, "labels_alone_width").mean()),
            "weight": float(estimate_array(finished, s, "weight").mean()),
            "covered": k,
            "coverage": k / n,
            "coverage_interval": wilson(k, n),
            "coverage_by_round": [float(c) for c in covered.mean(axis=(0, 1))],
        }
        if base is not None:
            ratio = width / base
            out[s]["ratio_to_uniform"] = t_interval(ratio.mean(axis=(0, 2)))
            out[s]["ratio_round_1"] = t_interval(ratio[:, :, 0].mean(axis=0))
    return out


def curve_table(summary: dict[str, Any]) -> Table:
    curves = summary["curves"]
    strategies = list(curves)
    out = Table(
        title=f"labelling: κ on the outer folds against labels held ({summary['rows']} rows pooled over "
        f"{summary['folds']} folds; mean over {summary['settings']['repetitions']} repetitions [95% t interval over "
        f"repetitions]); {summary['seconds'] / 60:.1f} min",
        title_justify="left",
    )
    out.add_column("round", justify="right")
    out.add_column("labels (range over strategies)", justify="right")
    for s in strategies:
        out.add_column(f"{s}: κ [95%]", justify="right")
    compared = [s for s in strategies if s != BASELINE and BASELINE in curves]
    for s in compared:
        out.add_column(f"{s} − {BASELINE}", justify="right")
    for j in range(len(curves[strategies[0]])):
        held = [curves[s][j]["labels"] for s in strategies]
        cells = [str(j), f"{np.mean(held):.0f}" + (f" ({min(held):.0f}–{max(held):.0f})" if j else "")]
        for s in strategies:
            p = curves[s][j]
            cells.append(f"{p['kappa']:.3f} [{p['low']:.3f}, {p['high']:.3f}]")
        for s in compared:
            mean, low, high = curves[s][j]["versus_uniform"]
            cells.append(f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]")
        out.add_row(*cells)
    out.caption = "; ".join(f"{name}: κ {kappa:.3f}" for name, kappa in summary["references"].items())
    return out


def width_table(summary: dict[str, Any]) -> Table:
    estimates = summary["estimates"]
    out = Table(
        title="labelling: 95% interval of the active-inference estimate of the pool's human rate, one design per "
        f"round (budget {summary['settings']['budget']:g} rows); mean over folds, repetitions and rounds",
        title_justify="left",
    )
    columns = (
        "strategy",
        "labels drawn",
        "width",
        "÷ uniform's [95%]",
        "round 1 ÷ uniform's [95%]",
        "width by round",
        "labels alone",
        "mean λ",
        "covered [95%]",
    )
    for column in columns:
        out.add_column(column, justify="left" if column == "strategy" else "right")

    def ratio(value: Any) -> str:
        return "–" if value is None else f"{value[0]:.3f} [{value[1]:.3f}, {value[2]:.3f}]"

    for s, e in estimates.items():
        low, high = e["coverage_interval"]
        out.add_row(
            s,
            f"{e['labels']:.1f}",
            f"{e['width']:.4f}",
            ratio(e.get("ratio_to_uniform")),
            ratio(e.get("ratio_round_1")),
            " ".join(f"{w:.4f}" for w in e["width_by_round"]),
            f"{e['labels_alone_width']:.4f}",
            f"{e['weight']:.2f}",
            f"{e['covered']}/{e['designs']} = {e['coverage']:.3f} [{low:.3f}, {high:.3f}]",
        )
    out.caption = "intervals: width ratios t over repetitions; coverage Wilson, the designs taken as independent"
    return out


def plot_curves(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for s, points in summary["curves"].items():
        x = [p["labels"] for p in points]
        left.plot(x, [p["kappa"] for p in points], marker="o", label=s)
        left.fill_between(x, [p["low"] for p in points], [p["high"] for p in points], alpha=0.2)
        widths = summary["estimates"][s]["width_by_round"]
        right.plot(range(1, len(widths) + 1), widths, marker="o", label=s)
        right.set_xticks(range(1, len(widths) + 1))
    for (name, kappa), style in zip(summary["references"].items(), (":", "--"), strict=False):
        left.axhline(kappa, color="grey", linestyle=style, label=f"{name} ({kappa:.3f})")
    left.set(
        xlabel="labelled rows of the training part", ylabel="κ on the outer folds, pooled", title="learning curves"
    )
    right.set(
        xlabel="round (100 labels each)", ylabel="mean width of the 95% interval", title="estimate of the pool's rate"
    )
    widest = max(w for e in summary["estimates"].values() for w in e["width_by_round"])
    right.set_ylim(0, 1.15 * widest)  # from 0: the widths' ratio is what the eye should read
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_selective_part(
    dataset: Dataset, args: argparse.Namespace, console: Console, workspace: Workspace
) -> dict[str, Any]:
    """The selective half, ``bench_selective.py`` with its own defaults (the recorded variant
    unless ``--selective-variants`` says otherwise) and this run's data, folds, seed and
    checkpoint folder. It builds its own workspaces: the stack's band is chosen as a
    calibration chooses it."""
    import bench_selective

    parser = argparse.ArgumentParser()
    bench_selective.add_arguments(parser)
    options = parser.parse_args(["--variants", args.selective_variants])
    for shared in ("data", "outer_folds", "recorded", "seed", "checkpoint"):
        setattr(options, shared, getattr(args, shared))
    return bench_selective.run_selective(options, console)


PARTS: dict[str, Callable[[Dataset, argparse.Namespace, Console, Workspace], dict[str, Any]]] = {
    "labelling": run_labelling,
    "selective": run_selective_part,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--outer-folds", type=int, default=7)
    parser.add_argument("--recorded", default="gpt-5.4")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--start", type=int, default=150, help="rows labelled before the first round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=100, help="rows drawn per round, in expectation")
    parser.add_argument("--mix", type=float, default=0.2, help="the uncertainty strategy's uniform share")
    parser.add_argument(
        "--strategies", type=lambda s: s.split(","), default=list(LABELLING_STRATEGIES), help="comma-separated"
    )
    parser.add_argument(
        "--verifiers",
        type=lambda s: [v for v in s.split(",") if v],
        default=["embedding"],
        help="the stack's text leaves, comma-separated (default: embedding; the default stack: tfidf,embedding)",
    )
    parser.add_argument(
        "--selective-variants", default="recorded", help="the selective part's variants: recorded, offline (hours)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument("--plot", type=Path, help="save the learning curves to this PNG")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="folder where each finished outer fold is saved; a run with the same settings reads them "
        "back and goes on with the next fold",
    )
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    console = Console()
    if not args.data.exists():
        console.print(f"{args.data} is absent; this benchmark needs the shared relevance data")
        return 2
    set_process_environment()
    dataset = load_rows(args.data, resolve_task("relevance").spec)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        workspace = Workspace(Path(scratch), models=LoadedModels())
        for part in PARTS if args.part == "all" else [args.part]:
            results[part] = PARTS[part](dataset, args, console, workspace)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

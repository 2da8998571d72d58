"""``judgecal calibrate --dry-run``: what a calibration or a search will ask of its judge
model, printed as a table before anything is judged or tracked; and a search's settings
from the experiment file and the command's flags (its budget among them)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rich.table import Table

from judgecal.cli.output import console

if TYPE_CHECKING:
    from judgecal.calibrate.budget import StrategyBound
    from judgecal.pipeline.config import ExperimentConfig, SearchConfig
    from judgecal.pipeline.dry_run import RunPlan
    from judgecal.workspace import Workspace


def dry_run(config: ExperimentConfig, args: argparse.Namespace, workspace: Workspace, *, searching: bool) -> None:
    """The plan of one experiment's calibration or search, printed; nothing else runs."""
    from judgecal.pipeline.dry_run import plan

    search = search_settings(config, args) if searching else None
    log = lambda message: console.print(message, highlight=False)  # noqa: E731
    run_plan = plan(config, search, workspace, log=log)
    print_plan(config.judge.name, run_plan, searching)
    if search is not None and (search.max_lm_calls is not None or search.max_cost_usd is not None):
        console.print(budget_note(run_plan, search), highlight=False)


def search_settings(config: ExperimentConfig, args: argparse.Namespace) -> SearchConfig:
    """The experiment's [search] with the command's flags over it."""
    from judgecal.pipeline.config import SearchConfig

    updates: dict[str, object] = {}
    if args.strategies:
        updates["strategies"] = [s.strip() for s in args.strategies.split(",") if s.strip()]
    for key, flag in (("max_lm_calls", "max_lm_calls"), ("max_cost_usd", "max_cost")):
        if getattr(args, flag) is not None:
            updates[key] = getattr(args, flag)
    for key in ("trials", "storage", "study_name", "worker"):
        if getattr(args, key) is not None:
            updates[key] = getattr(args, key)
    return SearchConfig.model_validate({**(config.search or SearchConfig()).model_dump(), **updates})


def print_plan(name: str, plan: RunPlan, searched: bool) -> None:
    rows = plan.rows
    table = Table(
        title=f"{name}: LM calls at most (cached answers included), before anything is judged; rows: train "
        f"{rows.train}, dev {rows.dev}, test {rows.test}, gate {rows.gate}",
        title_justify="left",
    )
    for column in ("part", "fit", "dev", "test", "gate", "calls", "tokens in + out", "cost $", "time"):
        table.add_column(column, justify="left" if column == "part" else "right")
    raw = plan.bound.raw
    raw_calls = sum(raw.values())
    table.add_row(
        "raw judge, each row once",
        str(raw.get("train", 0)),
        str(raw.get("dev", 0)),
        str(raw.get("test", 0)),
        "–",
        *_cells(plan, raw_calls, None),
    )
    for bound in plan.bound.trials:
        label = f"{'trial: ' if searched else ''}{bound.strategy}"
        table.add_row(label, f"{bound.fit:,}", f"{bound.dev:,}", "–", "–", *_cells(plan, bound.trial, bound))
    winner = plan.bound.winner
    if winner is not None:
        label = f"winner: {winner.strategy} at most" if searched else "test and gate"
        refit = f"{winner.refit:,}" if winner.refit else "–"
        table.add_row(label, refit, "–", f"{winner.test:,}", f"{winner.gate:,}", *_cells(plan, winner.winner, winner))
    total_cost = plan.total_cost
    table.add_row(
        "[bold]at most[/]",
        "",
        "",
        "",
        "",
        f"[bold]{plan.bound.total:,}[/]",
        "",
        "unknown" if total_cost is None else f"[bold]{total_cost:.4f}[/]",
        _duration(plan.seconds_of(plan.bound.total)),
    )
    console.print(table)
    console.print(_notes(plan), highlight=False)


def budget_note(plan: RunPlan, search: SearchConfig) -> str:
    """What the search's budget does to these bounds: what is set aside before any trial
    (the raw judge, the costliest winner's test and gate) and which trials can never fit."""
    reserved = sum(plan.bound.raw.values()) + (plan.bound.winner.winner if plan.bound.winner else 0)
    lines = []
    if search.max_lm_calls is not None:
        left = search.max_lm_calls - reserved
        never = [f"{b.strategy} ({b.trial:,})" for b in plan.bound.trials if b.trial > left]
        lines.append(
            f"budget: {search.max_lm_calls:,} LM calls, {reserved:,} set aside for the raw judge and the winner's "
            f"test and gate, {max(left, 0):,} left for trials"
            + (f"; these trials can never fit: {', '.join(never)}" if never else "")
        )
    if search.max_cost_usd is not None:
        if plan.tokens is not None and plan.price is None:
            lines.append(
                f"budget: ${search.max_cost_usd:g}, but {plan.model} has no price: the search stops before any call"
            )
        else:
            total = plan.total_cost or 0.0
            lines.append(f"budget: ${search.max_cost_usd:g}; the whole run costs at most ${total:.4f}")
    return "\n".join(lines)


def _cells(plan: RunPlan, calls: int, bound: StrategyBound | None) -> list[str]:
    prompt, completion = plan.tokens_of(calls, bound)
    cost = plan.cost_of(calls, bound)
    tokens = "–" if plan.tokens is None else f"{prompt:,.0f} + {completion:,.0f}"
    return [
        f"{calls:,}",
        tokens,
        "unknown" if cost is None else f"{cost:.4f}",
        _duration(plan.seconds_of(calls)),
    ]


def _notes(plan: RunPlan) -> str:
    lines = []
    if plan.tokens is not None:
        tokenizer = "llama.cpp's tokenizer" if plan.probe is None or plan.probe.in_process else "LiteLLM's counter"
        lines.append(
            f"tokens: {plan.tokens.prompt:.0f} per raw request, {plan.tokens.demo:.0f} more per demo, "
            f"{plan.tokens.answer:.0f} per answer ({tokenizer}, over the rendered prompts of up to 200 rows); "
            "instruction proposals are counted at a judge call's size"
        )
    if plan.tokens is None:
        lines.append(f"the judge is {plan.model}: no model is called")
    elif plan.price is None:
        lines.append(
            f"cost: LiteLLM's cost table has no price for {plan.model}; set [lm] price_per_million = "
            "{input = ..., output = ...}"
        )
    else:
        lines.append(f"cost: ${plan.price[0] * 1e6:.2f} / ${plan.price[1] * 1e6:.2f} per million tokens in / out")
    if plan.probe is not None and plan.probe.failed:
        lines.append(f"time: unknown, the probe of {plan.probe.model} failed ({plan.probe.failed[:200]})")
    elif plan.probe is not None:
        kind = (
            "measured on the embedded model"
            if plan.probe.in_process
            else f"a probe: {plan.probe.calls} real calls to {plan.probe.model}, billed, {plan.threads} at once"
        )
        lines.append(f"time: {plan.probe.seconds_per_call:.2f} s per call ({kind})")
    lines.append("nothing was judged or tracked; pruning and DSPy's cache make a run ask less")
    return "\n".join(lines)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"

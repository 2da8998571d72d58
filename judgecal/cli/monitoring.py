"""``judgecal monitor`` (re-check a deployed judge on one batch of freshly labelled rows)
and the shift warning ``judgecal judge`` prints after judging a file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from judgecal.cli.opening import open_judge_from_flags
from judgecal.cli.output import console, errors
from judgecal.workspace import Workspace

if TYPE_CHECKING:
    from judgecal.export.flavor import LoadedJudge
    from judgecal.pipeline.monitor import MonitorOutcome
    from judgecal.pipeline.monitor_state import BatchCheck
    from judgecal.stats.shift import ShiftCheck

ALARM_EXIT = 3
"""The exit code of ``judgecal monitor`` while its alarm is raised, for a scheduler to act on."""


def _warn(text: str) -> None:
    errors.print(f"[bold yellow]warning:[/] {text}", highlight=False)


def print_shift(check: ShiftCheck | None, loaded: LoadedJudge) -> None:
    """The shift check in words: a warning when the rows differ, a line when they do not,
    and once, when the judge carries no reference sample, that nothing was checked."""
    from judgecal.export.reference import NO_REFERENCE

    if check is None:
        _warn(NO_REFERENCE)
        return
    text = check.statement(selective=loaded.judge.kind == "selective")
    if check.differ:
        _warn(text)
    else:
        console.print(f"shift: {text}", highlight=False)


def warn_shift(loaded: LoadedJudge, source: Path, output: Path) -> None:
    """After ``judgecal judge``: the rows of ``source`` that have an answer in ``output``,
    with the judge's probabilities there, compared with the judge's reference sample."""
    import json

    from judgecal.data.rows import load_rows
    from judgecal.export.reference import check_rows
    from judgecal.judges.verdict import Verdict
    from judgecal.stats.shift import TooFewPrompts

    if loaded.bundle.reference is None:
        print_shift(None, loaded)
        return
    answers: dict[str, dict] = {}
    for line in output.read_text(encoding="utf-8").splitlines() if output.exists() else []:
        if line.strip():
            record = json.loads(line)
            answers[str(record["id"])] = record.get("probabilities") or {}
    rows = [row for row in load_rows(source, loaded.judge.task.spec, labelled=False).rows if row.id in answers]
    if len(rows) < 2:
        return
    verdicts = [Verdict(label=None, probabilities=answers[row.id] or None) for row in rows]
    try:
        print_shift(check_rows(loaded.bundle.reference, rows, verdicts, loaded.judge.task.spec), loaded)
    except TooFewPrompts as why:
        console.print(f"shift: not checked: {why}", highlight=False)


def monitor_command(args: argparse.Namespace) -> int:
    from judgecal.pipeline.monitor import check_batch

    workspace = Workspace.find(tracking_uri=args.tracking_uri)
    workspace.open_tracking()  # the monitor's own run, whatever the judge's source
    loaded = open_judge_from_flags(args, workspace)
    outcome = check_batch(
        loaded, args.batch, args.state, threshold=args.threshold, alpha=args.alpha, workspace=workspace
    )
    _print_batch(outcome.batch, loaded)
    _print_sequence(outcome)
    if outcome.batch.shift is not None:
        print_shift(outcome.batch.shift, loaded)
    for note in outcome.notes:
        _warn(note)
    state = outcome.state
    console.print(f"state: {args.state}; MLflow run {state.run_id} in judgecal/{state.judge_name}", highlight=False)
    if state.registered is not None:
        console.print(f"last check tagged on {state.registered[0]} v{state.registered[1]}", highlight=False)
    return ALARM_EXIT if outcome.alarm else 0


def _print_batch(batch: BatchCheck, loaded: LoadedJudge) -> None:
    kind = "weighted κ" if loaded.judge.task.spec.is_ordinal else "κ"
    kappa = (
        f"{kind} – (its only verdict is '{batch.only_verdict}': {kind} is 0 by construction)"
        if batch.only_verdict
        else f"{kind} {batch.kappa}"
    )
    console.print(
        f"batch {batch.index} ({batch.file}): {batch.rows} rows in {batch.groups} groups; agreement "
        f"{batch.agreement}, {kappa} (95% intervals over groups)",
        highlight=False,
    )
    if batch.coverage is not None:
        precision = ", ".join(
            f"'{verdict}' {value:.3f}" for verdict, value in batch.precision.items() if value is not None
        )
        console.print(
            f"selective: answered {batch.answered} of {batch.rows} rows (coverage {batch.coverage:.3f}); "
            f"precision {precision or 'n/a (no verdict given)'}",
            highlight=False,
        )


def _print_sequence(outcome: MonitorOutcome) -> None:
    from judgecal.pipeline.monitor import confidence_percent

    state, batch = outcome.state, outcome.batch
    groups = len(state.observations)
    confidence = confidence_percent(state.sequence_alpha)
    console.print(
        f"all {len(state.batches)} batches ({groups} groups): agreement {batch.mean:.3f}, anytime-valid "
        f"{confidence} bounds [{batch.lower:.3f}, {batch.upper:.3f}]; level {state.level:.3f} "
        f"({state.level_source}){'  [bold red]BELOW[/]' if state.followed and batch.upper < state.level else ''}",
        highlight=False,
    )
    _print_followed(outcome)
    if outcome.alarm and state.followed:
        errors.print(
            f"[bold red]ALARM[/] since batch {state.alarm_batch}: the upper bound is below its level for "
            f"{' and for '.join(state.fallen())} (exit code {ALARM_EXIT})",
            highlight=False,
        )
    elif outcome.alarm:
        errors.print(
            f"[bold red]ALARM[/] since batch {state.alarm_batch}: the upper bound on the judge's agreement is below "
            f"{state.level:.3f}; it agrees with people less than it did when it was registered (exit code "
            f"{ALARM_EXIT})",
            highlight=False,
        )
    else:
        console.print("no alarm: the upper bound is not below the level", highlight=False)


def _print_followed(outcome: MonitorOutcome) -> None:
    """A selective judge's: each followed sequence on one line, marked where it fell."""
    state, batch = outcome.state, outcome.batch
    if not state.followed:
        return
    for quantity in state.followed:
        step = batch.sequences[quantity.name]
        count = sum(len(b.sequences[quantity.name].observations) for b in state.batches if quantity.name in b.sequences)
        mean = "n/a" if step.mean is None else f"{step.mean:.3f}"
        below = "  [bold red]BELOW[/]" if step.upper < quantity.level else ""
        console.print(
            f"  {quantity.words} ({count} groups): {mean}, bounds [{step.lower:.3f}, {step.upper:.3f}]; level "
            f"{quantity.level:.3f} ({quantity.level_source}){below}",
            highlight=False,
        )
    console.print(
        f"  each of these {1 + len(state.followed)} sequences at alpha {state.alpha:g} / {1 + len(state.followed)} "
        f"(Bonferroni): the chance of any false alarm stays at most {state.alpha:g}",
        highlight=False,
    )

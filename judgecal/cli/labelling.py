"""``judgecal label-next`` (the rows to label next), ``judgecal estimate --design`` (the
rate from the labels of the rows it drew) and ``judgecal data merge`` (the new labels
joined to the old for the next calibration)."""

from __future__ import annotations

import argparse

from rich.table import Table

from judgecal.cli.output import console, errors
from judgecal.data.rows import RowShape


def estimate_from_design_command(args: argparse.Namespace, spec: RowShape) -> int:
    from judgecal.stats.active import read_design
    from judgecal.stats.estimate import estimate_from_design

    design = read_design(args.design)
    result = estimate_from_design(
        spec,
        args.verdicts,
        args.labels,
        design,
        design_path=args.design,
        target=args.target,
        use_probability=not args.verdict_only,
        confidence=args.confidence,
    )
    table = Table(
        title=f"rate of {result.target} among {result.active.rows} judged rows ({result.confidence_level:.0%} "
        f"intervals, rows drawn by {result.strategy} sampling)",
        title_justify="left",
    )
    for column in ("method", "estimate", "interval", "labels"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for name, interval, labels in (
        ("active inference (labels + judge)", result.active, result.labels),
        ("judge only (biased if the judge is)", result.judge_only, 0),
        ("labels only (inverse-probability weighted)", result.human_only, result.labels),
    ):
        table.add_row(name, f"{interval.estimate:.3f}", f"[{interval.low:.3f}, {interval.high:.3f}]", str(labels))
    console.print(table)
    if result.left_out:
        shown = ", ".join(result.left_out[:10]) + (", ..." if len(result.left_out) > 10 else "")
        errors.print(
            f"note: {len(result.left_out)} labelled rows the design did not draw were left out ({shown}): their "
            "chance of being labelled is unknown, so they would bias the estimate",
            highlight=False,
            markup=False,
        )
    console.print(result.statement(), highlight=False)
    return 0


def label_next_command(args: argparse.Namespace) -> int:
    from judgecal.pipeline.labelling import label_next
    from judgecal.tasks.registry import resolve_task

    result = label_next(
        resolve_task(args.task).spec,
        args.verdicts,
        args.output,
        budget=args.budget,
        strategy=args.strategy,
        mix=args.mix,
        seed=args.seed,
        by=args.by,
        labelled=args.labelled,
        rows=args.rows,
    )
    design = result.design
    left = f", {result.left_out} labelled already left out" if result.left_out else ""
    console.print(
        f"{len(design.drawn)} of {result.judged} judged rows drawn by {design.strategy} sampling (budget "
        f"{design.budget:g}, {design.expected_labels:.1f} expected{left}); the largest group takes "
        f"{result.largest_group_share:.0%} of the expected labels",
        highlight=False,
    )
    console.print(
        f"rows to label: {result.output}; the design (keep it for judgecal estimate --design): {result.design_file}",
        highlight=False,
    )
    return 0


def merge_labels_command(args: argparse.Namespace) -> int:
    from judgecal.pipeline.labelling import merge_labelled
    from judgecal.tasks.registry import resolve_task

    counts = merge_labelled(resolve_task(args.task).spec, args.files, args.output)
    parts = ", ".join(f"{count} from {path}" for path, count in counts.items())
    console.print(f"{sum(counts.values())} labelled rows written to {args.output} ({parts})", highlight=False)
    return 0

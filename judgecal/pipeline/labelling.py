"""Which rows to label next, from a file of judged rows to a file for annotators
(``judgecal label-next``): read the judged rows, leave out those labelled already, draw
with known inclusion probabilities (:mod:`judgecal.stats.active`), and write the drawn
rows beside the design that an unbiased estimate needs (``judgecal estimate --design``);
then join the rows annotators labelled to the old labels for the next calibration.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field

from judgecal.data.judged import JudgedFile, read_judged_rows
from judgecal.data.rows import DataError, RowShape, load_rows
from judgecal.stats.active import DrawnBy, LabellingDesign, Strategy, choose_rows_to_label


class LabelNextResult(BaseModel):
    """What one ``label-next`` wrote and why it is the size it is."""

    output: Path
    design_file: Path
    design: LabellingDesign
    judged: int = Field(description="Rows in the file of judged rows.")
    left_out: int = Field(description="Rows of that file labelled already, left out of the draw.")
    largest_group_share: float = Field(description="The largest share of the expected labels one group takes.")


def design_file_of(output: Path) -> Path:
    """``next.jsonl`` → ``next.design.json``: the design is written beside the rows."""
    return output.with_name(f"{output.stem if output.suffix else output.name}.design.json")


def label_next(
    task: RowShape,
    verdicts: Path,
    output: Path,
    *,
    budget: float,
    strategy: Strategy = "uncertainty",
    mix: float = 0.2,
    seed: int = 0,
    by: DrawnBy = "row",
    labelled: Path | None = None,
    rows: Path | None = None,
) -> LabelNextResult:
    """Draw rows of ``verdicts`` to label and write them to ``output`` (JSONL, one row as
    ``calibrate`` reads it with ``"label": null`` to fill in and its ``inclusion_probability``)
    and the design to :func:`design_file_of`. Neither file is ever overwritten."""
    design_path = design_file_of(output)
    for path in (output, design_path):
        if path.exists():
            raise FileExistsError(f"{path} exists; choose another --output (nothing was overwritten)")
    judged = read_judged_rows(verdicts, task, rows_file=rows)
    _require_inputs(judged)
    done = {row.id for row in load_rows(labelled, task).rows} if labelled is not None else set()
    design = choose_rows_to_label(
        judged.rows,
        budget,
        strategy,
        mix=mix,
        seed=seed,
        by=by,
        labelled=done,
        source=str(verdicts),
        source_digest=judged.digest,
    )
    _write(judged, design, output, design_path)
    return LabelNextResult(
        output=output,
        design_file=design_path,
        design=design,
        judged=len(judged),
        left_out=len(design.labelled_before),
        largest_group_share=max(design.expected_by_group.values()) / design.expected_labels,
    )


def _require_inputs(judged: JudgedFile) -> None:
    """Annotators need the rows themselves: a bare verdicts file needs the rows it judged."""
    bare = next((row for row in judged.rows if row.row is None), None)
    if bare is not None:
        raise DataError(
            f"no input row for {bare.id!r}: pass --rows FILE (the rows judgecal judge read) to give annotators the "
            "rows of a verdicts file",
            path=judged.path,
            line=bare.line,
            field="id",
        )


def _write(judged: JudgedFile, design: LabellingDesign, output: Path, design_path: Path) -> None:
    """The rows for annotators, then the design, each written whole under its final name."""
    by_id = {row.id: row for row in judged.rows}
    lines = []
    for drawn in design.drawn:
        source = by_id[drawn.id].row
        assert source is not None  # _require_inputs
        record = {**source.to_record(), "group": drawn.group, "label": None}
        record["inclusion_probability"] = drawn.inclusion_probability
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    output.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((output, "".join(lines)), (design_path, design.model_dump_json(indent=1) + "\n")):
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text, encoding="utf-8")
        partial.rename(path)


def merge_labelled(task: RowShape, sources: list[Path], output: Path) -> dict[Path, int]:
    """Join labelled files into one JSONL file ``calibrate`` reads, every row validated
    and labelled. An id may appear once: a second one stops the merge naming both places,
    since two labels of one row would count it twice (and split it across train and test
    if the groups differ). Returns the rows taken from each file."""
    if output.exists():
        raise FileExistsError(f"{output} exists; choose another --output (nothing was overwritten)")
    first_seen: dict[str, str] = {}
    lines: list[str] = []
    counts: dict[Path, int] = {}
    for source in sources:
        dataset = load_rows(source, task)
        for row in dataset.rows:
            if row.id in first_seen:
                raise DataError(
                    f"id {row.id!r} is labelled already in {first_seen[row.id]}; ids must not repeat: keep one of "
                    "the two rows",
                    path=source,
                    line=row.line,
                    field="id",
                )
            first_seen[row.id] = f"{source}:{row.line}"
            lines.append(json.dumps(row.to_record(), ensure_ascii=False) + "\n")
        counts[source] = len(dataset.rows)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    partial.write_text("".join(lines), encoding="utf-8")
    partial.rename(output)
    return counts

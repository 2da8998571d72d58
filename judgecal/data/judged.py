"""Rows a judge has already judged, read back: the verdicts file ``judgecal judge`` writes
(``{"id", "verdict", "probability", ...}``, an abstention as ``"verdict": null,
"abstained": true``), its queue of abstained rows (each the row as it was read, with what
the judge said under ``"abstention"``), or any JSONL file of rows with a probability
beside them.

Choosing rows to label and estimating a rate from the labels both read such a file; the
digest of its bytes ties an estimate to the very file its rows were drawn from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from judgecal.data.rows import DataError, LabeledRow, LabelValue, RowShape, load_rows, parse_record, read_jsonl

QUEUE_KEY = "abstention"
"""A queue line keeps what the judge said (its ``probability``, ...) under this key; the
rest of the line is the row."""
JUDGE_KEYS = ("verdict", "abstained", "probability", "confidence", "probabilities", "judge", "label", QUEUE_KEY)
"""What the judge said: never part of the row, so annotators are not shown it."""


class JudgedRow(BaseModel):
    """One judged row: what the judge said, and the row itself when the file holds it."""

    model_config = ConfigDict(frozen=True)

    id: str
    verdict: LabelValue | None = Field(description="The verdict; None when the judge abstained.")
    abstained: bool = False
    probability: float | None = Field(default=None, description="The judge's P(positive label), when it gave one.")
    group: str | None = Field(default=None, description="The row's group, when the file or the rows file says it.")
    row: LabeledRow | None = Field(default=None, description="The input row, when the file or the rows file holds it.")
    line: int


@dataclass(frozen=True)
class JudgedFile:
    """The judged rows of one file, in file order, and the digest of its bytes."""

    path: Path
    rows: tuple[JudgedRow, ...]
    digest: str

    def __len__(self) -> int:
        return len(self.rows)


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of the file's bytes: any edit, a row judged after it, changes it."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def read_judged_rows(path: str | Path, task: RowShape, *, rows_file: str | Path | None = None) -> JudgedFile:
    """Read a file of judged rows; the first bad line stops with file, line and field.

    ``rows_file`` (the rows that were judged, ``judgecal judge --input``) gives each row
    its group and inputs when the judged file does not hold them."""
    path = Path(path)
    if not path.exists():
        raise DataError("no such file of judged rows", path=path)
    judged: list[JudgedRow] = []
    first_line: dict[str, int] = {}
    for line, record in read_jsonl(path):
        row = _judged_row(record, task, path=path, line=line)
        if row.id in first_line:
            raise DataError(
                f"duplicate id {row.id!r} (first seen on line {first_line[row.id]})", path=path, line=line, field="id"
            )
        first_line[row.id] = line
        judged.append(row)
    if not judged:
        raise DataError("the file holds no judged rows", path=path)
    if rows_file is not None:
        judged = _joined(judged, load_rows(rows_file, task, labelled=False).rows, path)
    return JudgedFile(path=path, rows=tuple(judged), digest=file_digest(path))


def _judged_row(record: dict[str, Any], task: RowShape, *, path: Path, line: int) -> JudgedRow:
    if record.get("id") in (None, ""):
        raise DataError("missing required field", path=path, line=line, field="id")
    row = _input_row(record, task, path=path, line=line)
    queued = record.get(QUEUE_KEY)
    if queued is not None and not isinstance(queued, dict):
        raise DataError("expected an object with the judge's probability", path=path, line=line, field=QUEUE_KEY)
    abstained = record.get("abstained", queued is not None)
    if not isinstance(abstained, bool):
        raise DataError(f"expected true or false, got {abstained!r}", path=path, line=line, field="abstained")
    verdict = record.get("verdict")
    if verdict is None and not abstained and (row is None or "verdict" in record):
        message = 'null is a verdict only with "abstained": true' if "verdict" in record else "missing required field"
        raise DataError(message, path=path, line=line, field="verdict")
    if verdict is not None:
        if abstained:
            raise DataError('an abstained row has "verdict": null', path=path, line=line, field="verdict")
        try:
            verdict = task.parse_label(verdict)
        except ValueError as error:
            raise DataError(str(error), path=path, line=line, field="verdict") from None
    group = record.get("group")
    if group is not None and (not isinstance(group, str | int) or isinstance(group, bool)):
        raise DataError(f"expected a string, got {group!r}", path=path, line=line, field="group")
    if "probability" in record or queued is None:
        probability = _probability(record.get("probability"), path=path, line=line, field="probability")
    else:
        probability = _probability(queued.get("probability"), path=path, line=line, field=f"{QUEUE_KEY}.probability")
    return JudgedRow(
        id=str(record["id"]),
        verdict=verdict,
        abstained=abstained,
        probability=probability,
        group=str(group) if group is not None else None,
        row=row,
        line=line,
    )


def _input_row(record: dict[str, Any], task: RowShape, *, path: Path, line: int) -> LabeledRow | None:
    """The row a line holds, its input fields beside what the judge said (a queue line, or
    any file of rows); None for a bare verdict line."""
    if not any(name in record for name in task.input_names):
        return None
    flat = {key: value for key, value in record.items() if key not in JUDGE_KEYS}
    return parse_record(flat, task, path=path, line=line, labelled=False)


def _probability(value: Any, *, path: Path, line: int, field: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
        raise DataError(f"expected a probability between 0 and 1, got {value!r}", path=path, line=line, field=field)
    return float(value)


def _joined(judged: list[JudgedRow], rows: tuple[LabeledRow, ...], path: Path) -> list[JudgedRow]:
    """Each judged row with its group and inputs from the rows that were judged."""
    by_id = {row.id: row for row in rows}
    out = []
    for item in judged:
        row = by_id.get(item.id)
        if row is None:
            raise DataError(f"row {item.id!r} is not in the rows file", path=path, line=item.line, field="id")
        group = item.group if item.group is not None else (row.group if row.group != "-" else None)
        out.append(item.model_copy(update={"row": item.row or row, "group": group}))
    return out

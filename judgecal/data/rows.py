"""Human-labelled rows: what a judge sees, what humans said, and how rows are split.

A file holds one row per line (JSONL) or per record (CSV). Rows are flat: the reserved
keys below sit beside the judge's input fields, and anything else is kept in ``meta``
so that no column a user supplied is ever dropped.

Reserved keys: ``id``, ``group`` (rows of one group are never split apart and are
resampled together), ``label`` (the human verdict), ``annotator_labels`` (individual
human verdicts, optional) and ``reference_judges`` (verdicts other judges already gave,
keyed by judge name, optional).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

LabelValue = bool | int | str


RESERVED_KEYS = ("id", "group", "label", "annotator_labels", "reference_judges")


class DataError(ValueError):
    """Bad input, located: the message names the file, line and field when known."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        self.reason = message
        where = ""
        if self.path is not None:
            where = self.path + (f":{line}" if line is not None else "") + ": "
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}{what}{message}")


class LabeledRow(BaseModel):
    """One human-labelled example, its inputs validated by the task's input model."""

    model_config = ConfigDict(frozen=True)

    id: str
    group: str
    inputs: dict[str, Any]
    label: LabelValue | None = Field(description="The human label; None for rows that are only to be judged.")
    annotator_labels: tuple[LabelValue, ...] | None = None
    reference_judges: dict[str, LabelValue] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict)
    line: int | None = Field(default=None, description="Line (JSONL) or record (CSV) in the source file.")

    def to_record(self) -> dict[str, Any]:
        """The flat form rows are read from; round-trips through :func:`load_rows`."""
        inputs = self.model_dump(mode="json", include={"inputs"})["inputs"]
        record: dict[str, Any] = {"id": self.id, "group": self.group, **inputs, "label": self.label}
        if self.annotator_labels is not None:
            record["annotator_labels"] = list(self.annotator_labels)
        if self.reference_judges:
            record["reference_judges"] = dict(self.reference_judges)
        record.update(self.meta)
        return record


class RowShape(Protocol):
    """What reading a task's rows needs to know of the task; its ``RowShape``
    (:mod:`judgecal.tasks`) is one, read off the judge's signature."""

    @property
    def inputs_model(self) -> type[BaseModel]: ...

    @property
    def labels(self) -> tuple[LabelValue, ...]: ...

    @property
    def positive(self) -> LabelValue | None: ...

    @property
    def input_names(self) -> tuple[str, ...]: ...

    def parse_label(self, value: Any) -> LabelValue: ...


@dataclass(frozen=True)
class Dataset:
    """Rows of one task from one source, with a content fingerprint."""

    task: RowShape
    rows: tuple[LabeledRow, ...]
    source: str

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[LabeledRow]:
        return iter(self.rows)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the rows' content in id order: equal data, equal fingerprint."""
        digest = hashlib.sha256()
        for row in sorted(self.rows, key=lambda r: r.id):
            payload = row.model_dump(mode="json", exclude={"line"})
            digest.update(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode())
            digest.update(b"\n")
        return digest.hexdigest()

    def labels(self) -> list[LabelValue]:
        return [row.label for row in self.rows]

    def label_counts(self) -> Counter[LabelValue]:
        return Counter(row.label for row in self.rows)

    def subset(self, rows: Iterable[LabeledRow], source: str | None = None) -> Dataset:
        return Dataset(task=self.task, rows=tuple(rows), source=source or self.source)

    def head(self, n: int) -> Dataset:
        return self.subset(self.rows[:n])


def load_rows(path: str | Path, task: RowShape, *, limit: int | None = None, labelled: bool = True) -> Dataset:
    """Load and validate a JSONL or CSV file; the first bad row stops with its location.

    ``labelled=False`` reads rows to be judged: ``label`` and ``group`` may be absent.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("no such file", path=path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        records = read_jsonl(path)
    elif suffix == ".csv":
        records = _read_csv(path, task)
    else:
        raise DataError(f"unknown file type {suffix!r}; use .jsonl or .csv", path=path)

    rows: list[LabeledRow] = []
    first_line_of: dict[str, int] = {}
    for line, record in records:
        row = parse_record(record, task, path=path, line=line, labelled=labelled)
        if row.id in first_line_of:
            raise DataError(
                f"duplicate id {row.id!r} (first seen on line {first_line_of[row.id]})",
                path=path,
                line=line,
                field="id",
            )
        first_line_of[row.id] = line
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise DataError("the file holds no rows", path=path)
    return Dataset(task=task, rows=tuple(rows), source=str(path))


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                raise DataError(f"invalid JSON ({error.msg} at column {error.colno})", path=path, line=number) from None
            if not isinstance(record, dict):
                raise DataError(f"expected a JSON object, got {type(record).__name__}", path=path, line=number)
            yield number, record


def _read_csv(path: Path, task: RowShape) -> Iterator[tuple[int, dict[str, Any]]]:
    """CSV cells are strings: JSON-typed columns (lists, annotator labels) hold JSON text."""
    structured = {"annotator_labels", "reference_judges"} | {
        name for name, info in task.inputs_model.model_fields.items() if info.annotation is not str
    }
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        for record in reader:
            number = reader.line_num
            if None in record:
                raise DataError("more cells than header columns", path=path, line=number)
            parsed: dict[str, Any] = {}
            judges: dict[str, Any] = {}
            for key, cell in record.items():
                if cell is None or cell == "":
                    continue
                if key.startswith("reference_judges."):
                    judges[key.removeprefix("reference_judges.")] = cell
                    continue
                if key in structured:
                    try:
                        parsed[key] = json.loads(cell)
                    except json.JSONDecodeError:
                        raise DataError(
                            f"expected JSON in this CSV column, got {cell[:60]!r}",
                            path=path,
                            line=number,
                            field=key,
                        ) from None
                else:
                    parsed[key] = cell
            if judges:
                parsed.setdefault("reference_judges", {}).update(judges)
            yield number, parsed


def parse_record(record: dict[str, Any], task: RowShape, *, path: Path, line: int, labelled: bool = True) -> LabeledRow:
    for key in ("id", "group", "label") if labelled else ("id",):
        if key not in record or record[key] is None or record[key] == "":
            raise DataError("missing required field", path=path, line=line, field=key)
    row_id, group = record["id"], record.get("group") if record.get("group") not in (None, "") else "-"
    for key, value in (("id", row_id), ("group", group)):
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise DataError(f"expected a string, got {value!r}", path=path, line=line, field=key)

    def label_of(value: Any, field: str) -> LabelValue:
        try:
            return task.parse_label(value)
        except ValueError as error:
            raise DataError(str(error), path=path, line=line, field=field) from None

    label = label_of(record["label"], "label") if record.get("label") not in (None, "") else None
    annotators = record.get("annotator_labels")
    annotator_labels = None
    if annotators is not None:
        if not isinstance(annotators, list) or not annotators:
            raise DataError("expected a non-empty list of labels", path=path, line=line, field="annotator_labels")
        annotator_labels = tuple(label_of(value, f"annotator_labels[{i}]") for i, value in enumerate(annotators))
    judges = record.get("reference_judges") or {}
    if not isinstance(judges, dict):
        raise DataError("expected an object of judge -> verdict", path=path, line=line, field="reference_judges")
    reference = {
        str(name): label_of(value, f"reference_judges.{name}") for name, value in judges.items() if value is not None
    }

    input_names = set(task.inputs_model.model_fields)
    raw_inputs = {
        key: _text_of_scalar(value) if task.inputs_model.model_fields[key].annotation is str else value
        for key, value in record.items()
        if key in input_names
    }
    try:
        inputs = task.inputs_model.model_validate(raw_inputs)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        message = "missing required field" if first["type"] == "missing" else first["msg"]
        raise DataError(message, path=path, line=line, field=field) from None
    meta = {key: value for key, value in record.items() if key not in input_names and key not in RESERVED_KEYS}
    return LabeledRow(
        id=str(row_id),
        group=str(group),
        inputs={name: getattr(inputs, name) for name in type(inputs).model_fields},
        label=label,
        annotator_labels=annotator_labels,
        reference_judges=reference,
        meta=meta,
        line=line,
    )


def _text_of_scalar(value: Any) -> Any:
    """A text field that a JSON writer turned into a number or boolean (a response that
    read ``True``) is text again, in its JSON spelling; other values are left to validation."""
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    return value


def load_verdicts(path: str | Path, task: RowShape) -> dict[str, tuple[LabelValue | None, float | None]]:
    """Verdicts another judge already gave, one JSON object per line:
    ``{"id": ..., "verdict": ..., "probability": P(positive) (optional)}``. A judge that
    abstained wrote ``"verdict": null, "abstained": true``: its verdict here is None."""
    path = Path(path)
    if not path.exists():
        raise DataError("no such verdicts file", path=path)
    verdicts: dict[str, tuple[LabelValue | None, float | None]] = {}
    first_line: dict[str, int] = {}
    for line, record in read_jsonl(path):
        if "id" not in record:
            raise DataError("missing required field", path=path, line=line, field="id")
        if "verdict" not in record:
            raise DataError("missing required field", path=path, line=line, field="verdict")
        row_id = str(record["id"])
        if row_id in first_line:
            raise DataError(
                f"duplicate id {row_id!r} (first seen on line {first_line[row_id]})", path=path, line=line, field="id"
            )
        first_line[row_id] = line
        label = _verdict_of(record, task, path, line)
        probability = record.get("probability")
        if probability is not None:
            if not isinstance(probability, int | float) or isinstance(probability, bool) or not 0 <= probability <= 1:
                raise DataError(
                    f"expected a probability between 0 and 1, got {probability!r}",
                    path=path,
                    line=line,
                    field="probability",
                )
            probability = float(probability)
        verdicts[row_id] = (label, probability)
    if not verdicts:
        raise DataError("the file holds no verdicts", path=path)
    return verdicts


def _verdict_of(record: dict[str, Any], task: RowShape, path: Path, line: int) -> LabelValue | None:
    """A verdicts line's verdict, or None where it says the judge abstained."""
    abstained = record.get("abstained", False)
    if not isinstance(abstained, bool):
        raise DataError(f"expected true or false, got {abstained!r}", path=path, line=line, field="abstained")
    if abstained:
        if record["verdict"] is not None:
            raise DataError(
                f'an abstained line has "verdict": null, got {record["verdict"]!r}',
                path=path,
                line=line,
                field="abstained",
            )
        return None
    if record["verdict"] is None:
        raise DataError(
            'expected a verdict, or null with "abstained": true where the judge abstained',
            path=path,
            line=line,
            field="verdict",
        )
    try:
        return task.parse_label(record["verdict"])
    except ValueError as error:
        raise DataError(str(error), path=path, line=line, field="verdict") from None

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
import types
import typing
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

LabelValue = bool | int | str
RESERVED_KEYS = ("id", "group", "label", "annotator_labels", "reference_judges")
SplitName = Literal["train", "dev", "test", "gate"]


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


# ---------------------------------------------------------------------------------------
# Task: the shape of a judge's rows, read off its DSPy signature
# ---------------------------------------------------------------------------------------


class TaskSpec(BaseModel):
    """What rows of one judge look like: its inputs, its decision field and label values."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    name: str
    inputs_model: type[BaseModel]
    decision_field: str
    labels: tuple[LabelValue, ...]
    positive: LabelValue | None = Field(
        default=None, description="The label whose rate is reported as the selected rate (binary tasks)."
    )

    @property
    def is_binary(self) -> bool:
        return self.labels == (True, False)

    @property
    def is_ordinal(self) -> bool:
        """Ratings such as 1-5: integer labels whose order and distance matter."""
        return all(isinstance(label, int) and not isinstance(label, bool) for label in self.labels)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.inputs_model.model_fields)

    def parse_label(self, value: Any) -> LabelValue:
        """Coerce a label as users write it (``yes``/``no``, ``1``/``0``, ``a``/``B``/``Tie``)."""
        if self.is_binary:
            if isinstance(value, bool):
                return value
            if isinstance(value, int | float) and value in (0, 1):
                return bool(value)
            if isinstance(value, str):
                text = value.strip().lower()
                if text in _TRUE_WORDS:
                    return True
                if text in _FALSE_WORDS:
                    return False
            raise ValueError(f"expected a yes/no label (true/false, yes/no, 1/0), got {value!r}")
        if self.is_ordinal:
            number = value
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                number = int(value.strip())
            elif isinstance(value, float) and value.is_integer():
                number = int(value)
            if isinstance(number, int) and not isinstance(number, bool) and number in self.labels:
                return number
        if isinstance(value, str):
            by_key = {str(label).lower(): label for label in self.labels}
            found = by_key.get(value.strip().lower())
            if found is not None:
                return found
        allowed = ", ".join(repr(label) for label in self.labels)
        raise ValueError(f"expected one of {allowed}, got {value!r}")

    @classmethod
    def from_signature(cls, name: str, signature: Any) -> TaskSpec:
        """Derive the row shape from a DSPy signature with one bool or Literal output."""
        outputs = dict(signature.output_fields)
        if len(outputs) != 1:
            raise TypeError(
                f"signature {signature.__name__} must have exactly one output field (the decision); "
                f"it has {sorted(outputs)}"
            )
        decision, field_info = next(iter(outputs.items()))
        annotation = field_info.annotation
        if annotation is bool:
            labels: tuple[LabelValue, ...] = (True, False)
            positive: LabelValue | None = True
        elif get_origin(annotation) is Literal and all(isinstance(v, str) for v in get_args(annotation)):
            labels = tuple(get_args(annotation))
            positive = None
        elif get_origin(annotation) is Literal and all(
            isinstance(v, int) and not isinstance(v, bool) for v in get_args(annotation)
        ):
            labels = tuple(sorted(get_args(annotation)))
            positive = None
        else:
            raise TypeError(
                f"the decision field '{decision}' of {signature.__name__} must be bool, "
                f"Literal[...] of strings, or Literal[...] of integers (a rating), not {annotation!r}"
            )
        fields: dict[str, Any] = {}
        for input_name, info in signature.input_fields.items():
            input_type = info.annotation
            if _admits_none(input_type):
                fields[input_name] = (input_type, None)
            elif get_origin(input_type) is list:
                fields[input_name] = (input_type, Field(default_factory=list))
            else:
                fields[input_name] = (input_type, ...)
        model = create_model(  # type: ignore[call-overload]
            f"{signature.__name__}Inputs", __config__=ConfigDict(extra="forbid"), **fields
        )
        return cls(name=name, inputs_model=model, decision_field=decision, labels=labels, positive=positive)


_TRUE_WORDS = {"true", "yes", "y", "1", "t", "relevant", "accept", "accepted"}
_FALSE_WORDS = {"false", "no", "n", "0", "f", "irrelevant", "not relevant", "reject", "rejected"}


def _admits_none(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return type(None) in get_args(annotation)
    return annotation is None or annotation is type(None)


# ---------------------------------------------------------------------------------------
# Rows and datasets
# ---------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Dataset:
    """Rows of one task from one source, with a content fingerprint."""

    task: TaskSpec
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


def load_rows(path: str | Path, task: TaskSpec, *, limit: int | None = None, labelled: bool = True) -> Dataset:
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


def _read_csv(path: Path, task: TaskSpec) -> Iterator[tuple[int, dict[str, Any]]]:
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


def parse_record(record: dict[str, Any], task: TaskSpec, *, path: Path, line: int, labelled: bool = True) -> LabeledRow:
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


def load_verdicts(path: str | Path, task: TaskSpec) -> dict[str, tuple[LabelValue, float | None]]:
    """Verdicts another judge already gave, one JSON object per line:
    ``{"id": ..., "verdict": ..., "probability": P(positive) (optional)}``."""
    path = Path(path)
    if not path.exists():
        raise DataError("no such verdicts file", path=path)
    verdicts: dict[str, tuple[LabelValue, float | None]] = {}
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
        try:
            label = task.parse_label(record["verdict"])
        except ValueError as error:
            raise DataError(str(error), path=path, line=line, field="verdict") from None
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


# ---------------------------------------------------------------------------------------
# Grouped split
# ---------------------------------------------------------------------------------------


class SplitSpec(BaseModel):
    """Fractions of groups in dev, test and gate; the rest is train. An unknown key (a typo
    such as ``tset``) is refused rather than silently ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dev: float = Field(default=0.25, gt=0, lt=1, description="Share of groups that selects among candidates.")
    test: float = Field(default=0.25, gt=0, lt=1, description="Share of groups the report is computed on.")
    gate: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Share of groups the registry's champion gate compares versions on (never fitted, selected "
        "or reported on); 0 means no gate rows.",
    )
    seed: int = 0
    max_train_rows: int | None = Field(default=None, gt=0, description="Cap train (LM cost control).")
    max_dev_rows: int | None = Field(default=None, gt=0, description="Cap dev (optimizer cost control).")
    max_test_rows: int | None = Field(default=None, gt=0, description="Cap test (report cost control).")
    max_gate_rows: int | None = Field(default=None, gt=0, description="Cap gate (registry cost control).")


@dataclass(frozen=True)
class Split:
    """Train / dev / test by group: the optimizer fits on train, selects on dev, and
    the report is computed once on test."""

    train: Dataset
    dev: Dataset
    test: Dataset
    spec: SplitSpec
    data_fingerprint: str
    gate: Dataset | None = None

    @property
    def sizes(self) -> dict[str, int]:
        return {name: len(part) for name, part in self.parts().items()}

    @property
    def fingerprint(self) -> str:
        """Identifies the data and which rows fell in which split."""
        digest = hashlib.sha256(self.data_fingerprint.encode())
        for name, part in self.parts().items():
            for row_id in sorted(row.id for row in part.rows):
                digest.update(f"{name}:{row_id}\n".encode())
        return digest.hexdigest()

    def parts(self) -> dict[str, Dataset]:
        parts = {"train": self.train, "dev": self.dev, "test": self.test}
        if self.gate is not None and len(self.gate):
            parts["gate"] = self.gate
        return parts


def split_by_group(dataset: Dataset, spec: SplitSpec | None = None) -> Split:
    """Shuffle groups with a seeded generator and cut them into train / dev / test (and
    gate, when asked for).

    Fractions count groups, not rows, because groups are the unit of independence.
    Each split must contain every label the task needs to score it (two classes at least).
    """
    spec = spec or SplitSpec()
    if spec.dev + spec.test + spec.gate >= 1:
        raise DataError(
            f"dev ({spec.dev}) + test ({spec.test}) + gate ({spec.gate}) fractions must leave rows for train"
        )
    groups = sorted({row.group for row in dataset.rows})
    if len(groups) < 3:
        raise DataError(
            f"a grouped split needs at least 3 groups; the data has {len(groups)}",
            path=dataset.source,
            field="group",
        )
    order = np.random.default_rng(spec.seed).permutation(len(groups))
    shuffled = [groups[i] for i in order]
    n_test = max(1, round(spec.test * len(groups)))
    n_dev = max(1, round(spec.dev * len(groups)))
    n_gate = max(1, round(spec.gate * len(groups))) if spec.gate > 0 else 0
    if n_test + n_dev >= len(groups) and not n_gate:
        n_test = n_dev = max(1, (len(groups) - 1) // 3)
    if n_test + n_dev + n_gate >= len(groups):
        raise DataError(
            f"{len(groups)} groups are too few for dev {spec.dev}, test {spec.test} and gate {spec.gate} "
            "with rows left for train; lower the fractions or add groups",
            path=dataset.source,
            field="group",
        )
    assignment: dict[str, SplitName] = {}
    for position, group in enumerate(shuffled):
        if position < n_test:
            assignment[group] = "test"
        elif position < n_test + n_dev:
            assignment[group] = "dev"
        elif position < n_test + n_dev + n_gate:
            assignment[group] = "gate"
        else:
            assignment[group] = "train"
    parts: dict[str, list[LabeledRow]] = {"train": [], "dev": [], "test": [], "gate": []}
    for row in dataset.rows:
        parts[assignment[row.group]].append(row)
    if not n_gate:
        del parts["gate"]
    caps = {
        "train": spec.max_train_rows,
        "dev": spec.max_dev_rows,
        "test": spec.max_test_rows,
        "gate": spec.max_gate_rows,
    }
    for name, cap in caps.items():
        if name in parts and cap is not None and len(parts[name]) > cap:
            parts[name] = sample_across_groups(parts[name], cap, spec.seed)
    for name, rows in parts.items():
        classes = Counter(row.label for row in rows)
        if len(classes) < 2:
            only = ", ".join(f"{label!r}" for label in classes) or "no rows"
            raise DataError(
                f"the {name} split (seed {spec.seed}) holds {len(rows)} rows with only label {only}; "
                "agreement cannot be measured on one class. Add rows of the other class, "
                "change the seed or the split fractions",
                path=dataset.source,
                field="label",
            )
    return Split(
        train=dataset.subset(parts["train"]),
        dev=dataset.subset(parts["dev"]),
        test=dataset.subset(parts["test"]),
        spec=spec,
        data_fingerprint=dataset.fingerprint,
        gate=dataset.subset(parts["gate"]) if "gate" in parts else None,
    )


def sample_across_groups(rows: list[LabeledRow], cap: int, seed: int) -> list[LabeledRow]:
    """Keep ``cap`` rows, drawn round-robin over the groups in a seeded order, so every
    group keeps a share and the kept rows stay in file order."""
    rng = np.random.default_rng(seed)
    by_group: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        by_group.setdefault(row.group, []).append(index)
    queues = [list(rng.permutation(indices)) for indices in by_group.values()]
    kept: list[int] = []
    while len(kept) < cap:
        for queue in queues:
            if queue and len(kept) < cap:
                kept.append(int(queue.pop()))
    return [rows[i] for i in sorted(kept)]


def group_ids(rows: Sequence[LabeledRow]) -> np.ndarray:
    """Integer group codes, for group-aware resampling."""
    codes: dict[str, int] = {}
    return np.array([codes.setdefault(row.group, len(codes)) for row in rows])

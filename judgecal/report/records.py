"""Evaluation records: the evidence a report is computed from.

An :class:`EvaluationRecord` holds, for each held-out row, its group, the human label
(and individual annotators' labels) and each judge's verdict, confidence and
order-swapped verdict. It is saved with every calibration run as ``evaluation.json``, so
every number of a report can be recomputed from it alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from judgecal.artifacts import EVALUATION_FILE
from judgecal.data.rows import LabeledRow, LabelValue
from judgecal.stats.metrics import (
    LabelSpace,
)
from judgecal.tasks.spec import TaskSpec

# 2: records say whether the task is pairwise (TaskSpec.is_pairwise).
RECORD_SCHEMA_VERSION = 2


REFERENCE_PREFIX = "reference:"


class JudgeRecord(BaseModel):
    """One judge's answers on the record's rows (in row order)."""

    verdicts: list[LabelValue | None]
    probability: list[float | None] | None = Field(default=None, description="P(positive label) per row, binary tasks.")
    confidence: list[float | None] | None = Field(default=None, description="P(verdict) per row.")
    swapped: list[LabelValue | None] | None = Field(default=None, description="Verdicts with responses swapped.")
    recorded: bool = Field(
        default=False,
        description="Verdicts recorded in the data (a reference judge): rows without one are left out "
        "rather than counted as failures.",
    )


class EvaluationRecord(BaseModel):
    """The test rows and every judge's verdicts on them: all a report is computed from."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["judgecal.evaluation"] = "judgecal.evaluation"
    schema_version: int = RECORD_SCHEMA_VERSION
    judge_name: str
    task: str
    labels: list[LabelValue]
    positive: LabelValue | None = None
    ordinal: bool = False
    pairwise: bool = Field(
        default=False,
        description="The task compares two responses (TaskSpec.is_pairwise): position and verbosity bias apply.",
    )
    split: str = "test"
    ids: list[str]
    groups: list[str]
    human: list[LabelValue]
    annotators: list[list[LabelValue] | None] | None = None
    soft_labels: list[float | None] | None = Field(
        default=None, description="Share of annotators who chose the positive label, where the data gives it."
    )
    personalized: list[str | None] | None = None
    length_a: list[int] | None = None
    length_b: list[int] | None = None
    judges: dict[str, JudgeRecord]
    data_fingerprint: str | None = None
    split_fingerprint: str | None = None

    @property
    def space(self) -> LabelSpace:
        return LabelSpace(labels=tuple(self.labels), positive=self.positive, ordinal=self.ordinal)


def read_record(path: Path) -> EvaluationRecord:
    """Read ``evaluation.json`` (or a folder holding it), with a clear message if it is not one."""
    import json

    from pydantic import ValidationError

    if path.is_dir():
        path = path / EVALUATION_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such evaluation record")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not an evaluation record (not JSON: {error})") from None
    if not isinstance(document, dict) or document.get("format") != "judgecal.evaluation":
        raise ValueError(f'{path}: not an evaluation record (missing "format": "judgecal.evaluation")')
    if document.get("schema_version", 0) > RECORD_SCHEMA_VERSION:
        raise ValueError(
            f"{path}: record schema version {document.get('schema_version')} is newer than this "
            f"judgecal reads ({RECORD_SCHEMA_VERSION}); upgrade judgecal"
        )
    if document.get("schema_version", 0) < 2:
        document = _say_whether_pairwise(document)
    try:
        return EvaluationRecord.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        raise ValueError(f"{path}: field '{'.'.join(str(p) for p in first['loc'])}': {first['msg']}") from None


def _say_whether_pairwise(document: dict) -> dict:
    """1 → 2: records gained ``pairwise``. An earlier one was reported as pairwise when its
    labels were categories holding ``A`` and ``B``; it is read the same way."""
    labels = document.get("labels") or []
    categorical = document.get("positive") is None and not document.get("ordinal")
    pairwise = categorical and {"A", "B"} <= {label for label in labels if isinstance(label, str)}
    return {**document, "schema_version": 2, "pairwise": pairwise}


SOFT_LABEL_KEYS = ("soft_label", "human_yes_rate")


def _soft_label(row: LabeledRow) -> float | None:
    """The share of annotators who said yes: a ``soft_label`` (or ``human_yes_rate``) column."""
    for key in SOFT_LABEL_KEYS:
        value = row.meta.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
            return float(value)
    return None


def label_space(spec: TaskSpec) -> LabelSpace:
    return LabelSpace(labels=spec.labels, positive=spec.positive, ordinal=spec.is_ordinal)


def build_record(
    judge_name: str,
    task_reference: str,
    spec: TaskSpec,
    rows: Sequence[LabeledRow],
    judges: dict[str, JudgeRecord],
    *,
    include_reference: bool = True,
    data_fingerprint: str | None = None,
    split_fingerprint: str | None = None,
) -> EvaluationRecord:
    """Collect verdicts and the row facts reports need (annotators, lengths, which response
    is personalized) into one record; reference judges found in the rows are added."""
    judges = dict(judges)
    if include_reference:
        names = sorted({name for row in rows for name in row.reference_judges})
        for name in names:
            judges[f"{REFERENCE_PREFIX}{name}"] = JudgeRecord(
                verdicts=[row.reference_judges.get(name) for row in rows], recorded=True
            )
    annotators = [list(row.annotator_labels) if row.annotator_labels else None for row in rows]
    soft = [_soft_label(row) for row in rows] if spec.positive is not None else []
    pairwise = spec.is_pairwise
    personalized = [row.meta.get("personalized") for row in rows] if pairwise else None
    return EvaluationRecord(
        judge_name=judge_name,
        task=task_reference,
        labels=list(spec.labels),
        positive=spec.positive,
        ordinal=spec.is_ordinal,
        pairwise=pairwise,
        ids=[row.id for row in rows],
        groups=[row.group for row in rows],
        human=[row.label for row in rows],
        annotators=annotators if any(annotators) else None,
        soft_labels=soft if any(value is not None for value in soft) else None,
        personalized=personalized if personalized and any(p in ("A", "B") for p in personalized) else None,
        length_a=[len(str(row.inputs["response_a"])) for row in rows] if pairwise else None,
        length_b=[len(str(row.inputs["response_b"])) for row in rows] if pairwise else None,
        judges=judges,
        data_fingerprint=data_fingerprint,
        split_fingerprint=split_fingerprint,
    )

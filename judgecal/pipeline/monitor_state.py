"""The monitor's state file: what a monitor has counted, batch by batch.

Kept apart from :mod:`judgecal.pipeline.monitor`, which fills it: the file is the record
a stopped monitor resumes from, so its shape (``schema_version``), reading a damaged one
and replacing it atomically live in one place.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from judgecal.data.rows import DataError, LabeledRow
from judgecal.pipeline.selective_monitor import Followed, SequenceStep, fallen
from judgecal.stats.sequential import sequence_alpha
from judgecal.stats.shift import ShiftCheck
from judgecal.stats.uncertainty import Estimate

STATE_SCHEMA_VERSION = 2
"""2: a selective judge's monitor follows each verdict's precision and its coverage
(``followed``); a state of version 1 resumes following its agreement alone, at its alpha."""


class BatchCheck(BaseModel):
    """One batch: what the judge did on it, and the sequence over all batches up to it."""

    index: int
    file: str
    fingerprint: str
    checked_at: str
    rows: int
    groups: int
    answered: int
    agreement: Estimate
    kappa: Estimate
    coverage: float | None = Field(default=None, description="Share of rows answered (a selective judge).")
    precision: dict[str, float | None] = Field(
        default_factory=dict, description="Per verdict: the share of the rows given it that people agreed with."
    )
    observations: list[float] = Field(description="One per group answered: the share of its rows the judge got right.")
    mean: float
    upper: float
    lower: float
    shift: ShiftCheck | None = None
    sequences: dict[str, SequenceStep] = Field(
        default_factory=dict, description="A selective judge's followed sequences after this batch, by name."
    )

    @property
    def only_verdict(self) -> str | None:
        """The verdict a selective judge gave on every row it answered in this batch, if one:
        κ against people is then 0 by construction, however right those verdicts are."""
        given = [verdict for verdict, value in self.precision.items() if value is not None]
        return given[0] if self.coverage is not None and len(given) == 1 else None


class MonitorState(BaseModel):
    """What a monitor has counted so far; ``judgecal monitor --state`` reads and replaces it."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["judgecal.monitor"] = "judgecal.monitor"
    schema_version: int = STATE_SCHEMA_VERSION
    judge: str = Field(description="The judge as given: models:/NAME@ALIAS, runs:/ID/judge or a bundle path.")
    judge_name: str
    bundle_digest: str
    level: float
    level_source: str
    alpha: float
    run_id: str | None = None
    registered: tuple[str, str] | None = Field(default=None, description="(model name, version) for models:/.")
    alarm_batch: int | None = None
    followed: list[Followed] = Field(
        default_factory=list,
        description="A selective judge's: each verdict's precision and its coverage, each a sequence of its own.",
    )
    batches: list[BatchCheck] = Field(default_factory=list)

    @field_validator("registered")
    @classmethod
    def _no_version_is_none(cls, value: tuple[str, str] | None) -> tuple[str, str] | None:
        """A logged model's id was once stored here with version "": it has no registered
        version to tag, so such a state file resumes as having none."""
        return None if value is not None and not value[1] else value

    @property
    def observations(self) -> list[float]:
        return [x for batch in self.batches for x in batch.observations]

    @property
    def sequence_alpha(self) -> float:
        """Each sequence's share of ``alpha``: agreement's and every followed one's alike."""
        return sequence_alpha(self.alpha, 1 + len(self.followed))

    def fallen(self) -> list[str]:
        """What the alarm is about after the newest batch, in words: each sequence whose
        upper bound is below its level (bounds only move down, so it stays there)."""
        if not self.batches:
            return []
        batch = self.batches[-1]
        words = ["its agreement"] if batch.upper < self.level else []
        return words + [q.words for q in fallen(self.followed, batch.sequences)]


def read_state(path: Path) -> MonitorState | None:
    """The state file, or None when it does not exist yet; a damaged one is refused."""
    if not path.exists():
        return None
    try:
        return MonitorState.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(document)"
        raise DataError(f"not a monitor state: {first['msg']}", path=path, field=where) from None


def write_state(state: MonitorState, path: Path) -> None:
    """Replace the state file atomically: a crash leaves the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(state.model_dump_json(indent=2))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def batch_fingerprint(rows: list[LabeledRow]) -> str:
    """The rows' content (id, group, inputs, label), whatever their order or the file's name."""
    content = sorted(
        json.dumps([r.id, r.group, r.model_dump(mode="json")["inputs"], r.label], sort_keys=True) for r in rows
    )
    return "sha256:" + hashlib.sha256("\n".join(content).encode("utf-8")).hexdigest()

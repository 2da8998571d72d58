"""Splitting rows by group: train to fit on, dev to select on, test to report on, and
optionally gate rows for the registry's champion gate and calibration rows for a
selective judge's band.

Fractions count groups, not rows: rows of one prompt are not independent, so a group is
never split across parts, and intervals resample whole groups.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from judgecal.data.rows import DataError, Dataset, LabeledRow

SplitName = Literal["train", "dev", "test", "gate", "calibration"]


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
    calibration: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="Share of groups a selective judge's band is chosen on (never fitted, selected or reported "
        "on); not set: 0.2 when the experiment has a [selective] section choosing its band on a split, else 0.",
    )
    seed: int = Field(default=0, description="Seed of the shuffle that assigns groups to parts.")
    max_train_rows: int | None = Field(
        default=None, gt=0, description="Cap train, drawn evenly across groups (LM cost control)."
    )
    max_dev_rows: int | None = Field(
        default=None, gt=0, description="Cap dev, drawn evenly across groups (optimizer cost control)."
    )
    max_test_rows: int | None = Field(
        default=None, gt=0, description="Cap test, drawn evenly across groups (report cost control)."
    )
    max_gate_rows: int | None = Field(
        default=None, gt=0, description="Cap gate, drawn evenly across groups (registry cost control)."
    )


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
    calibration: Dataset | None = None

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
        if self.calibration is not None and len(self.calibration):
            parts["calibration"] = self.calibration
        return parts


def split_by_group(dataset: Dataset, spec: SplitSpec | None = None) -> Split:
    """Shuffle groups with a seeded generator and cut them into train / dev / test (and
    gate and calibration, when asked for).

    Fractions count groups, not rows, because groups are the unit of independence.
    Each split must contain every label the task needs to score it (two classes at least).
    """
    spec = spec or SplitSpec()
    calibration = spec.calibration or 0.0
    if spec.dev + spec.test + spec.gate + calibration >= 1:
        raise DataError(
            f"dev ({spec.dev}) + test ({spec.test}) + gate ({spec.gate}) + calibration ({calibration}) fractions "
            "must leave rows for train"
        )
    groups = sorted({row.group for row in dataset.rows})
    if len(groups) < 3:
        raise DataError(
            f"a grouped split needs at least 3 groups; the data has {len(groups)}",
            path=dataset.source,
            field="group",
        )
    assignment = _assign_groups(groups, spec, dataset.source)
    parts: dict[str, list[LabeledRow]] = {name: [] for name in ("train", "dev", "test", "gate", "calibration")}
    for row in dataset.rows:
        parts[assignment[row.group]].append(row)
    for name in ("gate", "calibration"):
        if not parts[name]:
            del parts[name]
    caps = {
        "train": spec.max_train_rows,
        "dev": spec.max_dev_rows,
        "test": spec.max_test_rows,
        "gate": spec.max_gate_rows,
    }
    for name, cap in caps.items():
        if name in parts:
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
        calibration=dataset.subset(parts["calibration"]) if "calibration" in parts else None,
    )


def _assign_groups(groups: Sequence[str], spec: SplitSpec, source: str | None) -> dict[str, SplitName]:
    """Each group's part: the shuffled groups are cut into test, dev, gate and calibration
    in this order (so adding gate or calibration groups moves no other part's groups), the
    rest is train."""
    shuffled = [groups[i] for i in np.random.default_rng(spec.seed).permutation(len(groups))]
    calibration = spec.calibration or 0.0
    n_test = max(1, round(spec.test * len(groups)))
    n_dev = max(1, round(spec.dev * len(groups)))
    n_gate = max(1, round(spec.gate * len(groups))) if spec.gate > 0 else 0
    n_calibration = max(1, round(calibration * len(groups))) if calibration > 0 else 0
    if n_test + n_dev >= len(groups) and not n_gate and not n_calibration:
        n_test = n_dev = max(1, (len(groups) - 1) // 3)
    if n_test + n_dev + n_gate + n_calibration >= len(groups):
        raise DataError(
            f"{len(groups)} groups are too few for dev {spec.dev}, test {spec.test}, gate {spec.gate} and "
            f"calibration {calibration} with rows left for train; lower the fractions or add groups",
            path=source,
            field="group",
        )
    counts: list[tuple[SplitName, int]] = [
        ("test", n_test),
        ("dev", n_dev),
        ("gate", n_gate),
        ("calibration", n_calibration),
    ]
    assignment: dict[str, SplitName] = {}
    position = 0
    for name, count in counts:
        for group in shuffled[position : position + count]:
            assignment[group] = name
        position += count
    for group in shuffled[position:]:
        assignment[group] = "train"
    return assignment


def sample_across_groups(rows: Sequence[LabeledRow], cap: int | None, seed: int) -> list[LabeledRow]:
    """Keep ``cap`` rows, drawn round-robin over the groups in a seeded order, so every
    group keeps a share and the kept rows stay in file order. No cap, or no more rows
    than it: all of them."""
    if cap is None or len(rows) <= cap:
        return list(rows)
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

"""Rows the tests build: recorded judges that over-select, pairs where the careful
answer wins, and capped grouped splits of the demo files; a judge that abstains."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from judgecal.data.rows import Dataset, LabeledRow, load_rows
from judgecal.data.split import SplitSpec, split_by_group
from judgecal.judges.fitted import FittedJudge, inputs_key
from judgecal.judges.verdict import Verdict
from judgecal.tasks.registry import resolve_task

REPO = Path(__file__).resolve().parents[1]
RELEVANCE = resolve_task("relevance")
PAIRWISE = resolve_task("pairwise")


def demo_split(task_name: str, file: str, rows_per_part: int) -> tuple[Dataset, object]:
    task = resolve_task(task_name)
    dataset = load_rows(REPO / "experiments" / "data" / file, task.spec)
    spec = SplitSpec(
        dev=0.25,
        test=0.25,
        seed=0,
        max_train_rows=rows_per_part,
        max_dev_rows=rows_per_part,
        max_test_rows=rows_per_part,
    )
    return dataset, split_by_group(dataset, spec)


def recorded_rows(n_groups: int = 12, per_group: int = 10, seed: int = 0) -> Dataset:
    """Rows whose two recorded judges over-select, one more sharply than the other."""
    rng = np.random.default_rng(seed)
    rows = []
    words = ["cooking", "travel", "python", "budget", "allergy", "music", "fitness", "garden"]
    for g in range(n_groups):
        for i in range(per_group):
            relevant = bool(rng.uniform() < 0.25)
            topic = words[(g + i) % len(words)]
            attribute = f"The user cares about {topic if relevant else words[(g + i + 3) % len(words)]}."
            rows.append(
                LabeledRow(
                    id=f"g{g}-{i}",
                    group=f"g{g}",
                    inputs={"prompt": f"Help me with {topic}.", "attribute": attribute},
                    label=relevant,
                    reference_judges={
                        "strict": bool(relevant or rng.uniform() < 0.15),
                        "loose": bool(relevant or rng.uniform() < 0.5),
                    },
                )
            )
    return Dataset(task=RELEVANCE.spec, rows=tuple(rows), source="memory")


def pair_rows(n_groups: int = 10, per_group: int = 6, seed: int = 0) -> Dataset:
    """Pairs where the longer, on-topic response usually wins."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        for i in range(per_group):
            good = f"A careful answer about topic {g} with steps, an example and a check. " * int(rng.integers(2, 4))
            bad = f"Maybe {i}."
            label = "A" if rng.uniform() < 0.5 else "B"
            if rng.uniform() < 0.15:
                label, good, bad = "tie", good, good
            first, second = (good, bad) if label == "A" else (bad, good)
            rows.append(
                LabeledRow(
                    id=f"p{g}-{i}",
                    group=f"p{g}",
                    inputs={
                        "prompt": f"Question {g}",
                        "user_attributes": [],
                        "response_a": first,
                        "response_b": second,
                    },
                    label=label,
                )
            )
    return Dataset(task=PAIRWISE.spec, rows=tuple(rows), source="memory")


class AbstainingJudge(FittedJudge):
    """A yes/no judge that abstains, as a selective judge does outside its band: its
    P(positive) is a fixed function of the row's inputs (a hash), it says yes at or above
    ``high``, no below ``low`` and abstains in between, keeping the probabilities. It
    calls no model unless ``uses_lm`` says so (then rows are judged one at a time), and it
    is registered nowhere: no bundle can hold it."""

    kind = "abstaining"

    def __init__(self, low: float = 0.3, high: float = 0.7, calls_model: bool = False) -> None:
        self.low = low
        self.high = high
        self.calls_model = calls_model
        self.task = RELEVANCE
        self.name = "abstaining"

    @property
    def uses_lm(self) -> bool:
        return self.calls_model

    def probability(self, row: LabeledRow) -> float:
        digest = hashlib.sha256(inputs_key(row.inputs).encode()).digest()
        return int.from_bytes(digest[:4], "big") / 2**32

    def predict(self, rows, *, progress=None, description=""):
        out = []
        for row in rows:
            p = self.probability(row)
            probabilities = {"true": p, "false": 1 - p}
            if self.low <= p < self.high:
                out.append(Verdict(label=None, abstained=True, probabilities=probabilities))
            else:
                label = p >= self.high
                out.append(Verdict(label=label, confidence=p if label else 1 - p, probabilities=probabilities))
        return out

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "low": self.low, "high": self.high}

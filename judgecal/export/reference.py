"""A calibrated judge's reference sample, and the check of new rows against it.

The bundle keeps a :class:`~judgecal.stats.shift.ReferenceSketch` of the test rows of its
calibration (rows the judge was not fitted on, from the same data, with the judge's
honest probabilities on them); :func:`check_rows` sketches the rows being judged the same
way and runs the two-sample test. A bundle saved before sketches existed has none, and
then there is nothing to compare with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from judgecal.data.rows import LabeledRow
from judgecal.judges.verdict import Verdict, answer_key
from judgecal.stats.shift import ReferenceSketch, ShiftCheck, compare_with_reference, sketch_rows
from judgecal.tasks.spec import TaskSpec

NO_REFERENCE = (
    "this judge was saved without a sample of its calibration rows (an older bundle), so whether these rows are "
    "like them is not checked"
)


def reference_sketch(
    rows: Sequence[LabeledRow], verdicts: Sequence[Verdict], spec: TaskSpec, *, source: str, seed: int = 0
) -> dict[str, Any]:
    """The bundle's ``reference``: a sketch of ``rows`` with the judge's ``verdicts`` on them."""
    return sketch_of(rows, verdicts, spec, source=source, seed=seed).model_dump(mode="json")


def sketch_of(
    rows: Sequence[LabeledRow], verdicts: Sequence[Verdict], spec: TaskSpec, *, source: str, seed: int = 0
) -> ReferenceSketch:
    if len(rows) != len(verdicts):
        raise ValueError(f"{len(rows)} rows but {len(verdicts)} verdicts")
    return sketch_rows(
        _json_inputs(rows),
        [verdict.probabilities for verdict in verdicts],
        fields=list(spec.input_names),
        labels=[answer_key(label) for label in spec.labels],
        source=source,
        seed=seed,
    )


def check_rows(
    reference: dict[str, Any] | None, rows: Sequence[LabeledRow], verdicts: Sequence[Verdict], spec: TaskSpec
) -> ShiftCheck | None:
    """The two-sample test of ``rows`` (with the judge's ``verdicts``) against the bundle's
    reference sketch; None when the bundle has none."""
    if reference is None:
        return None
    sketch = ReferenceSketch.model_validate(reference)
    new = sketch_rows(
        _json_inputs(rows),
        [verdict.probabilities for verdict in verdicts],
        fields=sketch.fields,
        labels=sketch.labels,
        n_features=sketch.n_features,
        source="rows being judged",
    )
    return compare_with_reference(sketch, new)


def _json_inputs(rows: Sequence[LabeledRow]) -> list[dict[str, Any]]:
    """Each row's inputs as JSON values: a conversation's turns are models, not text."""
    return [row.model_dump(mode="json", include={"inputs"})["inputs"] for row in rows]

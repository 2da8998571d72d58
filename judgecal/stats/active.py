"""Which rows to label next: Poisson sampling with known inclusion probabilities.

Row i is drawn for labelling independently with probability π_i, and Σ π_i is the
budget (the number of labels expected). Because every π_i is known and above zero, the
rate people would give the whole judged set can be estimated without bias from the rows
actually labelled, however the π were chosen (:func:`judgecal.stats.estimate.active_rate`,
active inference, Zrnic & Candès 2024). The strategies differ only in the π:

- ``uncertainty``: π ∝ √(p(1−p)), p the judge's P(positive). p(1−p) is the expected
  squared error of a calibrated probability, and sampling proportionally to the square
  root of a unit's variance is Neyman's variance-optimal allocation. Mixed with uniform
  (``mix``, default 0.2) so that every row keeps a chance of budget·mix/N: a judge sure
  and wrong about a row can still be found out.
- ``stratified``: Neyman allocation over strata of the judge's verdict (yes / no /
  abstained) within each group: π ∝ the stratum's √(mean p(1−p)).
- ``uniform``: budget/N for every row.

π is clipped to [10⁻³, 1]; what clipping takes from a row is handed back to the others
so that Σ π stays the budget.

**Rows, not whole prompts, are drawn by default.** The estimate is of these N judged
rows, and rows drawn independently make it unbiased with a variance in which prompts do
not enter. Drawing whole prompts (``by="group"``: one π per prompt, all its rows labelled
together) is allowed, but the estimate then rests on the few prompts drawn (about 6 of
100 for 300 labels over prompts of 50 rows) and its interval is 1.8 times as wide with a
calibrated judge, 4.4 times with one that over-selects (the simulation in
``tests/stats/test_active.py``). What keeps one prompt from taking the budget is the stratified strategy's
strata (verdict within group) and, for any strategy, the record of each group's expected
labels (``LabellingDesign.expected_by_group``), which ``judgecal label-next`` reports.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from judgecal.data.judged import JudgedRow
from judgecal.data.rows import DataError

Strategy = Literal["uncertainty", "stratified", "uniform"]
DrawnBy = Literal["row", "group"]
FLOOR = 1e-3
"""No row's π is below this: every row keeps a chance, and no label weighs more than 1,000 rows."""
DESIGN_SCHEMA = 1


def uncertainty(probability: np.ndarray) -> np.ndarray:
    """√(p(1−p)): the standard deviation of a calibrated P(positive)'s error, Neyman's weight."""
    p = np.asarray(probability, dtype=float)
    return np.sqrt(np.clip(p * (1 - p), 0, None))


def inclusion_probabilities(
    probability: np.ndarray | None,
    budget: float,
    strategy: Strategy = "uncertainty",
    *,
    mix: float = 0.2,
    strata: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    by: DrawnBy = "row",
    floor: float = FLOOR,
) -> np.ndarray:
    """π per row, Σ π = ``budget`` (rows labelled, in expectation). With ``by="group"``
    the rows of a group share one π: the group is drawn whole. ``probability`` may be
    None for ``uniform`` only, with ``groups`` given; ``strata`` are the stratified
    strategy's (verdict in group)."""
    if probability is not None:
        n = len(probability)
    elif groups is not None:
        n = len(groups)
    else:
        raise ValueError("pass the judge's probabilities or the rows' groups: the rows are counted from them")
    if strategy != "uniform" and probability is None:
        raise ValueError(f"the {strategy} strategy needs the judge's probability on every row")
    if not 0 <= mix <= 1:
        raise ValueError(f"mix is a share between 0 and 1, got {mix}")
    weight = np.ones(n) if probability is None else uncertainty(probability)
    if strategy == "stratified":
        weight = _stratum_weights(weight, strata if strata is not None else ["all"] * n)
    if by == "group":
        if groups is None:
            raise ValueError("drawing whole groups needs the group of every row")
        _, inverse = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
        sizes = np.bincount(inverse).astype(float)
        per_group = np.bincount(inverse, weights=weight) / sizes  # a group weighs its rows' mean
        return _scaled(per_group, sizes, budget, strategy, mix, floor)[inverse]
    return _scaled(weight, np.ones(n), budget, strategy, mix, floor)


def _stratum_weights(weight: np.ndarray, strata: Sequence[str]) -> np.ndarray:
    """Each row gets its stratum's S_h = √(mean p(1−p)), Neyman's per-unit allocation."""
    _, inverse = np.unique(np.asarray(strata, dtype=str), return_inverse=True)
    mean_square = np.bincount(inverse, weights=weight**2) / np.bincount(inverse)
    return np.sqrt(mean_square)[inverse]


def _scaled(
    weight: np.ndarray, sizes: np.ndarray, budget: float, strategy: Strategy, mix: float, floor: float
) -> np.ndarray:
    """π per unit from weights, Σ π·size = budget, each in [floor, 1]."""
    total = float(sizes.sum())
    if budget >= total:
        return np.ones(len(weight))
    uniform = np.full(len(weight), budget / total)
    if strategy == "uniform" or float(np.sum(weight * sizes)) == 0:
        return np.clip(uniform, floor, 1)
    active = weight * budget / float(np.sum(weight * sizes))
    pi = (1 - mix) * active + mix * uniform if strategy == "uncertainty" else active
    for _ in range(100):  # what clipping takes or adds is handed back to the rows still free
        pi = np.clip(pi, floor, 1)
        spare = budget - float(np.sum(pi * sizes))
        free = (pi < 1) if spare > 0 else (pi > floor)
        if abs(spare) < 1e-9 or not free.any():
            break
        pi[free] += spare * pi[free] / float(np.sum(pi[free] * sizes[free]))
    return np.clip(pi, floor, 1)


def draw(pi: np.ndarray, seed: int, groups: Sequence[str] | None = None) -> np.ndarray:
    """ξ per row: drawn with probability π, independently per row (or per group, all its
    rows together when ``groups`` is given). The same seed draws the same rows."""
    rng = np.random.default_rng(seed)
    if groups is None:
        return rng.uniform(size=len(pi)) < pi
    _, first, inverse = np.unique(np.asarray(groups, dtype=str), return_index=True, return_inverse=True)
    return (rng.uniform(size=len(first)) < pi[first])[inverse]


class DrawnRow(BaseModel):
    """A row drawn for labelling and the probability it had of being drawn."""

    model_config = ConfigDict(frozen=True)

    id: str
    group: str
    inclusion_probability: float = Field(gt=0, le=1)


class LabellingDesign(BaseModel):
    """How the rows to label were drawn: all an unbiased estimate needs beside the labels
    (``next.design.json``)."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = DESIGN_SCHEMA
    strategy: Strategy
    by: DrawnBy
    budget: float = Field(description="Rows to label, in expectation, asked for.")
    mix: float
    seed: int
    floor: float = FLOOR
    source: str = Field(description="The file of judged rows the draw was made from.")
    source_digest: str = Field(description="sha256 of that file's bytes; an estimate refuses any other file.")
    rows: int = Field(description="Judged rows in that file: the N whose rate is estimated.")
    labelled_before: list[str] = Field(
        default_factory=list, description="Rows of the file labelled before this draw: in the estimate with π = 1."
    )
    expected_labels: float = Field(description="Σ π over the rows not labelled before (the budget once clipped).")
    expected_by_group: dict[str, float] = Field(
        default_factory=dict, description="Σ π over each group's rows: how the labels spread over prompts."
    )
    drawn: list[DrawnRow]


def choose_rows_to_label(
    judged: Sequence[JudgedRow],
    budget: float,
    strategy: Strategy = "uncertainty",
    *,
    mix: float = 0.2,
    seed: int = 0,
    by: DrawnBy = "row",
    labelled: Iterable[str] = (),
    source: str = "",
    source_digest: str = "",
) -> LabellingDesign:
    """Draw the rows to label next from ``judged``, leaving out ``labelled`` ids (they
    enter the estimate with π = 1), and return the design that records every drawn row's
    π. Uncertainty and stratified sampling need every row's probability."""
    if budget <= 0:
        raise ValueError(f"the budget is a number of rows to label, above 0; got {budget}")
    done = set(labelled)
    candidates = [row for row in judged if row.id not in done]
    if not candidates:
        raise ValueError("every judged row is labelled already; nothing is left to draw")
    if strategy != "uniform":
        missing = next((row for row in candidates if row.probability is None), None)
        if missing is not None:
            raise DataError(
                f"the {strategy} strategy needs the judge's probability on every row; use the uniform strategy, "
                "or judge the rows with a judge that gives one",
                path=source or None,
                line=missing.line,
                field="probability",
            )
    groups = [row.group or "-" for row in candidates]
    probability = None if strategy == "uniform" else np.array([row.probability for row in candidates], dtype=float)
    pi = inclusion_probabilities(
        probability, budget, strategy, mix=mix, strata=[_stratum(row) for row in candidates], groups=groups, by=by
    )
    chosen = draw(pi, seed, groups if by == "group" else None)
    return LabellingDesign(
        strategy=strategy,
        by=by,
        budget=budget,
        mix=mix,
        seed=seed,
        source=source,
        source_digest=source_digest,
        rows=len(judged),
        labelled_before=sorted(done & {row.id for row in judged}),
        expected_labels=float(pi.sum()),
        expected_by_group=_sums_by_group(groups, pi),
        drawn=[
            DrawnRow(id=row.id, group=group, inclusion_probability=float(p))
            for row, group, p, taken in zip(candidates, groups, pi, chosen, strict=True)
            if taken
        ],
    )


def _sums_by_group(groups: Sequence[str], pi: np.ndarray) -> dict[str, float]:
    totals: dict[str, float] = {}
    for group, p in zip(groups, pi, strict=True):
        totals[group] = totals.get(group, 0.0) + float(p)
    return {group: round(total, 6) for group, total in sorted(totals.items())}


def _stratum(row: JudgedRow) -> str:
    """The stratified strategy's stratum: the judge's verdict (or 'abstained') in its group."""
    verdict = "abstained" if row.abstained else repr(row.verdict)
    return f"{row.group or '-'}\x1f{verdict}"


def read_design(path: Path) -> LabellingDesign:
    """A design file as ``judgecal label-next`` wrote it; a bad one stops naming its field."""
    if not path.exists():
        raise DataError("no such design file (judgecal label-next writes it beside its --output)", path=path)
    try:
        return LabellingDesign.model_validate_json(path.read_bytes())
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        raise DataError(first["msg"], path=path, field=field) from None

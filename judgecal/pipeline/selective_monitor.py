"""What a selective judge's monitor follows beside its agreement: the precision of each
verdict its band gives, against the target the band guarantees for it, and its coverage,
against the low end of the coverage it had on its test rows.

Pooled agreement over the rows answered can hide one verdict going wrong: when people
agree with a judge's few 'true' verdicts half of the time instead of 0.8, while its many
'false' verdicts stay right, its pooled agreement moves by a few points. So each of these quantities is a confidence
sequence of its own (:mod:`judgecal.stats.sequential`), one observation per group, and
the monitor's alpha is split evenly over all its sequences, agreement included
(Bonferroni): the chance that any of them ever raises a false alarm stays at most alpha.
Coverage raises the alarm too: a band answering clearly fewer rows than on its test rows
means the rows moved away from those its guarantee was given for, and people are sent
more rows than planned.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from judgecal.data.rows import LabeledRow
from judgecal.export.bundle import JudgeBundle
from judgecal.judges.verdict import Verdict, answer_key
from judgecal.stats.sequential import confidence_sequence, grid_with, selective_observations

COVERAGE = "coverage"
PRECISION = "precision."


class Followed(BaseModel):
    """One quantity a selective judge's monitor follows with a sequence of its own, and the
    level its upper bound is checked against (fixed when the monitor starts)."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="'precision.<verdict>' or 'coverage'; its MLflow metrics are sequence.<name>.*.")
    level: float
    level_source: str

    @property
    def verdict(self) -> str | None:
        return self.name.removeprefix(PRECISION) if self.name.startswith(PRECISION) else None

    @property
    def words(self) -> str:
        return "its coverage" if self.verdict is None else f"the precision of its '{self.verdict}' verdicts"


class SequenceStep(BaseModel):
    """A followed sequence after one batch: the batch's observations, and the running mean
    and anytime-valid bounds over every batch so far (no observation yet: no mean, the
    bounds at 0 and 1)."""

    observations: list[float]
    mean: float | None
    lower: float
    upper: float


def given_targets(bundle: JudgeBundle) -> dict[str, float]:
    """The precision target of each verdict a selective judge's band gives, as its
    evaluation records them, else as its band states them (a bundle saved without an
    evaluation). A verdict the band never gives holds its target vacuously and is never
    observed, so it is left out."""
    recorded = ((bundle.evaluation or {}).get("selective") or {}).get("targets")
    if recorded:
        return {
            t["verdict"]: float(t["target"]) for t in recorded if "target" in t and t.get("status") != "never given"
        }
    state = bundle.judge
    if state.get("kind") != "selective" or not state.get("band"):
        return {}
    targets = state["guarantee"]["precision"]
    return {a["verdict"]: float(targets[a["verdict"]]) for a in state["band"]["answers"] if a["threshold"] is not None}


def followed_quantities(bundle: JudgeBundle) -> list[Followed]:
    """Each verdict's precision, against its target, then coverage, against the low end of
    the 95% interval of its coverage on its test rows (not the point estimate: a band as
    good as its test rows showed would sit below that half of the time). Coverage is
    reported, not followed, when the bundle records no interval for it: none recorded, or
    one of no width (every test row answered: a level of 1.0 would make any abstention an
    alarm sooner or later)."""
    followed = [
        Followed(name=f"{PRECISION}{verdict}", level=target, level_source="the precision its band guarantees for it")
        for verdict, target in given_targets(bundle).items()
    ]
    coverage = ((bundle.evaluation or {}).get("selective") or {}).get("coverage") or {}
    low, high = coverage.get("low"), coverage.get("high")
    if low is not None and high is not None and np.isfinite(low) and 0 < low < high:
        source = (
            f"the low end of the 95% interval of its coverage on its test rows ({coverage['value']:.3f} "
            f"[{low:.3f}, {coverage['high']:.3f}])"
        )
        followed.append(Followed(name=COVERAGE, level=float(low), level_source=source))
    return followed


def followed_observations(
    followed: Sequence[Followed], rows: Sequence[LabeledRow], verdicts: Sequence[Verdict]
) -> dict[str, list[float]]:
    """One batch's observations for each followed sequence, one per group. Rows the judge
    abstained on are not answered; a row it failed on is answered (as the batch's coverage
    counts it) but gave no verdict whose precision is followed."""
    said = [None if v.abstained else ("" if v.label is None else answer_key(v.label)) for v in verdicts]
    human = [answer_key(row.label) for row in rows]
    given = [q.verdict for q in followed if q.verdict is not None]
    observed = selective_observations(said, human, [row.group for row in rows], given)
    return {q.name: observed[q.name] for q in followed}


def follow(
    followed: Sequence[Followed],
    before: Sequence[dict[str, SequenceStep]],
    observed: dict[str, list[float]],
    alpha: float,
) -> dict[str, SequenceStep]:
    """Each followed sequence after this batch: ``before``, the steps of the batches so far,
    give its earlier observations; its bounds at ``alpha`` (its share of the monitor's)."""
    steps = {}
    for quantity in followed:
        earlier = [x for batch in before if quantity.name in batch for x in batch[quantity.name].observations]
        x = earlier + observed[quantity.name]
        bounds = confidence_sequence(x, alpha=alpha, grid=grid_with(quantity.level))
        steps[quantity.name] = SequenceStep(
            observations=observed[quantity.name],
            mean=bounds.mean[-1] if x else None,
            lower=bounds.lower[-1] if x else 0.0,
            upper=bounds.upper[-1] if x else 1.0,
        )
    return steps


def fallen(followed: Sequence[Followed], steps: dict[str, SequenceStep]) -> list[Followed]:
    """The followed quantities whose upper bound is below their level after ``steps``."""
    return [q for q in followed if q.name in steps and steps[q.name].upper < q.level]

"""Systematic ways a judge departs from humans, measured the same way for both.

Each bias is a rate for the judge beside the same rate for the human labels, so a
report can say "the judge selects 2.4× as often as people" or "picks the first response
71% of the time where people pick it 45%".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy.stats import spearmanr


class BiasMeasure(BaseModel):
    """A rate for the judge beside the same rate for humans."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    judge: float
    human: float | None
    rows: int

    @property
    def gap(self) -> float | None:
        return None if self.human is None else self.judge - self.human


def selection_bias(human: Sequence[bool], verdicts: Sequence[bool | None]) -> list[BiasMeasure]:
    """Over-selection on a yes/no task: how often the judge says yes vs how often people do."""
    judge_rate = float(np.mean([v is True for v in verdicts]))
    human_rate = float(np.mean([bool(h) for h in human]))
    measures = [
        BiasMeasure(
            name="selected_rate",
            description="share of rows the judge marks positive",
            judge=judge_rate,
            human=human_rate,
            rows=len(human),
        ),
    ]
    if human_rate > 0:
        measures.append(
            BiasMeasure(
                name="selected_ratio",
                description="judge's positive rate / human rate",
                judge=judge_rate / human_rate,
                human=1.0,
                rows=len(human),
            )
        )
    return measures


def position_bias(
    human: Sequence[str], verdicts: Sequence[str | None], swapped: Sequence[str | None] | None
) -> list[BiasMeasure]:
    """First-position preference, and verdicts that change when the responses swap."""
    n = len(human)
    measures = [
        BiasMeasure(
            name="first_position_rate",
            description="share of pairs where the first response wins",
            judge=float(np.mean([v == "A" for v in verdicts])),
            human=float(np.mean([h == "A" for h in human])),
            rows=n,
        ),
    ]
    if swapped is not None:
        flips = [
            o is not None and s is not None and {"A": "B", "B": "A"}.get(s, s) != o
            for o, s in zip(verdicts, swapped, strict=True)
        ]
        first_both = [o == "A" and s == "A" for o, s in zip(verdicts, swapped, strict=True)]
        measures += [
            BiasMeasure(
                name="order_flip_rate",
                description="share of pairs whose verdict changes when swapped",
                judge=float(np.mean(flips)),
                human=None,
                rows=n,
            ),
            BiasMeasure(
                name="first_in_both_orders",
                description="share of pairs where the first response wins in both orders (pure position preference)",
                judge=float(np.mean(first_both)),
                human=None,
                rows=n,
            ),
        ]
    return measures


def personalization_bias(
    human: Sequence[str], verdicts: Sequence[str | None], personalized: Sequence[str | None]
) -> list[BiasMeasure]:
    """Preference for the personalized response (rows say which one it is: "A" or "B")."""
    kept = [(h, v, p) for h, v, p in zip(human, verdicts, personalized, strict=True) if p in ("A", "B")]
    if not kept:
        return []
    return [
        BiasMeasure(
            name="prefers_personalized",
            description="share of pairs where the personalized response wins",
            judge=float(np.mean([v == p for _, v, p in kept])),
            human=float(np.mean([h == p for h, _, p in kept])),
            rows=len(kept),
        )
    ]


def verbosity_bias(
    human: Sequence[str], verdicts: Sequence[str | None], length_a: Sequence[int], length_b: Sequence[int]
) -> list[BiasMeasure]:
    """Preference for the longer response, and how verdicts follow the length difference."""
    decided = [(h, v, a, b) for h, v, a, b in zip(human, verdicts, length_a, length_b, strict=True) if a != b]
    if not decided:
        return []

    def longer(label: Any, a: int, b: int) -> bool:
        return (label == "A" and a > b) or (label == "B" and b > a)

    def score(label: Any) -> float:
        return {"A": 1.0, "B": -1.0}.get(label, 0.0)

    measures = [
        BiasMeasure(
            name="prefers_longer",
            description="share of unequal-length pairs where the longer one wins",
            judge=float(np.mean([longer(v, a, b) for _, v, a, b in decided])),
            human=float(np.mean([longer(h, a, b) for h, _, a, b in decided])),
            rows=len(decided),
        ),
    ]
    difference = np.array([a - b for _, _, a, b in decided], dtype=float)
    judge_scores = np.array([score(v) for _, v, _, _ in decided])
    human_scores = np.array([score(h) for h, _, _, _ in decided])
    if np.ptp(judge_scores) > 0 and np.ptp(human_scores) > 0 and np.ptp(difference) > 0:
        measures.append(
            BiasMeasure(
                name="length_correlation",
                description="Spearman ρ between length(A) − length(B) and the verdict (A=+1, tie=0, B=−1)",
                judge=float(spearmanr(difference, judge_scores).statistic),
                human=float(spearmanr(difference, human_scores).statistic),
                rows=len(decided),
            )
        )
    return measures

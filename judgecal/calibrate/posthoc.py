"""Post-hoc strategies: they keep the judge and change how its answer is read.

:class:`ThresholdJudge` cuts the judge's P(positive) where κ is highest (``threshold``) or
where it selects as often as people do (``base_rate``); :class:`OrderSwapJudge` judges
both orders of a pair and reconciles them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from judgecal.data.rows import LabeledRow
from judgecal.judges.features import FLIP
from judgecal.judges.fitted import FittedJudge, MemoJudge, ProgramJudge, StateLoader, positive_probability, unwrap
from judgecal.judges.program import JudgeProgram
from judgecal.judges.verdict import Verdict
from judgecal.stats.metrics import kappa_from_confusion

EPSILON = 1e-3


def kappa_threshold(probability: np.ndarray, positive: np.ndarray) -> float:
    """The cut on P(positive) that maximises Cohen's κ on these rows. Candidates are the
    midpoints between observed probabilities; among equal κ the widest gap wins."""
    values = np.unique(np.asarray(probability, dtype=float))
    edges = np.concatenate([[values[0] - EPSILON], values, [values[-1] + EPSILON]])
    candidates = (edges[:-1] + edges[1:]) / 2
    gaps = edges[1:] - edges[:-1]
    y = np.asarray(positive, dtype=bool)
    p = np.asarray(probability, dtype=float)
    picked = p[None, :] >= candidates[:, None]
    true_pos = (picked & y).sum(axis=1)
    false_pos = (picked & ~y).sum(axis=1)
    false_neg = (~picked & y).sum(axis=1)
    true_neg = (~picked & ~y).sum(axis=1)
    matrices = np.stack([np.stack([true_pos, false_neg], -1), np.stack([false_pos, true_neg], -1)], -2)
    cms = np.zeros((len(candidates), 3, 3))
    cms[:, :2, :2] = matrices
    scores = np.nan_to_num(kappa_from_confusion(cms), nan=-np.inf)
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    return float(candidates[best[np.argmax(gaps[best])]])


def base_rate_threshold(probability: np.ndarray, positive: np.ndarray) -> float:
    """The cut that selects the same share of rows as humans marked positive."""
    rate = float(np.mean(positive))
    if rate <= 0:
        return float(np.max(probability)) + EPSILON
    return float(np.quantile(np.asarray(probability, dtype=float), 1 - rate, method="higher"))


RULES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "kappa": kappa_threshold,
    "base_rate": base_rate_threshold,
}


class ThresholdJudge(FittedJudge):
    """Reads a binary judge's P(positive) against a cut: the κ-maximising one (``rule =
    "kappa"``) or the one selecting the human rate (``"base_rate"``), chosen on dev when
    given, else on the rows it is fitted on (the judge itself learns nothing from them)."""

    kind = "threshold"

    def __init__(self, base: FittedJudge | None = None, rule: str = "kappa") -> None:
        self.base = base
        self.rule = rule

    def fit(self, train, dev=None):
        assert self.base is not None
        rows = dev or train
        self.base_, p = _scored_base(self.base, rows)
        positive = np.array([row.label == self.task.spec.positive for row in rows])
        self.threshold_ = RULES[self.rule](p, positive)
        return self

    def predict(self, rows, *, progress=None, description=""):
        base = self.base_.predict(rows, progress=progress, description=description)
        p = positive_probability(base, self.task)
        positive, negative = self.task.spec.positive, self.task.spec.negative
        out = []
        for verdict, probability in zip(base, p, strict=True):
            if verdict.label is None:
                out.append(verdict)
                continue
            label = positive if probability >= self.threshold_ else negative
            out.append(
                Verdict(
                    label=label,
                    confidence=probability if label == positive else 1 - probability,
                    probabilities=verdict.probabilities,
                )
            )
        return out

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "rule": self.rule, "threshold": self.threshold_, "base": self.base_.state()}

    @classmethod
    def from_state(cls, state: dict[str, Any], loader: StateLoader) -> ThresholdJudge:
        """The saved cut on the saved base judge (the one it was chosen for)."""
        judge = cls(base=loader.judge(state["base"]), rule=state.get("rule", "kappa"))
        judge.base_, judge.threshold_ = judge.base, float(state["threshold"])
        return judge


def _scored_base(base: FittedJudge, rows: Sequence[LabeledRow]) -> tuple[FittedJudge, np.ndarray]:
    """The judge's P(positive) on ``rows``. A live judge whose backend gives no token
    probabilities is swapped for the same program stating a 0–100 score."""
    verdicts = base.predict(rows, description="threshold: scoring")
    raw = unwrap(base)
    if isinstance(raw, ProgramJudge) and all(v.probabilities is None for v in verdicts):
        program = JudgeProgram(raw.task.signature, verbalized=True)
        stated = ProgramJudge(raw.task, program, raw.lm, raw.name, num_threads=raw.num_threads)
        base = MemoJudge(stated)
        verdicts = base.predict(rows, description="threshold: stated scores")
    return base, positive_probability(verdicts, raw.task)


class OrderSwapJudge(FittedJudge):
    """Pairwise: judges both orders and reconciles. With probabilities, the two
    distributions are averaged (A in one order is B in the other); without, a
    disagreement becomes a tie."""

    kind = "order_swap"

    def __init__(self, base: FittedJudge | None = None) -> None:
        self.base = base

    def predict(self, rows, *, progress=None, description=""):
        assert self.base is not None
        first = self.base.predict(rows, progress=progress, description=description)
        second = self.base.predict_swapped(rows, progress=progress, description=description + " (swapped)")
        out = []
        for one, two in zip(first, second, strict=True):
            if one.label is None or two.label is None:
                out.append(one if two.label is None else Verdict(label=FLIP.get(str(two.label), two.label)))
                continue
            if one.probabilities and two.probabilities:
                merged = {
                    key: (one.probabilities.get(key, 0.0) + two.probabilities.get(FLIP.get(key, key), 0.0)) / 2
                    for key in one.probabilities
                }
                label = max(merged, key=merged.__getitem__)
                out.append(Verdict(label=label, confidence=merged[label], probabilities=merged))
            else:
                agreed = FLIP.get(str(two.label), two.label) == one.label
                out.append(Verdict(label=one.label if agreed else "tie"))
        return out

    def state(self) -> dict[str, Any]:
        assert self.base is not None
        return {"kind": self.kind, "base": self.base.state()}

    @classmethod
    def from_state(cls, state: dict[str, Any], loader: StateLoader) -> OrderSwapJudge:
        return cls(loader.judge(state["base"]))

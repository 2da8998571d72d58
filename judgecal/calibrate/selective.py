"""A judge that abstains where it is unsure, with a guarantee on the verdicts it gives.

:class:`SelectiveJudge` wraps a fitted judge that states probabilities. Fitted on
calibration rows (rows its base was neither fitted nor selected on), it chooses the band
where it abstains (:mod:`judgecal.stats.selective`: Learn then Test with MAPIE, one family
of tests per verdict) so that each verdict it gives reaches its precision target with
probability at least 1 - delta. Outside the band it answers as its base's probability
says; inside, it abstains: ``Verdict(label=None, abstained=True)``, an answer, not an
error. Its state holds the band, the targets and the rows it was chosen on, so a saved
bundle's digest covers them. With few groups, :meth:`SelectiveJudge.fit_out_of_fold`
chooses the band on cross-fitted scores of the base's own fitting rows instead
(approximate: see docs/selective.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from judgecal.data.rows import LabeledRow
from judgecal.data.split import sample_across_groups
from judgecal.judges.fitted import FittedJudge, StateLoader, label_probabilities, positive_probability
from judgecal.judges.verdict import Verdict, answer_key
from judgecal.stats.ltt import Procedure
from judgecal.stats.selective import (
    BandChoice,
    GroupsMode,
    binary_answers,
    candidate_thresholds,
    choose_binary_band,
    choose_label_band,
    label_answers,
)

# Rows of the base's fitting rows whose scores place the candidate thresholds.
CANDIDATE_ROWS = 300


class NoProbabilitiesError(ValueError):
    """The judge gives verdicts without probabilities, so no band can be drawn on them."""


def rows_fingerprint(rows: Sequence[LabeledRow]) -> str:
    """``sha256:`` of the rows' sorted ids, one per line (as the gate rows' fingerprint)."""
    return "sha256:" + hashlib.sha256("\n".join(sorted(row.id for row in rows)).encode()).hexdigest()


class SelectiveJudge(FittedJudge):
    """A prefitted ``base`` judge with a band where it abstains, chosen by :meth:`fit` on
    calibration rows. ``precision``: the target per verdict, keyed as verdicts are spelled
    in JSON (``{"true": 0.7, "false": 0.95}``, ``{"A": 0.9, "B": 0.9, "tie": 0.6}``);
    ``delta``: the guarantee holds with probability at least 1 - delta; ``groups``:
    ``"design_effect"`` (rows of one group are not independent: approximate, for rows of
    new groups) or ``"independent"`` (finite-sample, for rows drawn like the calibration
    rows); ``allow_never``: a verdict no threshold passes for may be never given;
    ``procedure``: the test over each verdict's candidate thresholds, ``"holm"`` or
    ``"fixed-sequence"`` (most confident first, from ``starts`` equally spaced starts)."""

    kind = "selective"

    def __init__(
        self,
        base: FittedJudge | None = None,
        precision: dict[str, float] | None = None,
        delta: float = 0.1,
        groups: GroupsMode = "design_effect",
        allow_never: bool = False,
        procedure: Procedure = "holm",
        starts: int = 1,
    ) -> None:
        self.base = base
        self.precision = precision
        self.delta = delta
        self.groups = groups
        self.allow_never = allow_never
        self.procedure = procedure
        self.starts = starts

    @property
    def keys(self) -> list[str]:
        return [answer_key(label) for label in self.task.spec.labels]

    def fit(self, calibration: Sequence[LabeledRow], fitting: Sequence[LabeledRow] | None = None) -> SelectiveJudge:
        """Choose the band on ``calibration`` rows (labelled, never seen by the base). The
        candidate thresholds are quantiles of the base's scores on ``fitting`` rows (any
        rows that are not calibration rows: its fitting rows; up to 300, drawn across
        groups), or a fixed grid without them."""
        assert self.base is not None, "a selective judge wraps a fitted base judge"
        self._targets()  # a target the task cannot have is refused before any row is judged
        verdicts = self.base.predict(calibration, description="selective: scoring calibration rows")
        others = None
        if fitting:
            sample = sample_across_groups(list(fitting), CANDIDATE_ROWS, seed=0)
            scored = [v for v in self.base.predict(sample, description="selective: placing thresholds")]
            scored = [v for v in scored if v.label is not None]
            others = self._top(self._scores(scored)) if scored else None
        return self._choose(calibration, verdicts, others, folds=None)

    def fit_out_of_fold(self, rows: Sequence[LabeledRow], verdicts: Sequence[Verdict], folds: int) -> SelectiveJudge:
        """Choose the band on cross-fitted ``verdicts``: each row's verdict from the base's
        strategy fitted on the other grouped folds of ``rows`` (never on the row's group),
        while ``base`` is fitted on all of them. The candidate thresholds are quantiles of
        these scores (their labels are not read for them). Approximate: the band is tested
        on the fold judges' scores and applied to ``base``."""
        assert self.base is not None, "a selective judge wraps a fitted base judge"
        scored = [v for v in verdicts if v.label is not None]
        others = self._top(self._scores(scored)) if scored else None
        return self._choose(rows, verdicts, others, folds=folds)

    def _choose(
        self,
        rows: Sequence[LabeledRow],
        verdicts: Sequence[Verdict],
        others: np.ndarray | None,
        *,
        folds: int | None,
    ) -> SelectiveJudge:
        """The band on ``rows`` judged as ``verdicts`` (rows without a verdict left out),
        candidates placed by ``others``' scores; ``folds``: the verdicts are out-of-fold
        ones of that many grouped folds (None: calibration rows of a split)."""
        targets = self._targets()
        kept = [(row, v) for row, v in zip(rows, verdicts, strict=True) if v.label is not None]
        answered_rows, answered = [row for row, _ in kept], [v for _, v in kept]
        if not answered_rows:
            raise ValueError(
                f"no calibration row got a verdict from '{self.name}' ({len(rows)} rows), so no band can be "
                "chosen; see why its verdicts failed"
            )
        scores = self._scores(answered)
        self._refuse_without_probabilities(scores)
        settings = {
            "targets": targets,
            "delta": self.delta,
            "groups_mode": self.groups,
            "allow_never": self.allow_never,
            "procedure": self.procedure,
            "starts": self.starts,
            "candidates": candidate_thresholds(others),
            "fingerprint": rows_fingerprint(answered_rows),
            "folds": folds,
        }
        groups = [row.group for row in answered_rows]
        spec = self.task.spec
        if spec.positive is not None:
            keys = (answer_key(spec.positive), answer_key(spec.negative))
            positive = [row.label == spec.positive for row in answered_rows]
            self.choice_ = choose_binary_band(scores, positive, groups, keys=keys, **settings)
        else:
            y = [spec.labels.index(row.label) for row in answered_rows]
            families = label_families(spec.labels, spec.is_pairwise)
            self.choice_ = choose_label_band(scores, y, groups, keys=self.keys, families=families, **settings)
        self.base_ = self.base
        return self

    def _targets(self) -> dict[str, float]:
        """The targets, one per verdict of the task, each strictly between 0 and 1."""
        keys = self.keys
        given = dict(self.precision or {})
        if set(given) != set(keys):
            raise ValueError(
                f"precision: give a target for each verdict of the task ({', '.join(keys)}), e.g. "
                + "{"
                + ", ".join(f"{key} = 0.9" for key in keys)
                + "}; got "
                + ("{" + ", ".join(map(str, given)) + "}" if given else "none")
            )
        for key, value in given.items():
            if not 0 < float(value) < 1:
                raise ValueError(f"precision.{key}: expected a share strictly between 0 and 1, got {value!r}")
        return {key: float(given[key]) for key in keys}

    def _scores(self, verdicts: Sequence[Verdict]) -> np.ndarray:
        """P(positive) per verdict (binary tasks), else P(each label)."""
        if self.task.spec.positive is not None:
            return positive_probability(verdicts, self.task)
        return label_probabilities(verdicts, self.task)

    def _top(self, scores: np.ndarray) -> np.ndarray:
        """The score a threshold is drawn on: P(positive), or the most likely label's probability."""
        return scores if scores.ndim == 1 else scores.max(axis=1)

    def _refuse_without_probabilities(self, scores: np.ndarray) -> None:
        top = self._top(scores)
        if len(top) and np.all((top == 0) | (top == 1)):
            raise NoProbabilitiesError(
                f"selective judging needs probabilities; '{self.name}' gives 0/1 verdicts only: stack it "
                "(--strategy stacking) or give a probability per row"
            )

    def predict(self, rows, *, progress=None, description=""):
        verdicts = self.base_.predict(rows, progress=progress, description=description)
        return self.answer(verdicts)

    def answer(self, verdicts: Sequence[Verdict]) -> list[Verdict]:
        """The base's verdicts read through the band: a verdict where the band gives one, an
        abstention elsewhere; a verdict that failed stays as it was. Without a band (none
        met the targets), the base's verdicts as they are."""
        if not self.choice_.found or self.choice_.band is None:
            return list(verdicts)
        scores = self._scores(verdicts)
        thresholds = [answer.threshold for answer in self.choice_.band.answers]
        if self.task.spec.positive is not None:
            codes = binary_answers(scores, thresholds[1], thresholds[0])
            labels = [self.task.spec.negative, self.task.spec.positive]
        else:
            codes = label_answers(scores, thresholds)
            labels = list(self.task.spec.labels)
        out = []
        for verdict, code in zip(verdicts, codes, strict=True):
            if verdict.label is None:
                out.append(verdict)
            elif np.isnan(code):
                out.append(Verdict(label=None, abstained=True, probabilities=verdict.probabilities))
            else:
                label = labels[int(code)]
                confidence = verdict.probability_of(label)
                out.append(Verdict(label=label, confidence=confidence, probabilities=verdict.probabilities))
        return out

    def state(self) -> dict[str, Any]:
        if not self.choice_.found:
            raise ValueError(
                "no band met the selective targets, so this judge never abstains: save its base judge instead"
            )
        return {
            "kind": self.kind,
            "base": self.base_.state(),
            **self.choice_.model_dump(mode="json", exclude={"found"}),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], loader: StateLoader) -> SelectiveJudge:
        """The saved base judge and band; the targets and test are those the band was chosen
        with (a band saved before the test was recorded was chosen by Holm's procedure)."""
        guarantee = state["guarantee"]
        judge = cls(
            base=loader.judge(state["base"]),
            precision=dict(guarantee["precision"]),
            delta=float(guarantee["delta"]),
            groups=guarantee["groups"],
            allow_never=bool(guarantee["allow_never"]),
            procedure=guarantee.get("procedure") or "holm",
            starts=int(guarantee.get("starts") or 1),
        )
        fields = {key: value for key, value in state.items() if key not in ("kind", "base")}
        judge.choice_ = BandChoice.model_validate({**fields, "found": True})
        judge.base_ = judge.base
        return judge


def label_families(labels: Sequence[Any], pairwise: bool) -> list[list[int]]:
    """Which labels share a threshold: a pairwise task's A and B (so the judge stays
    symmetric when the responses are swapped), every other label on its own."""
    if pairwise:
        shared = [labels.index("A"), labels.index("B")]
        return [shared, *[[k] for k in range(len(labels)) if k not in shared]]
    return [[k] for k in range(len(labels))]

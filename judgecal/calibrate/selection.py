"""Scoring candidate judges without touching test, and choosing one.

Two rules, by what a candidate costs:

* **Cross-validation** for strategies that make no new LM calls when fitted (post-hoc
  cuts, verifiers, stacking; the raw judge's answers are computed once and kept): grouped
  K-fold over train + dev, so every score comes from prompts the judge was not fitted
  on. The score is the mean κ over folds with its standard error.
* **Dev hold-out** for strategies that call the model to fit (DSPy optimizers): fitted on
  train, scored on dev, in an order that interleaves groups so that any prefix of dev
  covers many of them (a pruner looking at a prefix sees a fair sample).

:func:`choose` picks the winner. Within a strategy, its default settings stand for it
unless the best of its tuned settings leads them by more than a one-sided paired t-test at
the level of one standard error allows, that level split among the tuned settings it was
the best of (:func:`tuned_bar`), its standard error corrected for the folds' shared training
rows (:func:`corrected_paired_se`). Across strategies, the best cross-validated candidate,
replaced by a simpler strategy whose score is within one standard error of it (the
one-standard-error rule: the plain standard error of their paired difference over the same
folds); a dev-scored candidate wins only when it beats that choice on the same dev rows by
more than one standard error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from judgecal.data.rows import LabeledRow, LabelValue
from judgecal.stats.metrics import LabelSpace, confusion, kappa_from_confusion, metrics_from_confusion
from judgecal.tasks.registry import Task

CV = "cv"


HOLDOUT = "dev"


def label_space(task: Task) -> LabelSpace:
    spec = task.spec
    return LabelSpace(labels=spec.labels, positive=spec.positive, ordinal=spec.is_ordinal)


def agreement(task: Task, human: Sequence[LabelValue], verdicts: Sequence[LabelValue | None]) -> float:
    """The selection metric: Cohen's κ (quadratic-weighted for ratings); a missing verdict
    is a disagreement."""
    space = label_space(task)
    cm = confusion(space.index(list(human)), space.index(list(verdicts)), space.size)
    if space.ordinal:
        return float(metrics_from_confusion(cm, space)["weighted_kappa"])
    return float(np.nan_to_num(kappa_from_confusion(cm)))


def row_scores(task: Task, rows: Sequence[LabeledRow], verdicts: Sequence[LabelValue | None]) -> np.ndarray:
    """Per-row class-balanced correctness: a right answer on a row of class y is worth
    1 / (K · share of y), so the mean over rows is balanced accuracy. These are the paired
    values the pruner compares between trials (their mean difference)."""
    labels = [row.label for row in rows]
    classes = len(task.spec.labels)
    shares = {label: labels.count(label) / len(labels) for label in set(labels)}
    return np.array(
        [
            1.0 / (classes * shares[row.label]) if verdict == row.label else 0.0
            for row, verdict in zip(rows, verdicts, strict=True)
        ]
    )


def interleaved(rows: Sequence[LabeledRow], seed: int = 0) -> list[int]:
    """Row indices taking one row from each group in turn (groups in a seeded order), so
    that every prefix spans as many groups as it can."""
    by_group: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        by_group.setdefault(row.group, []).append(index)
    queues = [by_group[g] for g in np.random.default_rng(seed).permutation(sorted(by_group))]
    order: list[int] = []
    depth = 0
    while len(order) < len(rows):
        order += [queue[depth] for queue in queues if depth < len(queue)]
        depth += 1
    return order


@dataclass
class SelectionScore:
    """How a candidate scored, by which rule, and its held-out verdicts (by row id)."""

    rule: str
    value: float
    se: float | None = None
    folds: list[float] | None = None
    predictions: dict[str, LabelValue | None] = field(default_factory=dict)
    probabilities: dict[str, list[float] | None] = field(default_factory=dict)

    def describe(self) -> str:
        if self.rule == CV:
            return f"{self.value:.3f} ± {self.se:.3f} (CV, {len(self.folds or [])} folds)"
        return f"{self.value:.3f} (dev)"


def cross_validate(
    fit: Callable[[Sequence[LabeledRow]], Any],
    task: Task,
    rows: Sequence[LabeledRow],
    folds: list[np.ndarray],
) -> SelectionScore:
    """κ of ``fit(rows outside the fold)`` on each fold's rows; mean and standard error."""
    values = []
    predictions: dict[str, LabelValue | None] = {}
    probabilities: dict[str, list[float] | None] = {}
    for held in folds:
        held_set = set(held.tolist())
        judge = fit([row for i, row in enumerate(rows) if i not in held_set])
        held_rows = [rows[i] for i in held]
        judged = judge.predict(held_rows)
        verdicts = [v.label for v in judged]
        values.append(agreement(task, [r.label for r in held_rows], verdicts))
        predictions.update({row.id: label for row, label in zip(held_rows, verdicts, strict=True)})
        probabilities.update({row.id: answer_probabilities(v) for row, v in zip(held_rows, judged, strict=True)})
    se = float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
    return SelectionScore(CV, float(np.mean(values)), se, [float(v) for v in values], predictions, probabilities)


def answer_probabilities(verdict: Any) -> list[float] | None:
    """A verdict's probability of each answer, in the answers' order, or ``None``: with its
    label, what tells two judges apart (:func:`judgecal.calibrate.search.same_judge`)."""
    given = getattr(verdict, "probabilities", None)
    return None if not given else [float(given[answer]) for answer in sorted(given)]


def holdout(
    judge: Any,
    task: Task,
    dev: Sequence[LabeledRow],
    *,
    chunk: int,
    seed: int = 0,
    on_chunk: Callable[[list[int], np.ndarray], None] | None = None,
) -> SelectionScore:
    """κ on dev, judged in interleaved chunks. After each chunk ``on_chunk(indices,
    scores)`` receives the dev indices judged so far and their per-row scores; it may
    raise to stop (a pruned trial)."""
    order = interleaved(dev, seed)
    verdicts: dict[int, LabelValue | None] = {}
    probabilities: dict[int, list[float] | None] = {}
    weights = row_scores(task, dev, [row.label for row in dev])  # the value of a right answer per row
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        for index, verdict in zip(part, judge.predict([dev[i] for i in part]), strict=True):
            verdicts[index] = verdict.label
            probabilities[index] = answer_probabilities(verdict)
        if on_chunk is not None and start + chunk < len(order):
            done = order[: start + chunk]
            on_chunk(done, np.array([weights[i] if verdicts[i] == dev[i].label else 0.0 for i in done]))
    labels = [verdicts[i] for i in range(len(dev))]
    return SelectionScore(
        HOLDOUT,
        agreement(task, [row.label for row in dev], labels),
        predictions={row.id: label for row, label in zip(dev, labels, strict=True)},
        probabilities={row.id: probabilities[i] for i, row in enumerate(dev)},
    )


@dataclass
class Candidate:
    """A scored trial: which strategy with which settings, how simple it is, its score."""

    number: int
    strategy: str
    complexity: int
    params: dict[str, Any]
    score: SelectionScore
    default: bool = False  # the strategy's default settings (the first trial the search runs of it)


@dataclass
class Choice:
    winner: Candidate
    rule: str
    steps: list[str]


def paired_se(first: Sequence[float], second: Sequence[float]) -> float:
    """Standard error of the mean difference of two candidates' scores on the same folds: the
    one-standard-error rule's, as Breiman et al. (1984) define it."""
    diff = np.asarray(first) - np.asarray(second)
    return float(np.std(diff, ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("inf")


def corrected_paired_se(first: Sequence[float], second: Sequence[float]) -> float:
    """The same, corrected for the folds' overlapping training rows (Nadeau & Bengio 2003:
    the variance of the differences times 1/K + 1/(K − 1) instead of 1/K), as a test of
    one candidate against another needs it. Each fold's judge is fitted on rows the others
    were fitted on too, so the fold differences are correlated and their plain standard
    error is too small: by a factor 1.5 at five folds."""
    k = len(first)
    return paired_se(first, second) * float(np.sqrt(1 + k / (k - 1))) if k > 1 else float("inf")


def dev_difference(
    task: Task, dev: Sequence[LabeledRow], first: SelectionScore, second: SelectionScore, *, seed: int = 0
) -> tuple[float, float]:
    """κ(second) − κ(first) on the same dev rows, with its group-bootstrap standard error."""
    from judgecal.stats.uncertainty import GroupIndex

    human = [row.label for row in dev]
    a = [first.predictions.get(row.id) for row in dev]
    b = [second.predictions.get(row.id) for row in dev]
    point = agreement(task, human, b) - agreement(task, human, a)
    groups = GroupIndex.from_groups([row.group for row in dev])
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(400):
        picked = groups.rows(rng.integers(0, groups.n_groups, groups.n_groups))
        h = [human[i] for i in picked]
        draws.append(agreement(task, h, [b[i] for i in picked]) - agreement(task, h, [a[i] for i in picked]))
    return point, float(np.std(draws, ddof=1))


# One standard error, as a one-sided level: P(Z > 1).
ONE_SE_LEVEL = 0.15865525393145707


def tuned_bar(tuned: int, folds: int | None = None) -> float:
    """How many paired standard errors the best of ``tuned`` tuned settings must lead the
    defaults by: a one-sided test at the level of one standard error, that level split among
    the tuned settings (Bonferroni), against Student's t with ``folds`` − 1 degrees of freedom
    when the standard error comes from that many folds (the normal for a bootstrap's). The
    best of many settings scored on the same folds leads by chance more often than any one
    of them does, and five folds' differences say little about their own spread: a bar that
    ignores either lets a longer search replace the defaults by noise."""
    from scipy.stats import norm, t

    level = ONE_SE_LEVEL / max(1, tuned)
    return float(t.isf(level, folds - 1) if folds and folds > 1 else norm.isf(level))


def best_per_strategy(
    task: Task, dev: Sequence[LabeledRow], candidates: Sequence[Candidate]
) -> tuple[list[Candidate], list[str]]:
    """Each strategy's representative: its default settings, unless the best of its tuned
    settings leads them by more than :func:`tuned_bar` paired standard errors. Tuned settings
    that win by less than the noise of the best of so many scores are as likely to lose on
    new prompts as to win, and the defaults were not selected on these rows."""
    best: dict[str, Candidate] = {}
    defaults: dict[str, Candidate] = {}
    tuned: dict[str, int] = {}
    for candidate in candidates:
        held = best.get(candidate.strategy)
        if held is None or candidate.score.value > held.score.value:
            best[candidate.strategy] = candidate
        if candidate.default:
            defaults[candidate.strategy] = candidate
        else:
            tuned[candidate.strategy] = tuned.get(candidate.strategy, 0) + 1
    steps: list[str] = []
    for name, top in best.items():
        default = defaults.get(name)
        if default is None or default is top:
            continue
        if top.score.rule == CV:
            folds: int | None = len(top.score.folds or [])
            gain, se = (
                top.score.value - default.score.value,
                corrected_paired_se(top.score.folds or [], default.score.folds or []),
            )
        else:
            folds = None  # a bootstrap's standard error: the normal
            gain, se = dev_difference(task, dev, default.score, top.score)
        bar = tuned_bar(tuned[name], folds)
        settings = "the only tuned setting" if tuned[name] == 1 else f"the best of {tuned[name]} tuned settings"
        measure = f"{bar:.2f} standard errors of {se:.3f} ({bar * se:.3f}; {settings})"
        if gain <= bar * se:
            steps.append(
                f"{name}: default settings (trial {default.number}) kept over trial {top.number}, which is ahead by "
                f"{gain:+.3f}, not more than {measure}"
            )
            best[name] = default
        else:
            steps.append(
                f"{name}: trial {top.number} chosen over its default settings (trial {default.number}): ahead by "
                f"{gain:+.3f}, more than {measure}"
            )
    return list(best.values()), steps


def choose(candidates: Sequence[Candidate], task: Task, dev: Sequence[LabeledRow]) -> Choice:
    """The selection rule described in the module docstring, with each step in words."""
    if not candidates:
        raise ValueError("no trial finished, so there is nothing to choose from")
    by_cv, steps = best_per_strategy(task, dev, [c for c in candidates if c.score.rule == CV])
    by_cv = [c for c in by_cv if np.isfinite(c.score.value)]
    by_dev, dev_steps = best_per_strategy(task, dev, [c for c in candidates if c.score.rule == HOLDOUT])
    steps += dev_steps
    choice = None
    if by_cv:
        top = max(by_cv, key=lambda c: c.score.value)
        choice = top
        steps.append(f"best cross-validated: {top.strategy} (trial {top.number}) κ {top.score.describe()}")
        simpler = sorted(
            (c for c in by_cv if c.complexity < top.complexity),
            key=lambda c: (c.complexity, -c.score.value),
        )
        for other in simpler:
            se = paired_se(top.score.folds or [], other.score.folds or [])
            if top.score.value - other.score.value <= se:
                steps.append(
                    f"{other.strategy} (trial {other.number}) is simpler and within one paired standard error "
                    f"({top.score.value - other.score.value:+.3f} ≤ {se:.3f}): chosen instead"
                )
                choice = other
                break
    if by_dev:
        lead = max(by_dev, key=lambda c: c.score.value)
        if choice is None:
            steps.append(f"best on dev: {lead.strategy} (trial {lead.number}) κ {lead.score.value:.3f}")
            choice = lead
        else:
            gain, se = dev_difference(task, dev, choice.score, lead.score)
            if gain > se:
                steps.append(
                    f"{lead.strategy} (trial {lead.number}) beats {choice.strategy} on the same dev rows by "
                    f"Δκ {gain:+.3f} > one standard error {se:.3f}: chosen"
                )
                choice = lead
            else:
                steps.append(
                    f"{lead.strategy} (trial {lead.number}, dev κ {lead.score.value:.3f}) vs {choice.strategy} on the "
                    f"same dev rows: Δκ {gain:+.3f}, not above one standard error {se:.3f}; kept {choice.strategy}"
                )
    assert choice is not None
    rule = (
        "cross-validated κ over train + dev (grouped folds) for strategies that make no LM calls to fit, "
        "dev κ for those that do; default settings win over tuned ones unless the best of them leads by more than "
        "a one-sided paired t-test at the level of one standard error, split among the tuned settings, allows "
        "(its standard error corrected for the folds' shared training rows); within one standard error the "
        "simpler strategy wins"
    )
    return Choice(winner=choice, rule=rule, steps=steps)

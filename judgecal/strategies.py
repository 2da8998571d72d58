"""Calibration strategies: every lever, fitted on train, tuned on dev, judged the same way.

A strategy turns the raw judge plus human labels into a calibrated judge:

* **DSPy optimizers** (``labeled_few_shot`` … ``gepa``) rewrite the judge's instructions and
  demos (see :mod:`judgecal.calibration`).
* **Post-hoc decisions** keep the judge and change how its answer is read: ``threshold``
  (the cut on P(positive) that maximises κ on dev), ``base_rate`` (the cut that selects
  as often as humans do on dev), ``order_swap`` (pairwise: judge both orders, reconcile).
* **Trained verifiers** (``verifier``) learn the human labels from the inputs directly.
* **Stacking** (``stacking``) combines the judge's probability, recorded judges' verdicts
  and the verifier's out-of-fold score in one logistic model.

Every fitted judge answers ``predict(rows) -> list[Verdict]`` and saves a plain-JSON
``state()``; :func:`judge_from_state` rebuilds it without running code from the state.
Fitting and selection only ever see train and dev rows: a :class:`RowGuard` holding the
test ids checks every call and raises if one slips in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from judgecal.calibration import CalibrationConfig, calibrate_program
from judgecal.data import LabeledRow, LabelValue
from judgecal.judges import Judge, JudgeProgram, ProgressFactory, Verdict, answer_key, swap_pair
from judgecal.metrics import LabelSpace, confusion, kappa_from_confusion
from judgecal.tasks import Task
from judgecal.verifier import (
    EmbeddingVerifier,
    TextVerifier,
    embeddings_available,
    out_of_fold_proba,
    verifier_from_state,
)

EPSILON = 1e-3


class LeakError(AssertionError):
    """A test row reached a fit or selection step."""


@dataclass
class RowGuard:
    """Holds the test ids; every fit and selection step passes its rows through ``check``."""

    forbidden: frozenset[str]
    seen: dict[str, set[str]] = field(default_factory=dict)

    def check(self, rows: Sequence[LabeledRow], step: str) -> Sequence[LabeledRow]:
        ids = {row.id for row in rows}
        self.seen.setdefault(step, set()).update(ids)
        leaked = ids & self.forbidden
        if leaked:
            raise LeakError(f"{len(leaked)} test rows reached '{step}', e.g. {sorted(leaked)[:3]}")
        return rows


# ---------------------------------------------------------------------------------------
# Fitted judges
# ---------------------------------------------------------------------------------------


class FittedJudge:
    """A judge after calibration: rows in, verdicts out, state to save."""

    kind = "abstract"

    def __init__(self, task: Task, name: str) -> None:
        self.task = task
        self.name = name

    @property
    def space(self) -> LabelSpace:
        spec = self.task.spec
        return LabelSpace(labels=spec.labels, positive=spec.positive, ordinal=spec.is_ordinal)

    def predict(
        self, rows: Sequence[LabeledRow], *, progress: ProgressFactory | None = None, description: str = ""
    ) -> list[Verdict]:
        raise NotImplementedError

    def predict_swapped(
        self, rows: Sequence[LabeledRow], *, progress: ProgressFactory | None = None, description: str = ""
    ) -> list[Verdict]:
        swapped = [row.model_copy(update={"inputs": swap_pair(row.inputs)}) for row in rows]
        return self.predict(swapped, progress=progress, description=description)

    def __call__(self, **inputs: Any) -> Verdict:
        return self.predict([self._row(inputs)])[0]

    def _row(self, item: LabeledRow | dict[str, Any], index: int = 0) -> LabeledRow:
        if isinstance(item, LabeledRow):
            return item
        spec = self.task.spec
        unknown = set(item) - set(spec.input_names)
        if unknown:
            raise ValueError(f"judge '{self.name}' takes {', '.join(spec.input_names)}; got also {sorted(unknown)}")
        validated = spec.inputs_model.model_validate(item)
        inputs = {name: getattr(validated, name) for name in spec.input_names}
        return LabeledRow(id=str(index), group="-", inputs=inputs, label=None)

    def batch(
        self, items: Sequence[LabeledRow | dict[str, Any]], *, num_threads: int = 1, progress: bool = True
    ) -> list[Verdict]:
        """Verdicts for many rows (or dicts of inputs), in order, with a progress bar.
        Threads help with remote models; an in-process model judges one row at a time."""
        from concurrent.futures import ThreadPoolExecutor

        from judgecal.progress import rich_progress

        rows = [self._row(item, i) for i, item in enumerate(items)]
        factory = rich_progress() if progress else None
        if num_threads <= 1 or len(rows) <= 1:
            return self.predict(rows, progress=factory, description=self.name)
        tracker = factory(len(rows), self.name) if factory else None
        size = max(1, len(rows) // (num_threads * 4))
        chunks = [rows[i : i + size] for i in range(0, len(rows), size)]

        def work(chunk: list[LabeledRow]) -> list[Verdict]:
            verdicts = self.predict(chunk)
            if tracker is not None:
                tracker.advance(len(chunk))
            return verdicts

        try:
            with ThreadPoolExecutor(max_workers=num_threads) as pool:
                return [v for part in pool.map(work, chunks) for v in part]
        finally:
            if tracker is not None:
                tracker.close()

    def as_dspy_metric(self, *, probability: bool = False) -> Callable[..., float]:
        """This judge as a DSPy metric: each input field is taken from the prediction when it
        has one, else from the example. Returns 1.0 when the verdict is the positive label
        (binary) or, with ``probability=True``, the judge's P(positive); for other tasks,
        1.0 when the verdict equals the example's own label field."""
        spec = self.task.spec

        def metric(example: Any, prediction: Any, trace: Any = None) -> float:
            inputs = {}
            for name in spec.input_names:
                value = _field(prediction, name)
                inputs[name] = value if value is not None else _field(example, name)
            verdict = self(**{k: v for k, v in inputs.items() if v is not None})
            if spec.positive is not None:
                if probability and verdict.probabilities:
                    return float(verdict.probability_of(spec.positive) or 0.0)
                return float(verdict.label == spec.positive)
            return float(verdict.label is not None and verdict.label == _field(example, spec.decision_field))

        metric.__name__ = f"judgecal_{self.name}"
        return metric

    def as_mlflow_scorer(self, name: str | None = None) -> Any:
        """This judge as an MLflow GenAI scorer for ``mlflow.genai.evaluate(scorers=[...])``."""
        from judgecal.export import mlflow_scorer

        return mlflow_scorer(self, name=name)

    def state(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def uses_lm(self) -> bool:
        return False


class ProgramJudge(FittedJudge):
    """The LLM judge: a DSPy program run by an LM (raw, or compiled by an optimizer)."""

    kind = "program"

    def __init__(self, task: Task, program: JudgeProgram, lm: Any, name: str) -> None:
        super().__init__(task, name)
        self.judge = Judge(task, program, lm=lm, name=name)

    @property
    def program(self) -> JudgeProgram:
        return self.judge.program

    @property
    def uses_lm(self) -> bool:
        return True

    def predict(self, rows, *, progress=None, description=""):
        return self.judge.predict(rows, progress=progress, description=description or self.name)

    def state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "program": self.program.dump_state(),
            "verbalized": bool(getattr(self.program, "verbalized", False)),
        }


class RecordedJudge(FittedJudge):
    """Verdicts that already exist: a ``reference_judges`` field of the rows, or a verdicts
    file keyed by row id (optionally with a probability). No model is called."""

    kind = "recorded"

    def __init__(
        self, task: Task, source: str, name: str, verdicts: dict[str, tuple[LabelValue, float | None]] | None = None
    ) -> None:
        super().__init__(task, name)
        self.source = source
        self.verdicts = verdicts

    def predict(self, rows, *, progress=None, description=""):
        positive = self.task.spec.positive
        out = []
        for row in rows:
            if self.verdicts is not None:
                label, probability = self.verdicts.get(row.id, (None, None))
            else:
                label, probability = row.reference_judges.get(self.source), None
            if label is None:
                out.append(Verdict(label=None, error=f"no recorded verdict of {self.source!r} for row {row.id!r}"))
                continue
            probabilities = None
            if positive is not None:
                p = probability if probability is not None else float(label == positive)
                probabilities = {answer_key(positive): p, answer_key(_negative(self.task)): 1 - p}
            else:
                probabilities = {answer_key(v): float(v == label) for v in self.task.spec.labels}
            out.append(
                Verdict(label=label, confidence=probabilities.get(answer_key(label)), probabilities=probabilities)
            )
        return out

    def state(self) -> dict[str, Any]:
        if self.verdicts is not None:
            raise ValueError("a judge reading a verdicts file cannot be saved as a portable judge")
        return {"kind": self.kind, "source": self.source}


def _field(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    try:
        return obj.get(name) if hasattr(obj, "get") else getattr(obj, name, None)
    except Exception:
        return None


def _negative(task: Task) -> LabelValue:
    return next(label for label in task.spec.labels if label != task.spec.positive)


def positive_probability(verdicts: Sequence[Verdict], task: Task) -> np.ndarray:
    """P(positive) per verdict: the token probability where the judge gave one, its 0/1
    answer otherwise, and 0.5 for a missing verdict (which then counts as undecided)."""
    positive = task.spec.positive
    out = []
    for verdict in verdicts:
        p = verdict.probability_of(positive)
        if p is None:
            p = 0.5 if verdict.label is None else float(verdict.label == positive)
        out.append(p)
    return np.asarray(out, dtype=float)


class ThresholdJudge(FittedJudge):
    """Reads a binary judge's P(positive) against a cut chosen on dev."""

    kind = "threshold"

    def __init__(self, task: Task, base: FittedJudge, threshold: float, rule: str, name: str) -> None:
        super().__init__(task, name)
        self.base = base
        self.threshold = threshold
        self.rule = rule

    @property
    def uses_lm(self) -> bool:
        return self.base.uses_lm

    def predict(self, rows, *, progress=None, description=""):
        base = self.base.predict(rows, progress=progress, description=description or self.name)
        p = positive_probability(base, self.task)
        positive, negative = self.task.spec.positive, _negative(self.task)
        out = []
        for verdict, probability in zip(base, p, strict=True):
            if verdict.label is None:
                out.append(verdict)
                continue
            label = positive if probability >= self.threshold else negative
            out.append(
                Verdict(
                    label=label,
                    confidence=probability if label == positive else 1 - probability,
                    probabilities=verdict.probabilities,
                )
            )
        return out

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "threshold": self.threshold, "rule": self.rule, "base": self.base.state()}


class OrderSwapJudge(FittedJudge):
    """Pairwise: judges both orders and reconciles. With probabilities, the two
    distributions are averaged (A in one order is B in the other); without, a
    disagreement becomes a tie."""

    kind = "order_swap"

    def __init__(self, task: Task, base: FittedJudge, name: str) -> None:
        super().__init__(task, name)
        self.base = base

    @property
    def uses_lm(self) -> bool:
        return self.base.uses_lm

    def predict(self, rows, *, progress=None, description=""):
        first = self.base.predict(rows, progress=progress, description=description or self.name)
        second = self.base.predict_swapped(
            rows, progress=progress, description=(description or self.name) + " (swapped)"
        )
        flip = {"A": "B", "B": "A"}
        out = []
        for one, two in zip(first, second, strict=True):
            if one.label is None or two.label is None:
                out.append(one if two.label is None else Verdict(label=flip.get(str(two.label), two.label)))
                continue
            if one.probabilities and two.probabilities:
                merged = {
                    key: (one.probabilities.get(key, 0.0) + two.probabilities.get(flip.get(key, key), 0.0)) / 2
                    for key in one.probabilities
                }
                label = max(merged, key=merged.__getitem__)
                out.append(Verdict(label=label, confidence=merged[label], probabilities=merged))
            else:
                agreed = flip.get(str(two.label), two.label) == one.label
                out.append(Verdict(label=one.label if agreed else "tie"))
        return out

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "base": self.base.state()}


class VerifierJudge(FittedJudge):
    """A trained verifier; for binary tasks its P(positive) is cut at a threshold chosen on dev."""

    kind = "verifier"

    def __init__(self, task: Task, verifier: TextVerifier, threshold: float | None, name: str) -> None:
        super().__init__(task, name)
        self.verifier = verifier
        self.threshold = threshold

    def probabilities(self, rows: Sequence[LabeledRow]) -> np.ndarray:
        return self.verifier.predict_proba([row.inputs for row in rows])

    def predict(self, rows, *, progress=None, description=""):
        proba = self.probabilities(rows)
        return [_verdict_from_proba(self.task, p, self.threshold) for p in proba]

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "threshold": self.threshold, "verifier": self.verifier.state()}


def _verdict_from_proba(task: Task, proba: np.ndarray, threshold: float | None) -> Verdict:
    labels = task.spec.labels
    keys = [answer_key(label) for label in labels]
    if threshold is not None and task.spec.positive is not None:
        p = float(proba[labels.index(task.spec.positive)])
        label = task.spec.positive if p >= threshold else _negative(task)
    else:
        label = labels[int(np.argmax(proba))]
    distribution = {k: float(v) for k, v in zip(keys, proba, strict=True)}
    return Verdict(label=label, confidence=distribution[answer_key(label)], probabilities=distribution)


class StackedJudge(FittedJudge):
    """Logistic regression over the judges' P(positive) (as logits) and the verifier's,
    fitted on train; its output is cut at a threshold chosen on dev."""

    kind = "stacked"

    def __init__(
        self,
        task: Task,
        components: list[FittedJudge],
        verifier: TextVerifier | None,
        coef: list[float],
        intercept: float,
        threshold: float,
        name: str,
    ) -> None:
        super().__init__(task, name)
        self.components = components
        self.verifier = verifier
        self.coef = np.asarray(coef, dtype=float)
        self.intercept = float(intercept)
        self.threshold = threshold

    @property
    def uses_lm(self) -> bool:
        return any(c.uses_lm for c in self.components)

    def features(self, rows: Sequence[LabeledRow], *, progress: ProgressFactory | None = None) -> np.ndarray:
        columns = [logit(positive_probability(c.predict(rows, progress=progress), self.task)) for c in self.components]
        if self.verifier is not None:
            columns.append(
                logit(
                    self.verifier.predict_proba([r.inputs for r in rows])[
                        :, self.task.spec.labels.index(self.task.spec.positive)
                    ]
                )
            )
        return np.column_stack(columns)

    def predict(self, rows, *, progress=None, description=""):
        p = sigmoid(self.features(rows, progress=progress) @ self.coef + self.intercept)
        return [_verdict_from_proba(self.task, np.array([q, 1 - q]), self.threshold) for q in p]

    def state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "components": [c.state() for c in self.components],
            "verifier": self.verifier.state() if self.verifier is not None else None,
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
            "threshold": self.threshold,
        }


def _without_lms(program_state: dict[str, Any]) -> dict[str, Any]:
    """A saved program never carries an LM: DSPy's LM state can name engine classes to
    import, and a judge's LM comes from its bundle settings instead."""
    return {
        name: ({**value, "lm": None} if isinstance(value, dict) and "lm" in value else value)
        for name, value in program_state.items()
    }


def logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=float), 0.02, 0.98)
    return np.log(q / (1 - q))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def judge_from_state(state: dict[str, Any], task: Task, lm: Any, name: str) -> FittedJudge:
    """Rebuild a fitted judge from its plain-JSON state (no code is loaded from it)."""
    kind = state.get("kind")
    if kind == "program":
        program = JudgeProgram(task.signature, verbalized=bool(state.get("verbalized")))
        program.load_state(_without_lms(state["program"]))
        return ProgramJudge(task, program, lm, name)
    if kind == "recorded":
        return RecordedJudge(task, state["source"], name)
    if kind == "threshold":
        return ThresholdJudge(
            task,
            judge_from_state(state["base"], task, lm, name),
            float(state["threshold"]),
            state.get("rule", "kappa"),
            name,
        )
    if kind == "order_swap":
        return OrderSwapJudge(task, judge_from_state(state["base"], task, lm, name), name)
    if kind == "verifier":
        return VerifierJudge(task, verifier_from_state(state["verifier"]), state.get("threshold"), name)
    if kind == "stacked":
        verifier = verifier_from_state(state["verifier"]) if state.get("verifier") else None
        return StackedJudge(
            task,
            [judge_from_state(c, task, lm, name) for c in state["components"]],
            verifier,
            state["coef"],
            state["intercept"],
            float(state["threshold"]),
            name,
        )
    raise ValueError(f"unknown judge state kind {kind!r}")


# ---------------------------------------------------------------------------------------
# Choosing decision thresholds on dev
# ---------------------------------------------------------------------------------------


def kappa_threshold(probability: np.ndarray, positive: np.ndarray) -> float:
    """The cut on P(positive) that maximises Cohen's κ on these rows. Candidates are the
    midpoints between observed probabilities; among equal κ the widest gap wins."""
    values = np.unique(np.asarray(probability, dtype=float))
    edges = np.concatenate([[values[0] - EPSILON], values, [values[-1] + EPSILON]])
    candidates = (edges[:-1] + edges[1:]) / 2
    gaps = edges[1:] - edges[:-1]
    y = np.asarray(positive, dtype=bool)
    best, best_score, best_gap = 0.5, -np.inf, -1.0
    for cut, gap in zip(candidates, gaps, strict=True):
        picked = probability >= cut
        cm = confusion((~y).astype(int), (~picked).astype(int), 2)
        score = float(kappa_from_confusion(cm))
        if score > best_score + 1e-12 or (abs(score - best_score) <= 1e-12 and gap > best_gap):
            best, best_score, best_gap = float(cut), score, float(gap)
    return best


def base_rate_threshold(probability: np.ndarray, positive: np.ndarray) -> float:
    """The cut that selects the same share of rows as humans marked positive."""
    rate = float(np.mean(positive))
    if rate <= 0:
        return float(np.max(probability)) + EPSILON
    return float(np.quantile(np.asarray(probability, dtype=float), 1 - rate, method="higher"))


# ---------------------------------------------------------------------------------------
# The strategies
# ---------------------------------------------------------------------------------------


@dataclass
class FitContext:
    """What a strategy may use: train and dev (never test), the raw judge and the LM."""

    task: Task
    train: Sequence[LabeledRow]
    dev: Sequence[LabeledRow]
    raw: FittedJudge
    lm: Any
    config: CalibrationConfig
    guard: RowGuard
    progress: ProgressFactory | None = None
    log: Callable[[str], None] = print
    reference_judges: tuple[str, ...] = ()


@dataclass(frozen=True)
class StrategySpec:
    name: str
    family: str
    description: str
    fit: Callable[[FitContext, dict[str, Any]], FittedJudge]
    space: Callable[[Any], dict[str, Any]]
    needs_program: bool = False
    binary_only: bool = False
    pairwise_only: bool = False
    needs_extra: str | None = None

    def available(self) -> bool:
        return self.needs_extra != "embeddings" or embeddings_available()

    def applies_to(self, task: Task, has_program: bool) -> bool:
        if self.needs_program and not has_program:
            return False
        if self.binary_only and not task.spec.is_binary:
            return False
        pairwise = {"response_a", "response_b"} <= set(task.spec.input_names)
        return not (self.pairwise_only and not pairwise)


def _dspy_fit(optimizer: str) -> Callable[[FitContext, dict[str, Any]], FittedJudge]:
    def fit(ctx: FitContext, params: dict[str, Any]) -> FittedJudge:
        config = ctx.config.model_copy(update={"optimizer": optimizer, **params})
        train = ctx.guard.check(ctx.train, f"{optimizer}: fit")
        dev = ctx.guard.check(ctx.dev, f"{optimizer}: select")
        result = calibrate_program(ctx.task, ctx.lm, train, dev, config)
        return ProgramJudge(ctx.task, result.program, ctx.lm, ctx.raw.name)

    return fit


def _dspy_space(optimizer: str) -> Callable[[Any], dict[str, Any]]:
    def space(trial: Any) -> dict[str, Any]:
        params: dict[str, Any] = {"seed": trial.suggest_int(f"{optimizer}.seed", 0, 9)}
        if optimizer != "gepa":
            params["max_labeled_demos"] = trial.suggest_int(f"{optimizer}.max_labeled_demos", 0, 4)
        if optimizer in ("bootstrap_few_shot", "bootstrap_random_search", "mipro"):
            params["max_bootstrapped_demos"] = trial.suggest_int(f"{optimizer}.max_bootstrapped_demos", 0, 3)
        if optimizer == "bootstrap_random_search":
            params["num_candidate_programs"] = trial.suggest_int(f"{optimizer}.num_candidate_programs", 1, 4)
        return params

    return space


def _scores_on(ctx: FitContext, judge: FittedJudge, rows: Sequence[LabeledRow], step: str) -> np.ndarray:
    ctx.guard.check(rows, step)
    return positive_probability(judge.predict(rows, progress=ctx.progress, description=step), ctx.task)


def _is_positive(ctx: FitContext, rows: Sequence[LabeledRow]) -> np.ndarray:
    return np.array([row.label == ctx.task.spec.positive for row in rows])


def _scored_base(ctx: FitContext, step: str) -> tuple[FittedJudge, np.ndarray]:
    """The raw judge's P(positive) on dev. A live judge whose backend gives no token
    probabilities is swapped for the same program stating a 0–100 score."""
    ctx.guard.check(ctx.dev, step)
    verdicts = ctx.raw.predict(ctx.dev, progress=ctx.progress, description=step)
    base = ctx.raw
    if isinstance(base, ProgramJudge) and all(v.probabilities is None for v in verdicts):
        ctx.log(f"{step}: the judge model gives no token probabilities; asking it for a 0-100 score instead")
        base = ProgramJudge(ctx.task, JudgeProgram(ctx.task.signature, verbalized=True), base.judge.lm, base.name)
        verdicts = base.predict(ctx.dev, progress=ctx.progress, description=step + " (stated scores)")
    return base, positive_probability(verdicts, ctx.task)


def fit_threshold(ctx: FitContext, params: dict[str, Any]) -> FittedJudge:
    base, p = _scored_base(ctx, "threshold: select on dev")
    cut = kappa_threshold(p, _is_positive(ctx, ctx.dev))
    return ThresholdJudge(ctx.task, base, cut, "kappa", ctx.raw.name)


def fit_base_rate(ctx: FitContext, params: dict[str, Any]) -> FittedJudge:
    base, p = _scored_base(ctx, "base_rate: select on dev")
    cut = base_rate_threshold(p, _is_positive(ctx, ctx.dev))
    return ThresholdJudge(ctx.task, base, cut, "base_rate", ctx.raw.name)


def fit_order_swap(ctx: FitContext, params: dict[str, Any]) -> FittedJudge:
    return OrderSwapJudge(ctx.task, ctx.raw, ctx.raw.name)


def fit_verifier(ctx: FitContext, params: dict[str, Any]) -> FittedJudge:
    train = ctx.guard.check(ctx.train, "verifier: fit")
    kind = EmbeddingVerifier if params.get("embeddings") else TextVerifier
    verifier = kind(ctx.task.spec.labels, C=float(params.get("C", 1.0))).fit(train)
    threshold = None
    if ctx.task.spec.is_binary:
        dev = ctx.guard.check(ctx.dev, "verifier: select threshold on dev")
        p = verifier.predict_proba([row.inputs for row in dev])[:, ctx.task.spec.labels.index(ctx.task.spec.positive)]
        threshold = kappa_threshold(p, _is_positive(ctx, dev))
    return VerifierJudge(ctx.task, verifier, threshold, ctx.raw.name)


def fit_stacking(ctx: FitContext, params: dict[str, Any]) -> FittedJudge:
    """Components: the raw judge (LLM or recorded) and every recorded reference judge in the
    rows; plus a verifier (TF-IDF, or sentence embeddings with ``embeddings``) whose
    train-split scores are out-of-fold by group."""
    from sklearn.linear_model import LogisticRegression

    train = ctx.guard.check(ctx.train, "stacking: fit")
    dev = ctx.guard.check(ctx.dev, "stacking: select threshold on dev")
    components: list[FittedJudge] = []
    if params.get("use_raw", True):
        components.append(ctx.raw)
    for name in ctx.reference_judges if params.get("use_references", True) else ():
        if not (isinstance(ctx.raw, RecordedJudge) and ctx.raw.source == name):
            components.append(RecordedJudge(ctx.task, name, f"reference:{name}"))
    C = float(params.get("C", 1.0))
    use_verifier = bool(params.get("use_verifier", True))
    positive_column = ctx.task.spec.labels.index(ctx.task.spec.positive)
    columns = [logit(_scores_on(ctx, c, train, f"stacking: {c.name} on train")) for c in components]
    verifier = None
    if use_verifier:
        kind = EmbeddingVerifier if params.get("embeddings") else TextVerifier
        columns.append(logit(out_of_fold_proba(train, ctx.task.spec.labels, C=C, kind=kind)[:, positive_column]))
        verifier = kind(ctx.task.spec.labels, C=C).fit(train)
    if not columns:
        raise ValueError("stacking needs at least one component")
    features = np.column_stack(columns)
    y = _is_positive(ctx, train)
    combiner = LogisticRegression(C=float(params.get("combiner_C", 1.0)), class_weight="balanced", max_iter=1000)
    combiner.fit(features, y)
    stacked = StackedJudge(
        ctx.task, components, verifier, combiner.coef_[0].tolist(), float(combiner.intercept_[0]), 0.5, ctx.raw.name
    )
    p = sigmoid(stacked.features(dev, progress=ctx.progress) @ stacked.coef + stacked.intercept)
    stacked.threshold = kappa_threshold(p, _is_positive(ctx, dev))
    return stacked


def _verifier_space(trial: Any) -> dict[str, Any]:
    return {"C": trial.suggest_float("verifier.C", 0.05, 20.0, log=True)}


def _stacking_space(trial: Any) -> dict[str, Any]:
    return {
        "C": trial.suggest_float("stacking.C", 0.05, 20.0, log=True),
        "combiner_C": trial.suggest_float("stacking.combiner_C", 0.01, 10.0, log=True),
        "use_verifier": trial.suggest_categorical("stacking.use_verifier", [True, False]),
    }


def _embedding_space(trial: Any) -> dict[str, Any]:
    return {"C": trial.suggest_float("embedding_verifier.C", 0.01, 10.0, log=True)}


def _no_space(trial: Any) -> dict[str, Any]:
    return {}


STRATEGIES: dict[str, StrategySpec] = {
    **{
        name: StrategySpec(name, "dspy", description, _dspy_fit(name), _dspy_space(name), needs_program=True)
        for name, description in (
            ("labeled_few_shot", "DSPy LabeledFewShot: labelled train rows as demos"),
            ("bootstrap_few_shot", "DSPy BootstrapFewShot: demos the judge itself got right"),
            ("bootstrap_random_search", "DSPy BootstrapFewShotWithRandomSearch: demo sets selected on dev"),
            ("mipro", "DSPy MIPROv2: proposed instructions and demos, Bayesian search on dev"),
            ("copro", "DSPy COPRO: instruction refinement scored on dev"),
            ("simba", "DSPy SIMBA: stochastic introspective mini-batch ascent"),
            ("gepa", "DSPy GEPA: reflective instruction evolution (reflection model configurable)"),
        )
    },
    "threshold": StrategySpec(
        "threshold", "post-hoc", "cut on P(positive) maximising κ on dev", fit_threshold, _no_space, binary_only=True
    ),
    "base_rate": StrategySpec(
        "base_rate", "post-hoc", "cut selecting the dev human rate", fit_base_rate, _no_space, binary_only=True
    ),
    "order_swap": StrategySpec(
        "order_swap", "post-hoc", "judge both orders and reconcile", fit_order_swap, _no_space, pairwise_only=True
    ),
    "verifier": StrategySpec(
        "verifier", "verifier", "TF-IDF + logistic regression on the human labels", fit_verifier, _verifier_space
    ),
    "embedding_verifier": StrategySpec(
        "embedding_verifier",
        "verifier",
        "all-MiniLM-L6-v2 embeddings + logistic regression (extra: embeddings)",
        lambda ctx, params: fit_verifier(ctx, {**params, "embeddings": True}),
        _embedding_space,
        needs_extra="embeddings",
    ),
    "stacking": StrategySpec(
        "stacking",
        "stacking",
        "judge probability + recorded judges + verifier, stacked",
        fit_stacking,
        _stacking_space,
        binary_only=True,
    ),
}


def resolve_strategies(names: Sequence[str] | str, task: Task, *, has_program: bool) -> list[StrategySpec]:
    """Strategy specs by name (``"all"`` = every strategy that applies to this task)."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if list(names) == ["all"]:
        return [spec for spec in STRATEGIES.values() if spec.applies_to(task, has_program) and spec.available()]
    chosen = []
    for name in names:
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)} or 'all'")
        spec = STRATEGIES[name]
        if not spec.available():
            raise ValueError(f'strategy {name!r} needs the optional extra: pip install "judgecal[{spec.needs_extra}]"')
        if not spec.applies_to(task, has_program):
            reason = (
                "needs an LLM judge program (the raw judge is recorded verdicts)"
                if spec.needs_program
                else "applies to binary tasks only"
                if spec.binary_only
                else "applies to pairwise tasks only"
            )
            raise ValueError(f"strategy {name!r} {reason}")
        chosen.append(spec)
    return chosen


@dataclass
class FitResult:
    judge: FittedJudge
    strategy: str
    params: dict[str, Any]
    seconds: float
    lm_calls: int


def fit_strategy(spec: StrategySpec, ctx: FitContext, params: dict[str, Any] | None = None) -> FitResult:
    """Fit one strategy, counting every LM call it makes (cached answers included)."""
    import dspy

    from judgecal.calibration import LMCallCounter

    counter = LMCallCounter()
    started = time.perf_counter()
    with dspy.context(callbacks=[*dspy.settings.get("callbacks", []), counter]):
        judge = spec.fit(ctx, params or {})
    return FitResult(
        judge=judge,
        strategy=spec.name,
        params=dict(params or {}),
        seconds=time.perf_counter() - started,
        lm_calls=counter.calls,
    )

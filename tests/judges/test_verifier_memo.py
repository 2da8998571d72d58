"""What a search's fit memo saves: the stack's leaves and their TF-IDF matrices are made
once per rows, however many settings and trials ask for them, and the answers are the
ones computed without the memo, to the last bit."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from judgecal.calibrate.trained import StackingJudge
from judgecal.judges.features import TextCounts, TfidfFeatures
from judgecal.judges.fitted import RecordedJudge
from judgecal.judges.verifiers import memoised_fits
from tests.helpers import RELEVANCE, pair_rows, recorded_rows


@pytest.mark.parametrize("pairwise", [False, True])
def test_tfidf_fit_transform_is_fit_then_transform_to_the_last_bit(pairwise: bool) -> None:
    rows = (pair_rows() if pairwise else recorded_rows()).rows
    inputs = [row.inputs for row in rows]
    apart = TfidfFeatures(pairwise).fit(inputs)
    expected = apart.transform(inputs)
    together = TfidfFeatures(pairwise)
    got = together.fit_transform(inputs)
    assert (got.shape, got.indptr.tolist(), got.indices.tolist()) == (
        expected.shape,
        expected.indptr.tolist(),
        expected.indices.tolist(),
    )
    assert got.data.tobytes() == expected.data.tobytes()
    assert together.state() == apart.state()
    assert together.transform(inputs[:7]).data.tobytes() == apart.transform(inputs[:7]).data.tobytes()


def same_matrix(got: Any, expected: Any) -> bool:
    return (got.shape, got.indptr.tolist(), got.indices.tolist(), got.data.tobytes()) == (
        expected.shape,
        expected.indptr.tolist(),
        expected.indices.tolist(),
        expected.data.tobytes(),
    )


@pytest.mark.parametrize("pairwise", [False, True])
@pytest.mark.parametrize("max_features", [40000, 60])
def test_tfidf_fitted_from_the_counts_of_texts_read_before_is_tfidf_fitted_on_the_texts(
    pairwise: bool, max_features: int
) -> None:
    """Overlapping sets of rows, as a search's folds are, some texts read before and some
    new; with few features, the most frequent are kept as scikit-learn keeps them."""
    rows = (pair_rows(n_groups=20) if pairwise else recorded_rows(n_groups=20)).rows
    counts = TextCounts()
    for start, stop in ((0, 80), (40, 120), (0, 120), (100, 110)):
        inputs = [row.inputs for row in rows[start:stop]]
        expected_features = TfidfFeatures(pairwise, max_features)
        expected = expected_features.fit_transform(inputs)
        features = TfidfFeatures(pairwise, max_features)
        assert same_matrix(features.fit_transform(inputs, counts), expected), (start, stop)
        assert features.state() == expected_features.state()
        assert same_matrix(features.transform(inputs[:5]), expected_features.transform(inputs[:5]))


class Counted:
    """Counts the calls of TfidfFeatures' methods that read texts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = {"fit": 0, "fit_transform": 0, "transform": 0}
        for name in self.calls:
            original = getattr(TfidfFeatures, name, None)
            if original is not None:
                monkeypatch.setattr(TfidfFeatures, name, self._counting(name, original))

    def _counting(self, name: str, original: Any) -> Any:
        def counted(features: TfidfFeatures, inputs: Any, *rest: Any) -> Any:
            self.calls[name] += 1
            return original(features, inputs, *rest)

        return counted


def test_two_trials_stacking_one_verifier_read_each_set_of_rows_once(monkeypatch) -> None:
    """Two stacks over the TF-IDF verifier (two trials of a search, on the same fold): its
    C is chosen among six on five out-of-fold scores, then it is fitted on all the rows.
    Texts are read once per set of rows they are fitted on (six) and once per set of rows
    they are scored on (five held-out folds and the rows judged), not once per C and trial."""
    dataset = recorded_rows(n_groups=16)
    fit_rows, judged = dataset.rows[:120], dataset.rows[120:]
    raw = RecordedJudge(RELEVANCE, "loose", "loose")
    counted = Counted(monkeypatch)
    with memoised_fits():
        for C in (1.0, 0.1):
            stack = StackingJudge(base=raw, references=("strict",), verifiers=("tfidf",), C=C).fit(fit_rows)
            stack.predict(judged)
    assert counted.calls == {"fit": 0, "fit_transform": 6, "transform": 6}


def test_a_search_reads_each_text_once_for_all_the_tfidf_it_fits(monkeypatch) -> None:
    """The stack's TF-IDF verifier is fitted on six sets of rows (five out-of-fold, then all
    of them): each text is counted once, word and character n-grams, not once per set."""
    from sklearn.feature_extraction.text import CountVectorizer

    read: list[int] = []
    fit_transform = CountVectorizer.fit_transform

    def counted(vectorizer: CountVectorizer, texts: Any, y: Any = None) -> Any:
        read.append(len(texts))
        return fit_transform(vectorizer, texts, y)

    monkeypatch.setattr(CountVectorizer, "fit_transform", counted)
    rows = recorded_rows(n_groups=16).rows[:120]
    with memoised_fits():
        StackingJudge(base=RecordedJudge(RELEVANCE, "loose", "loose"), verifiers=("tfidf",)).fit(rows)
    texts = {json.dumps(row.inputs, sort_keys=True) for row in rows}
    assert sum(read) == 2 * len(texts)


def test_a_stack_fitted_with_its_leaves_memoised_is_the_stack_fitted_without(monkeypatch) -> None:
    dataset = recorded_rows(n_groups=16)
    fit_rows, judged = dataset.rows[:120], dataset.rows[120:]
    raw = RecordedJudge(RELEVANCE, "loose", "loose")

    def stack() -> StackingJudge:
        return StackingJudge(base=raw, references=("strict",), verifiers=("tfidf",))

    alone = stack().fit(fit_rows)
    with memoised_fits():
        stack().fit(fit_rows)  # the memo's second answer is the one compared
        memoised = stack().fit(fit_rows)
        memoised_proba = memoised._proba(judged)
    assert json.dumps(memoised.state(), sort_keys=True) == json.dumps(alone.state(), sort_keys=True)
    assert np.array_equal(memoised_proba, alone._proba(judged))

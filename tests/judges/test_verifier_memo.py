"""What a search's fit memo saves: the stack's leaves and their TF-IDF matrices are made
once per rows, however many settings and trials ask for them, and the answers are the
ones computed without the memo, to the last bit."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from judgecal.calibrate.trained import StackingJudge
from judgecal.judges.features import TfidfFeatures
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


class Counted:
    """Counts the calls of TfidfFeatures' methods that read texts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = {"fit": 0, "fit_transform": 0, "transform": 0}
        for name in self.calls:
            original = getattr(TfidfFeatures, name, None)
            if original is not None:
                monkeypatch.setattr(TfidfFeatures, name, self._counting(name, original))

    def _counting(self, name: str, original: Any) -> Any:
        def counted(features: TfidfFeatures, inputs: Any) -> Any:
            self.calls[name] += 1
            return original(features, inputs)

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

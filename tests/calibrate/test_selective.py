"""SelectiveJudge: a fitted judge with a band where it abstains, chosen on calibration
rows; its verdicts, its abstentions, its saved state and what it refuses."""

from __future__ import annotations

import json

import numpy as np
import pytest

from judgecal.calibrate.selective import NoProbabilitiesError, SelectiveJudge
from judgecal.calibrate.strategies import JUDGE_KINDS, judge_from_state
from judgecal.calibrate.trained import VerifierJudge
from judgecal.data.rows import LabeledRow
from judgecal.data.split import SplitSpec, split_by_group
from judgecal.judges.fitted import RecordedJudge
from judgecal.judges.verdict import Verdict
from tests.helpers import PAIRWISE, RELEVANCE, pair_rows, recorded_rows

TARGETS = {"true": 0.70, "false": 0.95}


def scored_rows(rng: np.random.Generator, n: int, prefix: str) -> tuple[list[LabeledRow], dict]:
    """Rows whose judge's P(yes) is drawn from a known mixture (positives 30%, Beta(4, 2);
    negatives Beta(1.5, 4)), in groups of ten, with the judge's verdicts by row id."""
    rows, verdicts = [], {}
    for i in range(n):
        positive = bool(rng.uniform() < 0.3)
        p = float(rng.beta(4.0, 2.0) if positive else rng.beta(1.5, 4.0))
        row = LabeledRow(
            id=f"{prefix}{i}", group=f"{prefix}g{i // 10}", inputs={"prompt": "p", "attribute": "a"}, label=positive
        )
        rows.append(row)
        verdicts[row.id] = (p >= 0.5, p)
    return rows, verdicts


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    calibration, first = scored_rows(rng, 1000, "c")
    fitting, second = scored_rows(rng, 300, "f")
    test, third = scored_rows(rng, 400, "t")
    base = RecordedJudge(RELEVANCE, "scores", "scored", {**first, **second, **third})
    judge = SelectiveJudge(base, TARGETS, groups="independent").fit(calibration, fitting)
    return judge, test, third


def test_it_answers_outside_its_band_and_abstains_inside(world) -> None:
    judge, test, scores = world
    assert judge.choice_.found
    yes, no = (answer.threshold for answer in judge.choice_.band.answers)
    assert no < yes
    verdicts = judge.predict(test)
    for row, verdict in zip(test, verdicts, strict=True):
        p = scores[row.id][1]
        if p >= yes:
            assert verdict.label is True and verdict.confidence == pytest.approx(p)
        elif p < no:
            assert verdict.label is False and verdict.confidence == pytest.approx(1 - p)
        else:
            assert verdict == Verdict(label=None, abstained=True, probabilities={"true": p, "false": 1 - p})
    coverage = np.mean([not v.abstained for v in verdicts])
    assert abs(coverage - judge.choice_.calibration_rows.coverage) < 0.1
    # A row its base gave no verdict for keeps its error: not an abstention.
    missing = test[0].model_copy(update={"id": "unknown"})
    [failed] = judge.predict([missing])
    assert failed.label is None and not failed.abstained and "no recorded verdict" in failed.error


def test_its_candidates_come_from_the_fitting_rows_not_the_calibration_rows(world) -> None:
    judge, _, _ = world
    thresholds = judge.choice_.candidates.thresholds
    assert len(thresholds) == 23 and all(thresholds[i] < thresholds[i + 1] for i in range(22))
    rng = np.random.default_rng(0)
    calibration, _ = scored_rows(rng, 1000, "c")
    again = SelectiveJudge(judge.base, TARGETS, groups="independent").fit(calibration)
    assert again.choice_.candidates.thresholds == pytest.approx(np.linspace(0.05, 0.95, 19).tolist())


def test_settings_are_estimator_params() -> None:
    judge = SelectiveJudge(None, TARGETS)
    assert judge.get_params(deep=False) == {
        "base": None,
        "precision": TARGETS,
        "delta": 0.1,
        "groups": "design_effect",
        "allow_never": False,
        "procedure": "holm",
        "starts": 1,
    }
    assert judge.set_params(delta=0.05, groups="independent").delta == 0.05
    assert JUDGE_KINDS["selective"] is SelectiveJudge


def test_a_judge_giving_0_1_verdicts_only_is_refused_in_one_line() -> None:
    rows = list(recorded_rows().rows)
    base = RecordedJudge(RELEVANCE, "strict", "strict-judge")
    with pytest.raises(NoProbabilitiesError) as refused:
        SelectiveJudge(base, TARGETS).fit(rows)
    assert str(refused.value) == (
        "selective judging needs probabilities; 'strict-judge' gives 0/1 verdicts only: stack it "
        "(--strategy stacking) or give a probability per row"
    )


def test_targets_must_name_every_verdict_of_the_task(world) -> None:
    judge, test, _ = world
    with pytest.raises(ValueError, match=r"precision: give a target for each verdict of the task \(true, false\)"):
        SelectiveJudge(judge.base, {"yes": 0.7, "no": 0.9}).fit(test)
    with pytest.raises(ValueError, match=r"precision.true: expected a share strictly between 0 and 1"):
        SelectiveJudge(judge.base, {"true": 1.0, "false": 0.9}).fit(test)


def test_its_state_round_trips_through_json_with_its_base() -> None:
    split = split_by_group(recorded_rows(n_groups=30, per_group=20), SplitSpec(calibration=0.3, dev=0.2, test=0.2))
    fitting = [*split.train.rows, *split.dev.rows]
    base = VerifierJudge(task=RELEVANCE, name="relevance").fit(fitting)
    judge = SelectiveJudge(base, {"true": 0.8, "false": 0.95}, groups="independent").fit(
        split.calibration.rows, fitting
    )
    state = json.loads(json.dumps(judge.state()))
    assert state["kind"] == "selective" and state["base"]["kind"] == "verifier"
    assert set(state) == {"kind", "base", "band", "guarantee", "calibration_rows", "candidates", "shortfalls"}
    rebuilt = judge_from_state(state, RELEVANCE, None, "relevance")
    assert rebuilt.state() == state
    assert rebuilt.predict(split.test.rows) == judge.predict(split.test.rows)
    sequenced = SelectiveJudge(base, {"true": 0.8, "false": 0.95}, groups="independent", procedure="fixed-sequence")
    state = json.loads(json.dumps(sequenced.fit(split.calibration.rows, fitting).state()))
    assert (state["guarantee"]["procedure"], state["guarantee"]["starts"]) == ("fixed-sequence", 1)
    rebuilt = judge_from_state(state, RELEVANCE, None, "relevance")
    assert rebuilt.state() == state and (rebuilt.procedure, rebuilt.starts) == ("fixed-sequence", 1)
    unmet = SelectiveJudge(base, {"true": 0.999, "false": 0.999}).fit(split.calibration.rows, fitting)
    assert not unmet.choice_.found
    assert unmet.predict(split.test.rows) == base.predict(split.test.rows)  # no band: never abstains
    with pytest.raises(ValueError, match="no band met the selective targets"):
        unmet.state()


def test_a_pairwise_judge_gives_a_and_b_one_threshold() -> None:
    split = split_by_group(pair_rows(n_groups=40, per_group=10), SplitSpec(calibration=0.3, dev=0.2, test=0.2))
    fitting = [*split.train.rows, *split.dev.rows]
    base = VerifierJudge(task=PAIRWISE, name="pairs", C=0.5).fit(fitting)
    targets = {"A": 0.8, "B": 0.8, "tie": 0.5}
    judge = SelectiveJudge(base, targets, groups="independent", allow_never=True).fit(split.calibration.rows, fitting)
    assert judge.choice_.found
    a, b, tie = judge.choice_.band.answers
    assert a.threshold == b.threshold and (a.verdict, b.verdict, tie.verdict) == ("A", "B", "tie")
    assert "(A or B: " in judge.choice_.guarantee.statement
    rebuilt = judge_from_state(json.loads(json.dumps(judge.state())), PAIRWISE, None, "pairs")
    assert rebuilt.predict(split.test.rows) == judge.predict(split.test.rows)

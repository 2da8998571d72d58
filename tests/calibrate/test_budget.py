"""The LM calls a strategy makes at most, computed before anything runs: never fewer than
what the benchmark measured on the shared relevance file (docs/api-models.md), and what a
search adds up to."""

from __future__ import annotations

import pytest

from judgecal.calibrate.budget import RowCounts, optimizer_fit_calls, run_bound, search_trials, strategy_bound
from judgecal.calibrate.optimizers import CalibrationConfig
from judgecal.calibrate.strategies import STRATEGIES

# Each DSPy strategy's fit, measured by experiments/bench_api_calls.py on 924 train and
# 710 dev rows with the default settings (docs/api-models.md, "Calls and tokens per strategy").
MEASURED_FITS = {
    "labeled_few_shot": 0,
    "bootstrap_few_shot": 17,
    "bootstrap_random_search": 730,
    "copro": 502,
    "mipro": 487,
    "simba": 540,
    "gepa": 69,
}


@pytest.mark.parametrize("optimizer", sorted(MEASURED_FITS))
def test_a_dspy_strategys_bound_is_never_below_what_it_was_measured_to_ask(optimizer) -> None:
    assert optimizer_fit_calls(optimizer, CalibrationConfig(), 924, 710) >= MEASURED_FITS[optimizer]


def test_a_bootstrap_without_demos_to_bootstrap_asks_nothing_to_fit() -> None:
    settings = CalibrationConfig(max_bootstrapped_demos=0)
    assert optimizer_fit_calls("bootstrap_few_shot", settings, 924, 710) == 0


def test_a_search_adds_the_raw_judge_each_trial_and_the_costliest_winner() -> None:
    rows = RowCounts(train=10, dev=4, test=3, gate=2)
    specs = [STRATEGIES["threshold"], STRATEGIES["verifier"], STRATEGIES["labeled_few_shot"]]
    trials = search_trials(specs, {}, 3, CalibrationConfig(), rows)
    assert [spec.name for spec, _ in trials] == ["threshold", "verifier", "labeled_few_shot"]
    bound = run_bound(trials, CalibrationConfig(), rows, searched=True, live=True)
    assert bound.raw == {"train": 10, "dev": 4, "test": 3}
    assert [t.trial for t in bound.trials] == [0, 0, 4]  # labeled_few_shot: no fit, every dev row
    assert bound.winner is not None and (bound.winner.strategy, bound.winner.winner) == ("labeled_few_shot", 5)
    assert bound.total == 17 + 4 + 5


def test_stated_scores_are_counted_on_every_fold_and_again_for_the_refit() -> None:
    rows = RowCounts(train=10, dev=4, test=3, gate=2)
    bound = strategy_bound(STRATEGIES["threshold"], CalibrationConfig(), {}, rows, folds=5, stated=True)
    assert (bound.fit, bound.refit, bound.test, bound.gate) == (5 * 14, 14, 3, 2)


def test_recorded_verdicts_cost_no_call() -> None:
    rows = RowCounts(train=10, dev=4, test=3, gate=2)
    trials = [(STRATEGIES["threshold"], {}), (STRATEGIES["stacking"], {})]
    assert run_bound(trials, CalibrationConfig(), rows, searched=True, live=False).total == 0

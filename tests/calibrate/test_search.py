"""Optuna search: a winner is never pruned on a noisy prefix, repeats do not spend the
budget, a seed reproduces the trials, the winner is refitted on train + dev, selection
follows its rule; a killed study resumes and two workers share a study."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from judgecal.calibrate.guard import RowGuard
from judgecal.calibrate.pruning import DEV_ROW_SCORES
from judgecal.calibrate.selection import Candidate, SelectionScore, choose, corrected_paired_se
from judgecal.calibrate.strategies import STRATEGIES, StrategySpec
from judgecal.cli import main
from judgecal.data.rows import LabeledRow
from judgecal.judges.embeddings import embeddings_available
from judgecal.judges.fitted import FittedJudge
from judgecal.judges.verdict import Verdict
from judgecal.pipeline.config import ExperimentConfig, JudgeSection, SearchConfig
from judgecal.pipeline.search import run_search
from judgecal.tasks.registry import resolve_task
from tests.conftest import write_jsonl
from tests.helpers import recorded_rows
from tests.services import Output, freeze_outside_a_transaction, thaw

RELEVANCE = resolve_task("relevance")


def write_study_config(folder: Path, *, heartbeat: int = 1, grace: int = 2, n_groups: int = 14) -> Path:
    rows = write_jsonl(folder / "rows.jsonl", [row.to_record() for row in recorded_rows(n_groups=n_groups).rows])
    config = folder / "search.toml"
    config.write_text(
        f"""
[judge]
name = "searched"
task = "relevance"
data = "{rows}"
recorded = "loose"

[split]
dev = 0.25
test = 0.25
seed = 1

[search]
heartbeat_interval = {heartbeat}
grace_period = {grace}
"""
    )
    return config


def search_config(tmp_path: Path, strategies: list[str], trials: int, **search: Any) -> ExperimentConfig:
    data = write_study_config(tmp_path, n_groups=search.pop("n_groups", 14)).parent / "rows.jsonl"
    return ExperimentConfig(
        judge=JudgeSection(name="searched", task="relevance", data=data, recorded="loose"),
        search=SearchConfig(
            strategies=strategies, trials=trials, storage=f"sqlite:///{tmp_path / 'optuna.db'}", **search
        ),
    )


def search(config: ExperimentConfig, **kwargs: Any):
    return run_search(config, config.search, track=False, log=lambda m: None, **kwargs)


# --- pruning -------------------------------------------------------------------------------------


class ScriptedJudge(FittedJudge):
    """Stands in for a judge that calls a model: right on every row except those of the
    groups it is told to get wrong."""

    kind = "scripted"

    def __init__(
        self,
        wrong_groups: tuple[str, ...] = (),
        every_row_wrong: bool = False,
        always: bool | None = None,
        wrong_if: Callable[[LabeledRow], bool] | None = None,
    ) -> None:
        self.wrong_groups = wrong_groups
        self.every_row_wrong = every_row_wrong
        self.always = always  # one answer for every row, as a small model at chance gives
        self.wrong_if = wrong_if

    @property
    def task(self):
        return RELEVANCE

    def predict(self, rows, *, progress=None, description=""):
        if self.always is not None:
            return [Verdict(label=self.always) for _ in rows]
        wrong = [
            self.every_row_wrong or row.group in self.wrong_groups or (self.wrong_if is not None and self.wrong_if(row))
            for row in rows
        ]
        return [Verdict(label=(not row.label) if bad else row.label) for row, bad in zip(rows, wrong, strict=True)]


def scripted_spec(name: str, complexity: int, **settings: Any) -> StrategySpec:
    return StrategySpec(
        name,
        "scripted",
        "a scripted judge that calls no model but is scored like one",
        lambda env, params: ScriptedJudge(**settings),
        lambda trial, env: {},
        complexity,
        calls_lm_to_fit=True,
    )


@pytest.mark.parametrize("needs", [{"calls_lm_to_fit": True}, {"judges_twice": True}, {}])
def test_the_search_fits_its_winner_as_a_calibration_fits_that_strategy(tmp_path, workspace, needs) -> None:
    """A strategy the search scored on dev because it judges twice (order swapping) fits
    nothing from the model: its winner is fitted again on train + dev, as a calibration
    with that strategy fits it; one that calls the model to fit keeps its trial's program."""
    from judgecal.calibrate.search import final_judge
    from judgecal.calibrate.strategies import FitResult
    from judgecal.pipeline.calibration import final_fit, prepare

    quiet = lambda message: None  # noqa: E731
    build = lambda env, params: ScriptedJudge()  # noqa: E731
    spec = StrategySpec("scripted", "scripted", "a scripted judge", build, lambda t, e: {}, 9, **needs)
    prepared = prepare(search_config(tmp_path, ["threshold"], 1), workspace, log=quiet)
    final_fit(spec, prepared, {})
    split, searched = prepared.split, RowGuard.for_rows(prepared.split.test.rows)
    trial = FitResult(ScriptedJudge(), "scripted", {}, 0.0, 0)  # the judge the winning trial fitted
    winner = Candidate(0, "scripted", 9, {}, SelectionScore("dev", 1.0))
    chosen = final_judge(
        spec, prepared.env(quiet), winner, split.train.rows, split.dev.rows, searched, {0: trial}, quiet
    )
    refitted = "scripted: fit on train + dev"
    assert (refitted in searched.seen) == (refitted in prepared.guard.seen) == (not spec.selects_on_dev)
    assert (chosen is trial) == spec.selects_on_dev


def test_a_trial_whose_first_prompt_goes_badly_is_not_pruned_but_a_hopeless_one_is(tmp_path, monkeypatch) -> None:
    config = search_config(tmp_path, ["threshold"], 3, n_groups=40, dev_chunk=8)
    from judgecal.data.rows import load_rows
    from judgecal.data.split import split_by_group

    split = split_by_group(load_rows(config.judge.data, RELEVANCE.spec), config.split)
    first_group = sorted({row.group for row in split.dev.rows})[0]
    monkeypatch.setitem(STRATEGIES, "late_bloomer", scripted_spec("late_bloomer", 8, wrong_groups=(first_group,)))
    monkeypatch.setitem(STRATEGIES, "hopeless", scripted_spec("hopeless", 9, every_row_wrong=True))
    config = config.model_copy(
        update={"search": config.search.model_copy(update={"strategies": ["threshold", "late_bloomer", "hopeless"]})}
    )
    report = search(config)
    states = {row.strategy: row.state for row in report.rows}
    assert states["hopeless"] == "PRUNED"  # the pruner works...
    assert states["late_bloomer"] == "COMPLETE"  # ...but not on one prompt's worth of rows
    [bloomer] = [row for row in report.rows if row.strategy == "late_bloomer"]
    [threshold] = [row for row in report.rows if row.strategy == "threshold"]
    assert bloomer.score is not None and threshold.score is not None and bloomer.score > threshold.score
    assert report.best is not None and report.best.strategy == "late_bloomer"


@pytest.mark.parametrize("answer", [False, True], ids=["always-no", "always-yes"])
def test_a_trial_giving_one_answer_to_every_row_is_pruned_after_the_warm_up(tmp_path, monkeypatch, answer) -> None:
    """A model at chance often answers the same on every row: right on one class only.
    Per-row scores then take two values, and a rank test on the paired differences sees
    about as many small gains (the class it gets right) as large losses: it is the mean
    difference that shows the trial is worse, and the pruner tests that."""
    config = search_config(tmp_path, ["threshold"], 2, n_groups=40, dev_chunk=8)

    def half_right(row: LabeledRow) -> bool:
        """Finds half the positives and says yes to about as many negatives: κ about 0.4."""
        g, i = (int(part) for part in row.id[1:].split("-"))
        return (g + i) % 2 == 0 if row.label else (g + i) % 8 == 0

    monkeypatch.setitem(STRATEGIES, "decent", scripted_spec("decent", 8, wrong_if=half_right))
    monkeypatch.setitem(STRATEGIES, "constant", scripted_spec("constant", 9, always=answer))
    config = config.model_copy(
        update={"search": config.search.model_copy(update={"strategies": ["decent", "constant"]})}
    )
    from judgecal.data.rows import load_rows
    from judgecal.data.split import split_by_group

    dev = split_by_group(load_rows(config.judge.data, RELEVANCE.spec), config.split).dev.rows
    messages: list[str] = []
    report = run_search(config, config.search, track=False, log=messages.append)
    [constant] = [row for row in report.rows if row.strategy == "constant"]
    assert constant.state == "PRUNED", constant
    assert constant.pruned_after is not None and constant.pruned_after < len(dev)  # stopped before the end
    assert f"trial {constant.number}: constant pruned after {constant.pruned_after} of {len(dev)} dev rows" in (
        "\n".join(messages)
    )


def dev_rows_of(config: ExperimentConfig) -> tuple[LabeledRow, ...]:
    from judgecal.data.rows import load_rows
    from judgecal.data.split import split_by_group

    return split_by_group(load_rows(config.judge.data, RELEVANCE.spec), config.split).dev.rows


def with_strategies(config: ExperimentConfig, strategies: list[str]) -> ExperimentConfig:
    return config.model_copy(update={"search": config.search.model_copy(update={"strategies": strategies})})


def test_a_hopeless_lm_trial_is_dropped_at_the_first_rung_against_the_best_judge_so_far(tmp_path, monkeypatch) -> None:
    """The cheap strategy runs first, so the LM trial is compared with it from its first
    rung (a ninth of dev here, 23 rows, looked at after 24), not only after a third."""
    config = search_config(tmp_path, ["threshold"], 2, n_groups=80, dev_chunk=8)
    monkeypatch.setitem(STRATEGIES, "hopeless", scripted_spec("hopeless", 9, every_row_wrong=True))
    report = search(with_strategies(config, ["threshold", "hopeless"]))
    dev = dev_rows_of(config)
    [hopeless] = [row for row in report.rows if row.strategy == "hopeless"]
    [threshold] = [row for row in report.rows if row.strategy == "threshold"]
    assert threshold.number < hopeless.number
    assert hopeless.state == "PRUNED" and hopeless.pruned_after is not None
    assert hopeless.pruned_after < len(dev) / 3, (hopeless.pruned_after, len(dev))


def test_a_cross_validated_trial_keeps_its_per_row_dev_scores_in_one_write(tmp_path, monkeypatch) -> None:
    """Each report is a commit of its own to the study's storage (one per dev row made
    a tenth of a search's time): the cross-validated trial's per-row dev scores, the
    pruner's yardstick, are one attribute, and the LM trial is compared with them from its
    first rung all the same."""
    reported: list[str] = []
    report_one = optuna.trial.Trial.report

    def counted(trial: optuna.trial.Trial, value: float, step: int) -> None:
        reported.append(trial.params["strategy"])
        report_one(trial, value, step)

    monkeypatch.setattr(optuna.trial.Trial, "report", counted)
    config = search_config(tmp_path, ["threshold"], 2, n_groups=80, dev_chunk=8)
    monkeypatch.setitem(STRATEGIES, "hopeless", scripted_spec("hopeless", 9, every_row_wrong=True))
    report = search(with_strategies(config, ["threshold", "hopeless"]))
    dev = dev_rows_of(config)
    assert set(reported) == {"hopeless"}
    [name] = optuna.get_all_study_names(config.search.storage)
    trials = optuna.load_study(study_name=name, storage=config.search.storage).trials
    [threshold] = [trial for trial in trials if trial.params["strategy"] == "threshold"]
    assert len(threshold.user_attrs[DEV_ROW_SCORES]) == len(dev) and not threshold.intermediate_values
    [hopeless] = [row for row in report.rows if row.strategy == "hopeless"]
    assert hopeless.state == "PRUNED" and hopeless.pruned_after is not None
    assert hopeless.pruned_after < len(dev) / 3, (hopeless.pruned_after, len(dev))


def test_strategies_that_make_no_lm_calls_to_fit_run_before_any_that_does(tmp_path, monkeypatch) -> None:
    """Even an LM strategy simpler than them waits: the best judge so far is known before
    the first LM trial starts, so the pruner can compare it from its first rung."""
    monkeypatch.setitem(STRATEGIES, "simple_lm", scripted_spec("simple_lm", 0))
    config = search_config(tmp_path, ["threshold"], 3)
    report = search(with_strategies(config, ["simple_lm", "verifier", "threshold"]))
    first = sorted(report.rows, key=lambda row: row.number)[:3]
    assert [row.strategy for row in first] == ["threshold", "verifier", "simple_lm"]


def test_a_slow_starting_lm_strategy_that_wins_on_all_of_dev_is_kept(tmp_path, monkeypatch) -> None:
    """Wrong on the first rows it judges, a quarter of the first rung's, right on every
    other: the early rungs test at a level spent in proportion to the rows seen, so a
    start this slow does not drop a judge that wins on all of dev."""
    from judgecal.calibrate.selection import interleaved

    config = search_config(tmp_path, ["threshold"], 2, n_groups=80, dev_chunk=8)
    dev = dev_rows_of(config)
    first = {dev[i].id for i in interleaved(dev, config.search.seed)[:6]}
    monkeypatch.setitem(STRATEGIES, "slow", scripted_spec("slow", 9, wrong_if=lambda row: row.id in first))
    report = search(with_strategies(config, ["threshold", "slow"]))
    states = {row.strategy: row.state for row in report.rows}
    assert states["slow"] == "COMPLETE", report.rows
    assert report.best is not None and report.best.strategy == "slow"


def test_the_pruners_rungs_grow_threefold_and_early_ones_test_at_a_stricter_level() -> None:
    from judgecal.calibrate.pruning import PairedMeanPruner

    pruner = PairedMeanPruner.for_dev(600, 16, 0.1)
    assert (pruner.n_startup_steps, pruner.rungs) == (200, (23, 67))
    assert [pruner.level(n) for n in (16, 32, 48, 64, 80, 192, 208, 224)] == [
        None,
        pytest.approx(0.1 * 23 / 200),
        None,
        None,
        pytest.approx(0.1 * 67 / 200),
        None,
        0.1,
        0.1,
    ]


class TakenForLostJudge(ScriptedJudge):
    """Judges like a scripted judge, but the first time it is asked, another worker takes
    its trial for lost, as a peer does when this worker sent no heartbeat for longer than
    the grace period (swapped out, suspended, starved of CPU): the trial is failed."""

    def __init__(self, storage: str, taken: list[int]) -> None:
        super().__init__()
        self.storage = storage
        self.taken = taken

    def predict(self, rows, *, progress=None, description=""):
        if not self.taken:
            [name] = optuna.get_all_study_names(self.storage)
            peer = optuna.load_study(study_name=name, storage=self.storage)
            [running] = peer.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            peer._storage.set_trial_state_values(running._trial_id, optuna.trial.TrialState.FAIL)
            self.taken.append(running.number)
        return super().predict(rows, progress=progress, description=description)


def test_a_worker_whose_trial_was_taken_for_lost_drops_its_result_and_goes_on(tmp_path, monkeypatch) -> None:
    config = search_config(tmp_path, ["threshold", "stalled"], 2)
    taken: list[int] = []
    spec = StrategySpec(
        "stalled",
        "scripted",
        "a judge whose trial another worker takes for lost",
        lambda env, params: TakenForLostJudge(config.search.storage, taken),
        lambda trial, env: {},
        8,
        calls_lm_to_fit=True,
    )
    monkeypatch.setitem(STRATEGIES, "stalled", spec)
    messages: list[str] = []
    report = run_search(config, config.search, track=False, log=messages.append)
    [lost] = taken
    assert {row.number: row.state for row in report.rows}[lost] == "FAIL"
    assert len([row for row in report.rows if row.state == "COMPLETE" and row.duplicate_of is None]) == 2
    assert any(f"trial {lost}" in message and "lost" in message for message in messages), messages


def test_strategies_that_make_no_lm_calls_are_scored_on_every_fold_and_never_pruned(tmp_path) -> None:
    config = search_config(tmp_path, ["verifier", "threshold"], 3, folds=4)
    report = search(config)
    scored = [row for row in report.rows if row.duplicate_of is None]
    assert {row.state for row in scored} == {"COMPLETE"}
    assert {row.rule for row in scored} == {"cv"}
    assert all(row.se is not None and row.se >= 0 for row in scored)


# --- the budget ------------------------------------------------------------------------------------


def test_repeated_settings_are_answered_and_do_not_count_toward_the_budget(tmp_path) -> None:
    config = search_config(tmp_path, ["threshold", "base_rate", "verifier"], 5, max_repeats=50)
    report = search(config)
    distinct = [row for row in report.rows if row.answered_from is None]
    repeats = [row for row in report.rows if row.duplicate_of is not None]
    assert len(distinct) == 5
    # Each tried: on verdicts of 0 or 1 their default cuts are one judge, the second answered from the first.
    assert {row.strategy for row in report.rows if row.duplicate_of is None} == {"threshold", "base_rate", "verifier"}
    by_number = {row.number: row for row in report.rows}
    for row in repeats:
        assert row.score == by_number[row.duplicate_of].score


def test_a_trial_whose_judge_is_an_earlier_ones_is_answered_from_it_and_does_not_count(tmp_path) -> None:
    """On verdicts of 0 or 1 every cut between them is one judge: the base rate's cut and
    the threshold's give the same out-of-fold verdicts, so the second is the first again."""
    from judgecal.pipeline.search import leaderboard_markdown

    config = search_config(tmp_path, ["threshold", "base_rate"], 2, max_repeats=3)
    report = search(config)
    [first, second] = sorted((row for row in report.rows if row.duplicate_of is None), key=lambda r: r.number)
    assert (first.same_judge_as, second.same_judge_as) == (None, first.number)
    assert second.score == first.score and second.state == "COMPLETE"
    assert not report.complete  # one distinct judge only: the space is exhausted before 2
    assert report.best is not None and report.best.number == first.number
    assert f"(same judge as trial {first.number})" in leaderboard_markdown(report)


def test_an_lm_trial_whose_judge_gives_an_earlier_ones_dev_verdicts_is_the_same_judge(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(STRATEGIES, "right", scripted_spec("right", 8))
    monkeypatch.setitem(STRATEGIES, "also_right", scripted_spec("also_right", 9))
    config = search_config(tmp_path, ["right", "also_right", "verifier"], 3, max_repeats=50)
    report = search(config)
    by_strategy = {row.strategy: row for row in report.rows if row.duplicate_of is None}
    assert by_strategy["also_right"].same_judge_as == by_strategy["right"].number
    assert by_strategy["verifier"].same_judge_as is None
    assert len({row.number for row in report.rows if row.answered_from is None}) == 3  # verifier tuned once more


def test_a_same_judge_trial_that_called_the_model_counts_toward_the_trials() -> None:
    """The dry run bounds a search by ``trials`` trials: a trial found to be an earlier
    judge after it called the model spent those calls and counts; a repeat of earlier
    settings (its usage copied from that trial) and a same judge without calls do not."""
    from judgecal.calibrate.search import distinct_finished

    study = optuna.create_study(direction="maximize")
    for attrs in (
        {"lm_calls": 40},
        {"same_judge_as": 0, "lm_calls": 40},
        {"same_judge_as": 0, "lm_calls": 0, "cached_calls": 12},
        {"same_judge_as": 0, "lm_calls": 0},
        {"duplicate_of": 0, "lm_calls": 40},
    ):
        study.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}, user_attrs=attrs))
    assert distinct_finished(study) == 3


def test_a_search_space_with_nothing_new_left_stops(tmp_path) -> None:
    config = search_config(tmp_path, ["threshold", "base_rate"], 6, max_repeats=4)
    report = search(config)
    assert len([row for row in report.rows if row.duplicate_of is None]) == 2  # each strategy's defaults
    # Four proposals in a row brought nothing new: the second default cut (on verdicts of 0 or 1,
    # the first's judge again), then three repeated settings.
    assert len([row for row in report.rows if row.answered_from is not None]) == 4
    assert not report.complete


def trial_sequence(report) -> list[tuple[str, tuple]]:
    return [(row.strategy, tuple(sorted(row.params.items()))) for row in sorted(report.rows, key=lambda r: r.number)]


def test_the_same_seed_gives_the_same_sequence_of_trials(tmp_path) -> None:
    runs = []
    for name, worker in (("a", 0), ("b", 0), ("c", 1)):
        folder = tmp_path / name
        folder.mkdir()
        config = search_config(folder, ["verifier", "threshold"], 4, seed=3, worker=worker)  # 2 defaults, 2 sampled
        runs.append(trial_sequence(search(config)))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]  # another worker of the study samples other settings


@pytest.mark.skipif(
    not embeddings_available(),
    reason='needs the embeddings extra (pip install -e ".[embeddings]"): '
    "without its verifier the default stack scores below κ 1 here",
)
def test_the_search_knows_which_trial_ran_a_strategys_default_settings(tmp_path) -> None:
    report = search(search_config(tmp_path, ["stacking"], 2))  # the defaults, then one tuned trial
    assert report.choice is not None
    first = min(report.rows, key=lambda row: row.number)  # the enqueued default settings
    # every trial scores κ 1 on these rows, so no tuned one beats the defaults
    assert report.choice.winner.number == first.number and report.choice.winner.default
    tuned = [row for row in report.rows if row.number != first.number and row.duplicate_of is None]
    assert tuned and all(row.params != first.params for row in tuned)


@pytest.fixture
def guards(monkeypatch) -> list[RowGuard]:
    """Every RowGuard that checks rows during the test, in the order they first do."""
    seen: list[RowGuard] = []
    original = RowGuard.check

    def spy(self: RowGuard, rows, step):
        if self not in seen:
            seen.append(self)
        return original(self, rows, step)

    monkeypatch.setattr(RowGuard, "check", spy)
    return seen


# --- the winner --------------------------------------------------------------------------------------


def test_the_winner_is_refitted_on_train_and_dev_and_only_then_judged_on_test(tmp_path, guards) -> None:
    config = search_config(tmp_path, ["verifier"], 2)
    report = search(config)
    [guard] = guards
    assert report.calibration is not None and report.best is not None
    split = report.calibration.split
    refit = guard.seen["verifier: fit on train + dev"]
    assert refit == {row.id for row in (*split.train.rows, *split.dev.rows)}
    for step, ids in guard.seen.items():
        assert not (ids & guard.forbidden), step
    assert report.calibration.agreement is not None
    assert report.calibration.agreement.rows == len(split.test.rows)


# --- the selection rule ------------------------------------------------------------------------


def candidate(
    number: int, strategy: str, complexity: int, folds: list[float] | None, value=None, preds=None, default=False
):
    rule = "cv" if folds is not None else "dev"
    score = SelectionScore(
        rule=rule,
        value=float(np.mean(folds)) if folds is not None else value,
        se=float(np.std(folds, ddof=1) / np.sqrt(len(folds))) if folds is not None else None,
        folds=folds,
        predictions=preds or {},
    )
    return Candidate(number, strategy, complexity, {}, score, default=default)


def test_the_best_cross_validated_strategy_wins_when_clearly_ahead_on_every_fold() -> None:
    dev = recorded_rows().rows[:40]
    stack = candidate(0, "stacking", 4, [0.50, 0.40, 0.55, 0.45, 0.52])
    verifier = candidate(1, "verifier", 2, [0.40, 0.31, 0.46, 0.36, 0.43])  # 0.09 behind on every fold
    assert choose([stack, verifier], RELEVANCE, dev).winner is stack


def test_a_simpler_strategy_within_one_paired_standard_error_wins() -> None:
    dev = recorded_rows().rows[:40]
    stack = candidate(0, "stacking", 4, [0.50, 0.40, 0.55, 0.45, 0.52])
    verifier = candidate(1, "verifier", 2, [0.52, 0.38, 0.56, 0.43, 0.51])  # behind by 0.004, noisily
    choice = choose([stack, verifier], RELEVANCE, dev)
    assert choice.winner is verifier
    assert any("simpler" in step for step in choice.steps)


def test_the_one_standard_error_rule_keeps_its_plain_standard_error() -> None:
    """Across strategies the rule is Breiman's, on the plain standard error of the paired
    difference: a simpler strategy 1.2 of them behind is not chosen (with the standard error
    corrected for shared training rows it would be, at 0.8 of one)."""
    dev = recorded_rows().rows[:40]
    base = [0.50, 0.40, 0.55, 0.45, 0.52]
    stack = candidate(0, "stacking", 4, base)
    behind = [0.05, -0.02, 0.03, -0.01, 0.03]
    verifier = candidate(1, "verifier", 2, [b - d for b, d in zip(base, behind, strict=True)])
    assert choose([stack, verifier], RELEVANCE, dev).winner is stack


def test_a_strategys_default_settings_win_over_tuned_ones_within_one_paired_standard_error() -> None:
    dev = recorded_rows().rows[:40]
    default = candidate(0, "stacking", 4, [0.50, 0.40, 0.55, 0.45, 0.52], default=True)
    tuned = candidate(5, "stacking", 4, [0.53, 0.38, 0.58, 0.44, 0.54])  # ahead by 0.01, noisily
    choice = choose([default, tuned], RELEVANCE, dev)
    assert choice.winner is default
    assert any("default settings" in step for step in choice.steps)
    clearly = candidate(6, "stacking", 4, [0.56, 0.46, 0.61, 0.50, 0.58])  # ahead on every fold
    assert choose([default, tuned, clearly], RELEVANCE, dev).winner is clearly


def test_the_standard_error_over_folds_counts_their_shared_training_rows() -> None:
    """Five folds' judges share three quarters of their training rows, so their differences
    are correlated: the standard error is the plain one times 1.5 (Nadeau & Bengio's
    1/K + 1/(K − 1) for the variance), and a lead of 1.5 plain standard errors (1.0 corrected)
    is no longer enough for a tuned setting to replace the defaults."""
    first, second = [0.50, 0.40, 0.55, 0.45, 0.52], [0.45, 0.41, 0.52, 0.46, 0.49]
    diff = np.subtract(first, second)
    assert corrected_paired_se(first, second) == pytest.approx(np.std(diff, ddof=1) * np.sqrt(1 / 5 + 1 / 4))
    plain = np.std(diff, ddof=1) / np.sqrt(5)
    assert diff.mean() / plain == pytest.approx(1.5, abs=0.01)
    dev = recorded_rows().rows[:40]
    default = candidate(0, "stacking", 4, second, default=True)
    tuned = candidate(5, "stacking", 4, first)
    assert choose([default, tuned], RELEVANCE, dev).winner is default


def test_the_lead_tuned_settings_need_grows_with_how_many_were_tried() -> None:
    """The best of many tuned settings leads the defaults by chance more often than one
    does: a lead of 1.5 paired standard errors replaces the defaults when it is the only
    tuned setting (the bar: 1.14, Student's t with 4 degrees of freedom), and not when it is
    the best of twelve."""
    dev = recorded_rows().rows[:40]
    base = [0.50, 0.40, 0.55, 0.45, 0.52]
    default = candidate(0, "stacking", 4, base, default=True)
    lead = [0.05, -0.01, 0.04, 0.01, 0.03]  # +0.024, corrected paired SE 0.016: 1.49 standard errors
    best = candidate(5, "stacking", 4, [b + d for b, d in zip(base, lead, strict=True)])
    assert choose([default, best], RELEVANCE, dev).winner is best
    rng = np.random.default_rng(0)
    others = [candidate(6 + k, "stacking", 4, [b - 0.01 + rng.normal(0, 0.01) for b in base]) for k in range(11)]
    choice = choose([default, best, *others], RELEVANCE, dev)
    assert choice.winner is default
    assert any("the best of 12 tuned settings" in step for step in choice.steps)


def test_a_dev_scored_strategy_must_beat_the_cross_validated_choice_on_the_same_rows() -> None:
    dev = list(recorded_rows(n_groups=12).rows)
    truth = {row.id: row.label for row in dev}
    rng = np.random.default_rng(0)
    noisy = {k: (v if rng.uniform() < 0.8 else not v) for k, v in truth.items()}
    cheap = candidate(0, "verifier", 2, [0.5] * 5, preds=noisy)
    close = candidate(
        1, "mipro", 8, None, value=0.6, preds={k: (v if rng.uniform() < 0.8 else not v) for k, v in truth.items()}
    )
    assert choose([cheap, close], RELEVANCE, dev).winner is cheap
    perfect = candidate(2, "mipro", 8, None, value=1.0, preds=truth)
    assert choose([cheap, perfect], RELEVANCE, dev).winner is perfect


# --- studies that outlive a process ------------------------------------------------------------------


def search_command(config: Path, storage: str, trials: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "judgecal.cli",
        "calibrate",
        str(config),
        "--strategies",
        "verifier,threshold,base_rate",
        "--trials",
        str(trials),
        "--storage",
        storage,
        "--study-name",
        "shared",
        *extra,
    ]


def worker_environment(home: Path) -> dict[str, str]:
    """A search worker's environment: its own workspace, and lines printed whole, unwrapped
    and at once, so that a test can follow the search by what it prints."""
    (home / "mlruns").mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "JUDGECAL_HOME": str(home),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "1000",
    }


STARTED = re.compile(r"trial (\d+): \S+ \{.*\}$")  # 'trial 4: verifier {'C': 0.69}': fitting begins


def started(line: str) -> int | None:
    """The trial whose fitting a worker's line says has begun (not a repeat answered from an
    earlier trial, which the line also ends with)."""
    match = STARTED.match(line)
    return int(match.group(1)) if match else None


def age_heartbeats(storage: str, numbers: list[int]) -> None:
    """Date the last heartbeat of these trials of study ``shared`` to 2000, as if their
    worker had been gone for longer than any grace period: a fake clock for Optuna's check
    of stale trials, which compares heartbeats with the database's time."""
    import datetime

    import sqlalchemy

    study = optuna.load_study(study_name="shared", storage=storage)
    ids = [trial._trial_id for trial in study.get_trials(deepcopy=False) if trial.number in numbers]
    engine = sqlalchemy.create_engine(storage, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.begin() as connection:
            for trial_id in ids:
                then = {"then": datetime.datetime(2000, 1, 1), "id": trial_id}
                aged = connection.execute(
                    sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = :then WHERE trial_id = :id"), then
                )
                if aged.rowcount == 0:  # stopped before its heartbeat thread first wrote
                    connection.execute(
                        sqlalchemy.text("INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (:id, :then)"), then
                    )
    finally:
        engine.dispose()


def test_a_trial_stopped_before_its_first_heartbeat_is_aged_all_the_same(tmp_path) -> None:
    """A worker may be stopped between a trial's start and its heartbeat thread's first
    write: the fake clock must still make that trial stale."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name="shared", storage=storage)
    trial = study.ask()  # running, with no heartbeat written yet
    age_heartbeats(url, [trial.number])
    assert storage._get_stale_trial_ids(study._study_id) == [trial._trial_id]


FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def finished(storage: str) -> list[optuna.trial.FrozenTrial]:
    """Trials that count toward the study's total: complete or pruned, neither repeats of
    earlier settings nor the same judge as an earlier trial."""
    from judgecal.calibrate.search import answered_from

    study = optuna.load_study(study_name="shared", storage=storage)
    return [t for t in study.get_trials(deepcopy=False) if t.state in FINISHED and answered_from(t) is None]


@pytest.mark.slow
def test_a_killed_study_resumes_and_runs_only_the_remaining_trials(tmp_path: Path) -> None:
    config = write_study_config(tmp_path)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    worker = subprocess.Popen(
        search_command(config, storage, 10, "--no-track"),
        env=worker_environment(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        # Killed once three trials that count are stored: when the trial after the third begins
        # (a trial that turns out to be an earlier one's judge does not count).
        output, scored, line = Output([worker]), 0, ""
        while scored < 3 or started(line) is None:
            _, line = output.wait_for(lambda _, line: " κ " in line or started(line) is not None)
            scored += " κ " in line and "same judge as" not in line
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    before = {t.number: t.value for t in finished(storage)}
    assert 3 <= len(before) < 10
    study = optuna.load_study(study_name="shared", storage=storage)
    running = [t.number for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    age_heartbeats(storage, running)  # past the grace period: the killed worker's running trial is stale
    assert main([*search_command(config, storage, 10, "--no-track")[3:]]) == 0
    after = finished(storage)
    assert len(after) == 10
    # Trials finished before the kill are kept as they were, not run again.
    assert {t.number: t.value for t in after if t.number in before} == before


@pytest.mark.slow
def test_two_workers_share_one_study_without_duplicate_trials(tmp_path: Path) -> None:
    config = write_study_config(tmp_path, heartbeat=5, grace=120)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    workers = [
        subprocess.Popen(
            [*search_command(config, storage, 8), "--worker", str(number)],
            env=worker_environment(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for number in range(2)
    ]
    try:
        # Both take part however their start-ups differ: the first to begin fitting a trial
        # is stopped until the other begins one too.
        output = Output(workers)
        first, _ = output.wait_for(lambda _, line: started(line) is not None)
        freeze_outside_a_transaction(workers[first], tmp_path / "optuna.db")
        try:
            output.wait_for(lambda index, line: index != first and started(line) is not None)
        finally:
            thaw(workers[first])
        outputs = [output.rest(number) for number in range(2)]
        codes = [worker.wait() for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
    for number, (code, out) in enumerate(zip(codes, outputs, strict=True)):
        print(f"worker {number}, exit {code}:\n{out}")
    assert codes == [0, 0]  # their whole output is in the captured stdout
    study = optuna.load_study(study_name="shared", storage=storage)
    done = finished(storage)
    assert 8 <= len(done) <= 9  # each worker stops at 8; one may have started its last trial at 7
    settings = [tuple(sorted(t.params.items())) for t in done]
    assert len(settings) == len(set(settings))  # no settings were fitted twice
    assert len({t.user_attrs["worker"] for t in done}) == 2  # both workers contributed

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    parent = study.user_attrs["mlflow_parent_run_id"]
    children = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.mlflow.parentRunId = '{parent}'", output_format="list"
    )
    assert len(children) == len(study.trials)  # every trial, repeats included, is a child run
    artifacts = {a.path for a in mlflow.artifacts.list_artifacts(run_id=parent)}
    assert {"leaderboard.md", "leaderboard.json", "bundle"} <= artifacts


# --- failures --------------------------------------------------------------------------------


def failing_strategy(monkeypatch, name: str, error: Exception) -> None:
    """Registers strategy ``name``, whose fit raises ``error``, for this test."""

    class Failing(ScriptedJudge):
        def fit(self, train, dev=None):
            raise error

    spec = StrategySpec(name, "scripted", "fails to fit", lambda env, params: Failing(), lambda t, e: {}, 9)
    monkeypatch.setitem(STRATEGIES, name, spec)


def test_a_leak_inside_a_trial_stops_the_whole_search(tmp_path, monkeypatch) -> None:
    from judgecal.calibrate.guard import LeakError

    failing_strategy(monkeypatch, "leaky", LeakError("1 test rows reached 'scripted: fit', e.g. ['g0-0']"))
    config = search_config(tmp_path, ["threshold", "leaky"], 4)
    with pytest.raises(LeakError):
        search(config)


def test_a_failed_trial_keeps_its_reason_without_the_servers_password(tmp_path, monkeypatch, capfd) -> None:
    """A trial's error is saved in the study and tagged on its MLflow run; an LM error
    names the server as ``user:password@host``, and the password is hidden there. The
    search says it in one line: Optuna's own warning with a traceback is not printed."""
    import mlflow

    error = ConnectionError("[openai/judge] failed to connect to alice:s3cr3t@gpu-box:8000: refused")
    failing_strategy(monkeypatch, "unreachable", error)
    config = search_config(tmp_path, ["threshold", "unreachable"], 2)
    optuna_records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = optuna_records.append  # type: ignore[method-assign]
    logging.getLogger("optuna").addHandler(handler)
    try:
        report = run_search(config, config.search, log=lambda m: None)
    finally:
        logging.getLogger("optuna").removeHandler(handler)
    assert not [record.getMessage() for record in optuna_records if "failed" in record.getMessage()]
    [failed] = [row for row in report.rows if row.strategy == "unreachable"]
    assert failed.state == "FAIL" and "alice:***@gpu-box:8000" in (failed.error or "")
    printed = capfd.readouterr()
    assert "s3cr3t" not in printed.err + printed.out
    assert b"s3cr3t" not in (tmp_path / "optuna.db").read_bytes()
    mlflow.set_tracking_uri(report.tracking_uri)
    tags = [run.data.tags for run in mlflow.search_runs(search_all_experiments=True, output_format="list")]
    assert any("alice:***@" in t.get("judgecal.error", "") for t in tags)
    assert not [t for t in tags if "s3cr3t" in str(t)]


@pytest.mark.parametrize("lm_to_fit", [False, True], ids=["cross-validated", "scored-on-dev"])
def test_a_demo_copied_from_a_test_row_inside_a_trial_stops_the_whole_search(
    tmp_path, monkeypatch, guards, lm_to_fit: bool
) -> None:
    """The guard checks every fit of a trial (each cross-validation fold's included) and the
    demos of what it fitted, recognised by their inputs: bootstrapped demos carry no row id."""
    import dspy

    from judgecal.calibrate.guard import LeakError
    from judgecal.data.rows import load_rows
    from judgecal.data.split import split_by_group
    from judgecal.judges.program import JudgeProgram

    config = search_config(tmp_path, ["copier"], 2)
    rows = recorded_rows(n_groups=14).rows  # the rows search_config wrote, each prompt made unique
    unique = [
        row.model_copy(update={"inputs": {**row.inputs, "prompt": f"{row.id}: {row.inputs['prompt']}"}}) for row in rows
    ]
    write_jsonl(config.judge.data, [row.to_record() for row in unique])
    split = split_by_group(load_rows(config.judge.data, RELEVANCE.spec), config.split)
    leaked = split.test.rows[0]

    class Copier(ScriptedJudge):
        def fit(self, train, dev=None):
            self.program = JudgeProgram(RELEVANCE.signature)
            self.program.predict.demos = [dspy.Example(**leaked.inputs, relevant=leaked.label)]  # no row_id
            return self

    build = lambda env, params: Copier()  # noqa: E731
    spec = StrategySpec("copier", "scripted", "copies a test row", build, lambda t, e: {}, 9, calls_lm_to_fit=lm_to_fit)
    monkeypatch.setitem(STRATEGIES, "copier", spec)
    with pytest.raises(LeakError, match=r"reached 'copier: demos' as a demo"):
        search(config)
    [guard] = guards
    fitted = guard.seen["copier: fit" if lm_to_fit else "copier: fit (cross-validation)"]
    assert fitted and fitted <= {row.id for row in (*split.train.rows, *split.dev.rows)}


def test_calibrating_a_verdicts_file_finishes_its_runs_and_says_why_nothing_is_exported(tmp_path) -> None:
    import mlflow

    dataset = recorded_rows(n_groups=14)
    data = write_jsonl(tmp_path / "rows.jsonl", [row.to_record() for row in dataset.rows])
    verdicts = write_jsonl(
        tmp_path / "verdicts.jsonl",
        [{"id": r.id, "verdict": r.reference_judges["loose"], "probability": 0.8} for r in dataset.rows],
    )
    config = ExperimentConfig(
        judge=JudgeSection(name="from-file", task="relevance", data=data, verdicts=verdicts, register_as="from-file"),
        search=SearchConfig(strategies=["threshold", "stacking"], trials=2, storage=f"sqlite:///{tmp_path / 's.db'}"),
    )
    messages: list[str] = []
    report = run_search(config, config.search, log=messages.append)
    assert {row.state for row in report.rows} == {"COMPLETE"}
    assert report.calibration is not None and report.calibration.tracked is not None
    not_exported = report.calibration.tracked.not_exported
    assert not_exported and "verdicts.jsonl" in not_exported and "--recorded" in not_exported
    assert any("no judge bundle" in m for m in messages)
    mlflow.set_tracking_uri(report.tracking_uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert runs and {run.info.status for run in runs} == {"FINISHED"}
    assert report.calibration.registry is None  # nothing to register


def test_a_worker_that_finds_its_winner_reported_while_it_ran_records_nothing_more(tmp_path) -> None:
    """The workers of a study report into one parent run, one at a time: a worker that
    finds the same finished trials and settings reported by another since it started
    records nothing more; a later run of the same search reports again, as it did before."""
    import mlflow

    from judgecal.pipeline.calibration import prepare
    from judgecal.pipeline.search import search_prepared
    from judgecal.workspace import Workspace, set_process_environment

    set_process_environment()
    config = search_config(tmp_path, ["threshold", "verifier"], 2)
    assert config.search is not None
    workspace = Workspace.find()
    started_first = prepare(config, workspace, log=lambda m: None)  # a worker that started before the other reported
    first = run_search(config, config.search, workspace=workspace, log=lambda m: None)
    assert first.calibration is not None and first.calibration.tracked is not None
    experiment = first.calibration.tracked.experiment_id
    said: list[str] = []
    other = search_prepared(started_first, config.search, log=said.append)
    assert other.calibration is None and other.reported_in == first.parent_run_id
    assert any("by another worker while this one ran" in m for m in said)
    mlflow.set_tracking_uri(first.tracking_uri)
    assert len(mlflow.search_logged_models(experiment_ids=[experiment], output_format="list")) == 1
    again = run_search(config, config.search, workspace=workspace, log=lambda m: None)
    assert again.calibration is not None and again.parent_run_id == first.parent_run_id
    assert len(mlflow.search_logged_models(experiment_ids=[experiment], output_format="list")) == 2


class FailsOnDev(FittedJudge):
    """The recorded judge, except that asking it about any dev row raises ``error``."""

    def __init__(self, dev_ids: frozenset[str], error: Exception) -> None:
        from judgecal.judges.fitted import RecordedJudge

        self.dev_ids = dev_ids
        self.error = error
        self.recorded = RecordedJudge(RELEVANCE, "loose", "searched")

    @property
    def task(self):
        return RELEVANCE

    def predict(self, rows, *, progress=None, description=""):
        if any(row.id in self.dev_ids for row in rows):
            raise self.error
        return self.recorded.predict(rows)


def prepared_with_raw_failing_on_dev(tmp_path: Path, error: Exception):
    import dataclasses

    from judgecal.judges.fitted import MemoJudge
    from judgecal.pipeline.calibration import prepare
    from judgecal.workspace import Workspace

    config = search_config(tmp_path, ["verifier"], 2)
    prepared = prepare(config, Workspace(tmp_path), log=lambda m: None)
    dev_ids = frozenset(row.id for row in prepared.split.dev.rows)
    return config, dataclasses.replace(prepared, raw=MemoJudge(FailsOnDev(dev_ids, error)))


def test_a_raw_judge_without_answers_on_dev_leaves_the_leaderboards_raw_row_out(tmp_path) -> None:
    """The raw judge's dev score is the leaderboard's first row; a judge model that gives
    no answer there leaves that row out and says so, and the search goes on."""
    from judgecal.judges.program import JudgeFailedError
    from judgecal.pipeline.search import search_prepared

    error = JudgeFailedError("judge 'searched' failed on its first 3 rows; the last error: refused")
    config, prepared = prepared_with_raw_failing_on_dev(tmp_path, error)
    messages: list[str] = []
    report = search_prepared(prepared, config.search, track=False, log=messages.append)
    assert report.raw_dev is None
    assert report.calibration is not None and report.best is not None
    assert any(m.startswith("raw judge on dev: no score") and "failed on its first 3 rows" in m for m in messages)


def test_any_other_error_while_scoring_the_raw_judge_on_dev_propagates(tmp_path) -> None:
    """Only a judge model that gives no answer is the leaderboard's to leave out: a bug
    (here a TypeError) stops the search instead of quietly dropping a row."""
    from judgecal.pipeline.search import search_prepared

    config, prepared = prepared_with_raw_failing_on_dev(tmp_path, TypeError("a bug in a judge"))
    with pytest.raises(TypeError, match="a bug in a judge"):
        search_prepared(prepared, config.search, track=False, log=lambda m: None)

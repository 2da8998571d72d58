"""The Optuna study over strategies and their settings, selecting without touching test.

Each trial picks a strategy and its settings and is scored by the rule that fits its
cost (:mod:`judgecal.calibrate.selection`): grouped cross-validation over train + dev for
strategies that make no LM calls to fit, dev hold-out for those that do. Only the
second kind can be pruned, from its first rung (a ninth of dev, judged in an order that
interleaves groups) on, by a paired test of its per-row scores against the best judge's
so far (:class:`~judgecal.calibrate.pruning.PairedMeanPruner`).

The budget goes to distinct questions: every strategy's default settings are tried
first, cheapest first; settings already tried are answered from the earlier trial and do
not count toward ``trials``, nor does a trial whose judge gives the same held-out
verdicts and probabilities as an earlier one's (:func:`same_judge`). The same ``seed``
(and ``worker``) gives the same sequence of trials. The raw judge's answers are kept per row for the whole search (a
:class:`~judgecal.judges.fitted.MemoJudge`), so no trial asks the model about a row
another trial already asked about.

At the end the selection rule picks the winner, which is fitted again on train + dev
(strategies that call the model to fit keep the program their trial compiled). Studies
live in Optuna storage (SQLite or any RDB URL, :mod:`judgecal.calibrate.storage`), so
several processes or machines can share one; a killed worker's trial is run again once
its heartbeat lapses. Recording trials and the winner in MLflow is
:mod:`judgecal.pipeline.search`'s job.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from judgecal.backends.calls import LMUsage
from judgecal.calibrate.budget import SearchBudget
from judgecal.calibrate.guard import LeakError, RowGuard
from judgecal.calibrate.pruning import DEV_ROW_SCORES
from judgecal.calibrate.search_config import SearchConfig
from judgecal.calibrate.selection import Candidate, Choice, SelectionScore, choose, cross_validate, holdout, row_scores
from judgecal.calibrate.storage import LOST_TRIAL, taken_for_lost
from judgecal.calibrate.strategies import FitResult, StrategyEnv, StrategySpec, fit_judge
from judgecal.data.rows import LabeledRow
from judgecal.judges.verifiers import grouped_folds, memoised_fits
from judgecal.redact import redact_text


class StrategyFailed(RuntimeError):
    """A trial's strategy raised: the trial is recorded as failed and the search goes on."""


@dataclass
class TrialRow:
    number: int
    state: str
    strategy: str
    params: dict[str, Any]
    rule: str | None
    score: float | None
    se: float | None
    lm_calls: int | None
    seconds: float | None
    run_id: str | None
    worker: str | None
    duplicate_of: int | None = None
    error: str | None = None
    pruned_after: int | None = None
    skipped: str | None = None
    cached_calls: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    same_judge_as: int | None = None

    @property
    def answered_from(self) -> int | None:
        """The earlier trial this one stands for: a repeat of its settings, or the same judge."""
        return self.duplicate_of if self.duplicate_of is not None else self.same_judge_as


def score_trial(
    trial: Any,
    spec: StrategySpec,
    env: StrategyEnv,
    params: dict[str, Any],
    train: Sequence[LabeledRow],
    dev: list[LabeledRow],
    folds: list[Any],
    guard: RowGuard,
    search: SearchConfig,
) -> tuple[SelectionScore, FitResult | None]:
    """Score one trial by its rule, with its per-row dev scores for the pruner to compare:
    reported row by row as an LM trial judges dev, kept as :data:`DEV_ROW_SCORES` once a
    cross-validated trial is scored."""
    import time

    import optuna

    from judgecal.backends.calls import LMCallCounter

    task = env.task
    pool = [*train, *dev]
    started = time.perf_counter()
    counter = LMCallCounter()  # the fit's calls and the scoring's
    if spec.scored_on_dev:

        def on_chunk(indices: list[int], scores: Any) -> None:
            for index, value in zip(indices, scores, strict=True):
                if index not in trial_reported:
                    trial.report(float(value), index)
                    trial_reported.add(index)
            if trial.should_prune():
                trial.set_user_attr("pruned_after_rows", len(indices))
                record_usage(trial, counter.usage(env.prices), started)
                raise optuna.TrialPruned()

        trial_reported: set[int] = set()
        with counter.counting():
            result = fit_judge(spec, env, params, train, dev, guard)
            guard.check(dev, f"{spec.name}: score on dev")
            score = holdout(result.judge, task, dev, chunk=search.dev_chunk, seed=search.seed, on_chunk=on_chunk)
    else:
        result = None

        def fit(rows: Any) -> Any:
            return fit_judge(spec, env, params, rows, None, guard, step="fit (cross-validation)").judge

        with counter.counting():
            score = cross_validate(fit, task, pool, folds)
        # The pruner's yardstick, in one write: a report per dev row is a commit each
        scores = row_scores(task, dev, [score.predictions[row.id] for row in dev])
        trial.set_user_attr(DEV_ROW_SCORES, [float(value) for value in scores])
    trial.set_user_attr("rule", score.rule)
    if score.se is not None:
        trial.set_user_attr("se", score.se)
    if score.folds is not None:
        trial.set_user_attr("folds", score.folds)
    trial.set_user_attr("dev_predictions", [_plain(score.predictions.get(row.id)) for row in dev])
    judged = dev if spec.scored_on_dev else pool  # the rows its score comes from
    trial.set_user_attr("judged_labels", [_plain(score.predictions.get(row.id)) for row in judged])
    trial.set_user_attr("judged_probabilities", [score.probabilities.get(row.id) for row in judged])
    record_usage(trial, counter.usage(env.prices), started)
    return score, result


# What a trial spent, as its user attributes (and a repeat's, copied from the trial it repeats).
USAGE_ATTRS = ("lm_calls", "cached_calls", "prompt_tokens", "completion_tokens", "cost_usd", "fit_seconds")


def record_usage(trial: Any, usage: LMUsage, started: float) -> None:
    """The trial's LM calls (cached ones apart), their tokens and cost, and its seconds."""
    import time

    trial.set_user_attr("lm_calls", usage.calls)
    trial.set_user_attr("cached_calls", usage.cached)
    trial.set_user_attr("prompt_tokens", usage.prompt_tokens)
    trial.set_user_attr("completion_tokens", usage.completion_tokens)
    trial.set_user_attr("cost_usd", usage.cost_usd)
    trial.set_user_attr("fit_seconds", round(time.perf_counter() - started, 2))


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, bool | int | str) else str(value)


def final_judge(
    spec: StrategySpec,
    env: StrategyEnv,
    winner: Candidate,
    train: Sequence[LabeledRow],
    dev: Sequence[LabeledRow],
    guard: RowGuard,
    fitted: dict[int, FitResult],
    log: Any,
) -> FitResult:
    """The winner as it is reported and exported: refitted on train + dev, or, for a
    strategy that calls the model to fit, the program its trial compiled (compiled again
    from its settings when another worker ran that trial)."""
    if spec.selects_on_dev:
        if winner.number in fitted:
            return fitted[winner.number]
        log(
            f"{spec.name}: compiling the program of trial {winner.number} again "
            "(another worker or an earlier run ran it)"
        )
        return fit_judge(spec, env, winner.params, train, dev, guard)
    log(f"{spec.name} (trial {winner.number}): fitting again on train + dev")
    return fit_judge(spec, env, winner.params, [*train, *dev], None, guard, step="fit on train + dev")


def enqueue_defaults(study: Any, specs: dict[str, StrategySpec], env: StrategyEnv) -> None:
    """Every strategy's default settings first, cheapest first, once per study: the budget
    answers 'which strategy?' before 'which settings?'. Call it under :func:`study_lock`."""
    if study.user_attrs.get("defaults_enqueued") or study.trials:
        return
    study.set_user_attr("defaults_enqueued", True)
    for spec in sorted(specs.values(), key=lambda s: (s.scored_on_dev, s.complexity, s.name)):
        fixed = default_params(spec, env)
        study.enqueue_trial({"strategy": spec.name, **fixed}, skip_if_exists=True)


def default_params(spec: StrategySpec, env: StrategyEnv) -> dict[str, Any]:
    """The Optuna parameters that reproduce a strategy's default settings: the space is
    sampled once with a recorder that answers each question with the default."""
    recorder = _DefaultRecorder(spec.build(env, {}))
    spec.space(recorder, env)
    return recorder.params


class _DefaultRecorder:
    """Stands in for an Optuna trial: answers every suggestion with the estimator's
    default setting of that name (or the first choice) and records the answers."""

    def __init__(self, estimator: Any) -> None:
        self.defaults = estimator.get_params(deep=False)
        self.params: dict[str, Any] = {}

    def _answer(self, name: str, fallback: Any) -> Any:
        key = name.rsplit(".", 1)[-1]
        value = self.defaults.get(key, fallback)
        if isinstance(value, tuple):
            value = ",".join(value)
        self.params[name] = value
        return value

    def suggest_int(self, name: str, low: int, high: int, **_: Any) -> int:
        return int(min(high, max(low, self._answer(name, low))))

    def suggest_float(self, name: str, low: float, high: float, **_: Any) -> float:
        value = float(min(high, max(low, self._answer(name, low))))
        self.params[name] = value
        return value

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        value = self._answer(name, choices[0])
        if value not in choices:
            value = choices[0]
        self.params[name] = value
        return value


def distinct_finished(study: Any) -> int:
    """Finished trials that count toward the budget: complete or pruned, and failed by their
    own strategy; repeats of earlier settings, trials of killed workers, and trials that
    turned out an earlier one's judge without calling the model do not. (One that called
    the model to find that out counts: the dry run's bound of ``trials`` trials holds.)"""
    from optuna.trial import TrialState

    count = 0
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        if attrs.get("duplicate_of") is not None:
            continue
        if attrs.get("same_judge_as") is not None and not (attrs.get("lm_calls") or attrs.get("cached_calls")):
            continue
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
            trial.state == TrialState.FAIL and "error" in trial.user_attrs
        ):
            count += 1
    return count


def same_settings(trial: Any) -> Any:
    """An earlier finished trial of this study with exactly these settings, if any (a
    trial whose strategy failed counts; one of a killed worker does not)."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    for other in trial.study.get_trials(deepcopy=False, states=states):
        if other.state == TrialState.FAIL and "error" not in other.user_attrs:
            continue
        if other.number != trial.number and other.params == trial.params:
            return other
    return None


def answered_from(trial: Any) -> int | None:
    """The earlier trial a finished one was answered from: the one whose settings it
    repeats, or the one whose judge it turned out to be."""
    attrs = trial.user_attrs
    return attrs.get("duplicate_of") if attrs.get("duplicate_of") is not None else attrs.get("same_judge_as")


# Probabilities of two judges' answers closer than this on every row, with the same
# verdicts, make them one judge: settings that differ only in what no row sees (a
# threshold between two scores no row has, a regularisation already at its limit).
SAME_JUDGE_TOLERANCE = 0.005


def same_judge(trial: Any) -> Any:
    """An earlier complete trial, scored by the same rule, whose judge gave this trial's
    held-out verdicts on every row and each answer's probability within
    :data:`SAME_JUDGE_TOLERANCE` (both without probabilities counts as the same), if any."""
    from optuna.trial import TrialState

    attrs = trial.user_attrs
    labels, probabilities = attrs.get("judged_labels"), attrs.get("judged_probabilities")
    if labels is None:
        return None
    for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        theirs = other.user_attrs
        if other.number == trial.number or answered_from(other) is not None or theirs.get("rule") != attrs.get("rule"):
            continue
        if theirs.get("judged_labels") == labels and _close(theirs.get("judged_probabilities"), probabilities):
            return other
    return None


def _close(first: list[Any] | None, second: list[Any] | None) -> bool:
    if first is None or second is None or len(first) != len(second):
        return False
    for a, b in zip(first, second, strict=True):
        if (a is None) != (b is None) or (a is not None and len(a) != len(b)):
            return False
        if a is not None and any(abs(x - y) > SAME_JUDGE_TOLERANCE for x, y in zip(a, b, strict=True)):
            return False
    return True


def finished_candidates(study: Any, specs: dict[str, StrategySpec]) -> list[Any]:
    from optuna.trial import TrialState

    return [
        trial
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if answered_from(trial) is None and trial.params.get("strategy") in specs and "rule" in trial.user_attrs
    ]


def candidate_of(
    trial: Any, specs: dict[str, StrategySpec], dev: list[Any], defaults: dict[str, dict[str, Any]]
) -> Candidate:
    """A finished trial as a selection candidate; ``defaults`` holds each strategy's default
    Optuna parameters, to tell the trial of its default settings from tuned ones."""
    spec = specs[trial.params["strategy"]]
    attrs = trial.user_attrs
    predictions = attrs.get("dev_predictions") or [None] * len(dev)
    return Candidate(
        number=trial.number,
        strategy=spec.name,
        complexity=spec.complexity,
        params=strategy_params_of(trial),
        default=trial.params == {"strategy": spec.name, **defaults[spec.name]},
        score=SelectionScore(
            rule=attrs["rule"],
            value=float(trial.value),
            se=attrs.get("se"),
            folds=attrs.get("folds"),
            predictions={row.id: label for row, label in zip(dev, predictions, strict=True)},
        ),
    )


def strategy_params_of(trial: Any) -> dict[str, Any]:
    """A trial's Optuna parameters as the strategy's settings (``stacking.C`` → ``C``)."""
    params: dict[str, Any] = {}
    for key, value in trial.params.items():
        if key == "strategy":
            continue
        name = key.rsplit(".", 1)[-1]
        params[name] = tuple(value.split(",")) if name == "verifiers" else value
    return params


def leaderboard(study: Any) -> list[TrialRow]:
    from optuna.trial import TrialState

    rows = []
    run_ids = study.user_attrs
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        rows.append(
            TrialRow(
                number=trial.number,
                state=trial.state.name,
                strategy=str(trial.params.get("strategy", "?")),
                params={k: v for k, v in trial.params.items() if k != "strategy"},
                rule=attrs.get("rule") or ("dev" if trial.state == TrialState.PRUNED else None),
                score=trial.value if trial.state == TrialState.COMPLETE else None,
                se=attrs.get("se"),
                lm_calls=attrs.get("lm_calls"),
                seconds=attrs.get("fit_seconds"),
                run_id=run_ids.get(f"run_id.{trial.number}"),
                worker=attrs.get("worker"),
                duplicate_of=attrs.get("duplicate_of"),
                same_judge_as=attrs.get("same_judge_as"),
                skipped=attrs.get("skipped"),
                error=attrs.get("error") or (LOST_TRIAL if trial.state == TrialState.FAIL else None),
                pruned_after=attrs.get("pruned_after_rows"),
                cached_calls=attrs.get("cached_calls"),
                prompt_tokens=attrs.get("prompt_tokens"),
                completion_tokens=attrs.get("completion_tokens"),
                cost_usd=attrs.get("cost_usd"),
            )
        )
    return sorted(rows, key=lambda r: (r.score is None, -(r.score or 0.0), r.number))


@dataclass
class StudyOutcome:
    """What a search found: every trial, the choice among them and the chosen judge,
    fitted as it will be reported and exported."""

    rows: list[TrialRow]
    choice: Choice | None
    winner: FitResult | None
    new_trials: int
    complete: bool


def run_study(
    study: Any,
    specs: dict[str, StrategySpec],
    env: StrategyEnv,
    train: Sequence[LabeledRow],
    dev: Sequence[LabeledRow],
    guard: RowGuard,
    search: SearchConfig,
    *,
    on_trial: Callable[[Any, Any], None] | None = None,
    log: Any = print,
    budget: SearchBudget | None = None,
) -> StudyOutcome:
    """Run trials until the study holds ``search.trials`` distinct finished ones (or
    proposals only repeat), then choose and refit the winner. ``on_trial(study, trial)``
    sees every finished trial, repeats, pruned, failed and skipped ones included;
    ``budget``: a trial that could overrun it is skipped."""
    import optuna

    dev = list(dev)
    folds = grouped_folds([*train, *dev], search.folds, search.seed)
    trials = TrialRunner(specs, env, train, dev, folds, guard, search, log)
    trials.budget = budget
    callbacks = [on_trial] if on_trial is not None else []
    with memoised_fits(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        new_trials = _run_until_enough(study, trials, search, callbacks, log)
        rows = leaderboard(study)
        choice, winner = _choose_and_refit(study, trials, log)
    return StudyOutcome(
        rows=rows,
        choice=choice,
        winner=winner,
        new_trials=new_trials,
        complete=distinct_finished(study) >= search.trials,
    )


class TrialRunner:
    """This worker's side of a study: Optuna's objective, which answers a repeat of earlier
    settings from that trial, scores anything new by its rule (answered from an earlier
    trial that turns out to be the same judge), and what the worker
    keeps for the end (the judges its LM trials compiled, the trials it started)."""

    def __init__(
        self,
        specs: dict[str, StrategySpec],
        env: StrategyEnv,
        train: Sequence[LabeledRow],
        dev: list[LabeledRow],
        folds: list[Any],
        guard: RowGuard,
        search: SearchConfig,
        log: Any,
    ) -> None:
        self.specs, self.env, self.train, self.dev, self.folds = specs, env, train, dev, folds
        self.guard, self.search, self.log = guard, search, log
        self.worker = f"{os.uname().nodename}:{os.getpid()}"
        self.fitted: dict[int, FitResult] = {}
        self.started: list[int] = []  # the trials this worker ran, to tell its own from a peer's
        self.repeated = False  # whether the last trial repeated settings already tried
        self.budget: SearchBudget | None = None

    def objective(self, trial: Any) -> float:
        self.started.append(trial.number)
        name = trial.suggest_categorical("strategy", sorted(self.specs))
        spec = self.specs[name]
        params = spec.space(trial, self.env)
        trial.set_user_attr("worker", self.worker)
        earlier = same_settings(trial)
        self.repeated = earlier is not None
        if earlier is not None:  # deterministic fits: the same settings give the same judge
            self.log(f"trial {trial.number}: {name} {params} = trial {earlier.number}, answered from it")
            return _answer_from(trial, earlier)
        refusal = self.budget.refusal(spec, params) if self.budget is not None else None
        if refusal is not None:  # finished, and counted toward the trials, as a failed one is
            trial.set_user_attr("skipped", refusal)
            trial.set_user_attr("error", refusal)
            self.log(f"trial {trial.number}: {name} {params} {refusal}")
            raise StrategyFailed(refusal)
        self.log(f"trial {trial.number}: {name} {params}")
        score, result = self._score(trial, spec, params)
        if result is not None:
            self.fitted[trial.number] = result
        same = same_judge(trial)
        if same is not None:  # another question the budget need not answer twice
            trial.set_user_attr("same_judge_as", same.number)
            self.repeated = True
            self.log(f"trial {trial.number}: {name} κ {score.describe()}: same judge as trial {same.number}")
            return float(same.value)
        self.log(f"trial {trial.number}: {name} κ {score.describe()}")
        return score.value

    def _score(self, trial: Any, spec: StrategySpec, params: dict[str, Any]) -> tuple[SelectionScore, FitResult | None]:
        """``score_trial``, saying why when the trial is pruned; a strategy that raises
        fails its trial alone (a leak or Ctrl-C stops the search)."""
        import optuna

        try:
            return score_trial(trial, spec, self.env, params, self.train, self.dev, self.folds, self.guard, self.search)
        except optuna.TrialPruned:
            judged = trial.user_attrs.get("pruned_after_rows")
            self.log(
                f"trial {trial.number}: {spec.name} pruned after {judged} of {len(self.dev)} dev rows: its per-row "
                "scores are clearly below the best trial's on them"
            )
            raise
        except (LeakError, KeyboardInterrupt):
            raise
        except Exception as error:
            reason = redact_text(f"{type(error).__name__}: {error}")  # kept in the study and the run
            trial.set_user_attr("error", reason[:1000])
            self.log(f"trial {trial.number}: {spec.name} failed: {reason[:300]}")
            raise StrategyFailed(reason) from None


def _answer_from(trial: Any, earlier: Any) -> float:
    """A repeat takes the earlier trial's outcome: its value, or its pruning or failure."""
    import optuna
    from optuna.trial import TrialState

    trial.set_user_attr("duplicate_of", earlier.number)
    for key in ("rule", "se", *USAGE_ATTRS):
        if key in earlier.user_attrs:
            trial.set_user_attr(key, earlier.user_attrs[key])
    if earlier.state == TrialState.PRUNED:
        raise optuna.TrialPruned()
    if earlier.state == TrialState.FAIL:
        raise StrategyFailed(earlier.user_attrs["error"])
    return float(earlier.value)


def _run_until_enough(
    study: Any, trials: TrialRunner, search: SearchConfig, callbacks: list[Callable[[Any, Any], None]], log: Any
) -> int:
    """One trial at a time until the study holds enough distinct finished trials, or the
    sampler keeps proposing settings already tried; returns how many trials ran here."""
    new_trials = repeats = 0
    while distinct_finished(study) < search.trials:
        _run_one_trial(study, trials, callbacks, log)
        new_trials += 1
        repeats = repeats + 1 if trials.repeated else 0
        if repeats >= search.max_repeats:
            log(
                f"the last {repeats} trials proposed settings already tried: the search space is exhausted "
                f"after {distinct_finished(study)} distinct trials"
            )
            break
    return new_trials


def _run_one_trial(study: Any, trials: TrialRunner, callbacks: list[Callable[[Any, Any], None]], log: Any) -> None:
    """One trial; its result is dropped, and the search goes on, when a peer took the trial
    for lost while it ran."""
    import optuna

    try:
        study.optimize(trials.objective, n_trials=1, catch=(StrategyFailed,), callbacks=callbacks, gc_after_trial=False)
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError) as error:
        lost = taken_for_lost(study, trials.started[-1] if trials.started else None, error)
        if lost is None:
            raise
        log(
            f"trial {lost}: another worker took it for lost (no heartbeat from here within the grace "
            "period), failed it and queued its settings again; its result here is dropped"
        )


def _choose_and_refit(study: Any, trials: TrialRunner, log: Any) -> tuple[Choice | None, FitResult | None]:
    """The selection rule over every finished trial of the study (any worker's), and the
    winner fitted as it is reported and exported."""
    specs, env = trials.specs, trials.env
    defaults = {name: default_params(spec, env) for name, spec in specs.items()}
    candidates = [candidate_of(trial, specs, trials.dev, defaults) for trial in finished_candidates(study, specs)]
    if not candidates:
        return None, None
    choice = choose(candidates, env.task, trials.dev)
    for step in choice.steps:
        log(f"selection: {step}")
    spec = specs[choice.winner.strategy]
    return choice, final_judge(spec, env, choice.winner, trials.train, trials.dev, trials.guard, trials.fitted, log)

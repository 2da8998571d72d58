"""Searching strategies and their settings with Optuna, selecting without touching test.

Each trial picks a strategy and its settings and is scored by the rule that fits its
cost (:mod:`judgecal.selection`): grouped cross-validation over train + dev for
strategies that make no LM calls to fit, dev hold-out for those that do. Only the
second kind can be pruned, and only after a warm-up of a third of dev, judged in an
order that interleaves groups, by a Wilcoxon test of its per-row scores against the
best trial's (Optuna's ``WilcoxonPruner``).

The budget goes to distinct questions: every strategy's default settings are tried
first, cheapest first; settings already tried are answered from the earlier trial and do
not count toward ``trials``. The same ``seed`` (and ``worker``) gives the same sequence of
trials. The raw judge's answers are kept per row for the whole search, so no trial asks
the model about a row another trial already asked about.

At the end the selection rule picks the winner, which is fitted again on train + dev
(strategies that call the model to fit keep the program their trial compiled), judged on
test once beside the raw judge, and recorded in the study's parent MLflow run with the
leaderboard. Studies live in Optuna storage (``mlruns/optuna.db`` or any RDB URL), so
several processes or machines can share one; a killed worker's trial is run again once
its heartbeat lapses.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from judgecal.experiment import (
    CalibrationReport,
    ExperimentConfig,
    Prepared,
    SearchConfig,
    prepare,
    report_and_record,
)
from judgecal.judges import ProgressFactory
from judgecal.paths import store_dir, store_lock
from judgecal.redact import redact_url as redact
from judgecal.selection import (
    Candidate,
    Choice,
    SelectionScore,
    choose,
    cross_validate,
    holdout,
    row_scores,
)
from judgecal.strategies import (
    FitResult,
    LeakError,
    StrategyEnv,
    StrategySpec,
    fit_judge,
    resolve_strategies,
)
from judgecal.tracking import configure_tracking, ensure_experiment
from judgecal.verifier import grouped_folds, memoised_fits


class StrategyFailed(RuntimeError):
    """A trial's strategy raised: the trial is recorded as failed and the search goes on."""


def default_storage(root: Path) -> str:
    store = store_dir(root)
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'optuna.db'}"


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


@dataclass
class SearchReport:
    study_name: str
    storage: str
    rows: list[TrialRow]
    choice: Choice | None
    calibration: CalibrationReport | None
    raw_dev: float | None = None
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    new_trials: int = 0
    complete: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> TrialRow | None:
        if self.choice is None:
            return None
        return next((row for row in self.rows if row.number == self.choice.winner.number), None)


def run_search(
    config: ExperimentConfig,
    search: SearchConfig,
    *,
    progress: ProgressFactory | None = None,
    track: bool = True,
    tracking_uri: str | None = None,
    root: Path | None = None,
    log: Any = print,
) -> SearchReport:
    prepared = prepare(config, root=root, log=log)
    return search_prepared(prepared, search, progress=progress, track=track, tracking_uri=tracking_uri, log=log)


def search_prepared(
    prepared: Prepared,
    search: SearchConfig,
    *,
    progress: ProgressFactory | None = None,
    track: bool = True,
    tracking_uri: str | None = None,
    log: Any = print,
) -> SearchReport:
    """The search on rows already split: trials see train and dev, the winner is reported
    on test."""
    import optuna
    from optuna.trial import TrialState

    config = prepared.config
    task, split = prepared.task, prepared.split
    env = prepared.env(log)
    specs = {spec.name: spec for spec in resolve_strategies(search.strategies, task, has_program=env.base_is_live)}
    storage_url = search.storage or default_storage(prepared.root)
    study_name = search.study_name or f"{config.judge.name}-{split.fingerprint[:12]}"
    if track:  # a tracking store that cannot be reached fails now, not after the work
        configure_tracking(tracking_uri, prepared.root)
        experiment_id = ensure_experiment(config.judge.name, prepared.root)
    study = open_study(study_name, storage_url, search, len(split.dev.rows), prepared.root)
    check_study(study, split.fingerprint, sorted(specs))
    enqueue_defaults(study, specs, env, prepared.root)
    done = distinct_finished(study)
    log(
        f"study {study_name} in {redact(storage_url)}: {done} of {search.trials} trials finished; "
        f"strategies: {', '.join(specs)}"
    )
    parent_run_id = None
    if track:
        with store_lock(prepared.root):  # one parent run per study, however many workers start together
            parent_run_id = parent_run(study, experiment_id, study_name, storage_url, config, prepared.root)

    dev = list(split.dev.rows)
    pool = [*split.train.rows, *dev]
    folds = grouped_folds(pool, search.folds, search.seed)
    fitted: dict[int, FitResult] = {}
    worker = f"{os.uname().nodename}:{os.getpid()}"
    last: dict[str, bool] = {"repeat": False}

    def objective(trial: optuna.Trial) -> float:
        name = trial.suggest_categorical("strategy", sorted(specs))
        spec = specs[name]
        params = spec.space(trial, env)
        trial.set_user_attr("worker", worker)
        earlier = same_settings(trial)
        last["repeat"] = earlier is not None
        if earlier is not None:  # deterministic fits: the same settings give the same judge
            trial.set_user_attr("duplicate_of", earlier.number)
            for key in ("rule", "se", "lm_calls", "fit_seconds"):
                if key in earlier.user_attrs:
                    trial.set_user_attr(key, earlier.user_attrs[key])
            log(f"trial {trial.number}: {name} {params} = trial {earlier.number}, answered from it")
            if earlier.state == TrialState.PRUNED:
                raise optuna.TrialPruned()
            if earlier.state == TrialState.FAIL:
                raise StrategyFailed(earlier.user_attrs["error"])
            return float(earlier.value)
        log(f"trial {trial.number}: {name} {params}")
        try:
            score, result = score_trial(trial, spec, env, params, prepared, dev, pool, folds, search)
        except (LeakError, optuna.TrialPruned, KeyboardInterrupt):
            raise
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
            trial.set_user_attr("error", reason[:1000])
            log(f"trial {trial.number}: {name} failed: {reason[:300]}")
            raise StrategyFailed(reason) from None
        if result is not None:
            fitted[trial.number] = result
        log(f"trial {trial.number}: {name} κ {score.describe()}")
        return score.value

    def record(study: Any, frozen: Any) -> None:
        if track and parent_run_id is not None:
            log_trial(frozen, study, parent_run_id, experiment_id, tracking_uri, prepared)

    new_trials = 0
    with memoised_fits(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        repeats = 0
        while distinct_finished(study) < search.trials:
            study.optimize(objective, n_trials=1, catch=(StrategyFailed,), callbacks=[record], gc_after_trial=False)
            new_trials += 1
            repeats = repeats + 1 if last["repeat"] else 0
            if repeats >= search.max_repeats:
                log(
                    f"the last {repeats} trials proposed settings already tried: the search space is exhausted "
                    f"after {distinct_finished(study)} distinct trials"
                )
                break
        rows = leaderboard(study)
        raw_dev = _raw_dev_score(prepared, dev)
        candidates = [candidate_of(trial, specs, dev) for trial in finished_candidates(study, specs)]
        choice = choose(candidates, task, dev) if candidates else None
        report = SearchReport(
            study_name=study_name,
            storage=redact(storage_url),
            rows=rows,
            choice=choice,
            calibration=None,
            raw_dev=raw_dev,
            parent_run_id=parent_run_id,
            new_trials=new_trials,
            complete=distinct_finished(study) >= search.trials,
        )
        if choice is None:
            return report
        for step in choice.steps:
            log(f"selection: {step}")
        winner = choice.winner
        spec = specs[winner.strategy]
        result = final_judge(spec, env, winner, prepared, fitted, log)
    distinct = len([r for r in rows if r.duplicate_of is None])
    steps = "\n".join(f"- {step}" for step in choice.steps)
    report.calibration = report_and_record(
        prepared,
        result,
        progress=progress,
        track=track and parent_run_id is not None,
        tracking_uri=tracking_uri,
        log=log,
        run_id=parent_run_id,
        description_extra=(
            f"Selected by a search of {distinct} distinct trials ({len(rows)} with repeats): {winner.strategy} "
            f"(trial {winner.number}). The leaderboard: `leaderboard.md`.\n\n{steps}"
        ),
    )
    if track and parent_run_id is not None:
        report.tracking_uri = report.calibration.tracking_uri
        log_leaderboard(report, prepared)
    return report


def score_trial(
    trial: Any,
    spec: StrategySpec,
    env: StrategyEnv,
    params: dict[str, Any],
    prepared: Prepared,
    dev: list[Any],
    pool: list[Any],
    folds: list[Any],
    search: SearchConfig,
) -> tuple[SelectionScore, FitResult | None]:
    """Score one trial by its rule; report per-row dev scores so the pruner can compare."""
    import time

    import optuna

    from judgecal.calibration import LMCallCounter

    task, guard = prepared.task, prepared.guard
    started = time.perf_counter()
    if spec.scored_on_dev:
        result = fit_judge(spec, env, params, prepared.split.train.rows, dev, guard)
        guard.check(dev, f"{spec.name}: score on dev")

        def on_chunk(indices: list[int], scores: Any) -> None:
            for index, value in zip(indices, scores, strict=True):
                if index not in trial_reported:
                    trial.report(float(value), index)
                    trial_reported.add(index)
            if trial.should_prune():
                trial.set_user_attr("pruned_after_rows", len(indices))
                trial.set_user_attr("lm_calls", result.lm_calls + counter.calls)
                trial.set_user_attr("fit_seconds", round(time.perf_counter() - started, 2))
                raise optuna.TrialPruned()

        trial_reported: set[int] = set()
        counter = LMCallCounter()
        import dspy

        with dspy.context(callbacks=[*dspy.settings.get("callbacks", []), counter]):
            score = holdout(result.judge, task, dev, chunk=search.dev_chunk, seed=search.seed, on_chunk=on_chunk)
        lm_calls = result.lm_calls + counter.calls
    else:
        result = None
        counter = LMCallCounter()
        import dspy

        def fit(rows: Any) -> Any:
            return fit_judge(spec, env, params, rows, None, guard, step="fit (cross-validation)").judge

        with dspy.context(callbacks=[*dspy.settings.get("callbacks", []), counter]):
            score = cross_validate(fit, task, pool, folds)
        lm_calls = counter.calls
        for index, value in enumerate(row_scores(task, dev, [score.predictions[row.id] for row in dev])):
            trial.report(float(value), index)
    trial.set_user_attr("rule", score.rule)
    if score.se is not None:
        trial.set_user_attr("se", score.se)
    if score.folds is not None:
        trial.set_user_attr("folds", score.folds)
    trial.set_user_attr("dev_predictions", [_plain(score.predictions.get(row.id)) for row in dev])
    trial.set_user_attr("lm_calls", lm_calls)
    trial.set_user_attr("fit_seconds", round(time.perf_counter() - started, 2))
    return score, result


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, bool | int | str) else str(value)


def _raw_dev_score(prepared: Prepared, dev: list[Any]) -> float | None:
    """The raw judge's κ on dev, for the leaderboard's first row (its answers are kept)."""
    from judgecal.selection import agreement

    try:
        verdicts = prepared.raw.predict(dev, description="raw: judging dev")
    except Exception:
        return None
    return agreement(prepared.task, [row.label for row in dev], [v.label for v in verdicts])


def final_judge(
    spec: StrategySpec,
    env: StrategyEnv,
    winner: Candidate,
    prepared: Prepared,
    fitted: dict[int, FitResult],
    log: Any,
) -> FitResult:
    """The winner as it is reported and exported: refitted on train + dev, or, for a
    strategy that calls the model to fit, the program its trial compiled (compiled again
    from its settings when another worker ran that trial)."""
    split = prepared.split
    if spec.scored_on_dev:
        if winner.number in fitted:
            return fitted[winner.number]
        log(f"{spec.name}: compiling the program of trial {winner.number} again (another worker ran it)")
        return fit_judge(spec, env, winner.params, split.train.rows, split.dev.rows, prepared.guard)
    log(f"{spec.name} (trial {winner.number}): fitting again on train + dev")
    rows = [*split.train.rows, *split.dev.rows]
    return fit_judge(spec, env, winner.params, rows, None, prepared.guard, step="fit on train + dev")


# ---------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------


def open_study(study_name: str, storage_url: str, search: SearchConfig, dev_rows: int, root: Path) -> Any:
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with store_lock(root), warnings.catch_warnings():
        # Heartbeats are marked experimental in Optuna; they are what fails a killed worker's trial.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(
            url=storage_url,
            heartbeat_interval=search.heartbeat_interval,
            grace_period=search.grace_period,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
        )
        return optuna.create_study(
            study_name=study_name,
            storage=storage,
            direction="maximize",
            load_if_exists=True,
            # Workers of one study take seeds seed + worker, so they propose different settings.
            sampler=optuna.samplers.TPESampler(seed=search.seed + search.worker, constant_liar=True),
            pruner=optuna.pruners.WilcoxonPruner(
                p_threshold=search.prune_p, n_startup_steps=max(2, math.ceil(dev_rows / 3))
            ),
        )


def check_study(study: Any, fingerprint: str, strategies: list[str]) -> None:
    """A study is bound to one data split; resuming it on other rows would mix results."""
    attrs = study.user_attrs
    if "split_fingerprint" not in attrs:
        study.set_user_attr("split_fingerprint", fingerprint)
        study.set_user_attr("strategies", strategies)
        return
    if attrs["split_fingerprint"] != fingerprint:
        raise ValueError(
            f"study {study.study_name!r} was run on another data split (fingerprint "
            f"{attrs['split_fingerprint'][:12]} vs {fingerprint[:12]}); use another --study-name"
        )


def enqueue_defaults(study: Any, specs: dict[str, StrategySpec], env: StrategyEnv, root: Path) -> None:
    """Every strategy's default settings first, cheapest first, once per study: the budget
    answers 'which strategy?' before 'which settings?'."""
    with store_lock(root):
        if study.user_attrs.get("defaults_enqueued") or study.trials:
            return
        study.set_user_attr("defaults_enqueued", True)
    for spec in sorted(specs.values(), key=lambda s: (s.scored_on_dev, s.complexity, s.name)):
        fixed = _default_params(spec, env)
        study.enqueue_trial({"strategy": spec.name, **fixed}, skip_if_exists=True)


def _default_params(spec: StrategySpec, env: StrategyEnv) -> dict[str, Any]:
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
    own strategy; repeats of earlier settings and trials of killed workers do not count."""
    from optuna.trial import TrialState

    count = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get("duplicate_of") is not None:
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


def finished_candidates(study: Any, specs: dict[str, StrategySpec]) -> list[Any]:
    from optuna.trial import TrialState

    return [
        trial
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if trial.user_attrs.get("duplicate_of") is None
        and trial.params.get("strategy") in specs
        and "rule" in trial.user_attrs
    ]


def candidate_of(trial: Any, specs: dict[str, StrategySpec], dev: list[Any]) -> Candidate:
    spec = specs[trial.params["strategy"]]
    attrs = trial.user_attrs
    predictions = attrs.get("dev_predictions") or [None] * len(dev)
    return Candidate(
        number=trial.number,
        strategy=spec.name,
        complexity=spec.complexity,
        params=strategy_params_of(trial),
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
                error=attrs.get("error"),
                pruned_after=attrs.get("pruned_after_rows"),
            )
        )
    return sorted(rows, key=lambda r: (r.score is None, -(r.score or 0.0), r.number))


# ---------------------------------------------------------------------------------------
# MLflow
# ---------------------------------------------------------------------------------------


def storage_param(url: str, root: Path) -> str:
    """The storage as a run records it: a SQLite file relative to the project, any other URL
    without its password."""
    from judgecal.experiment import project_path

    if url.startswith("sqlite:///"):
        return "sqlite:///" + project_path(url.removeprefix("sqlite:///"), root)
    return redact(url)


def parent_run(
    study: Any, experiment_id: str, study_name: str, storage_url: str, config: ExperimentConfig, root: Path
) -> str:
    """The study's MLflow parent run: created by the first worker, reused by the others and
    by a resumed search."""
    import mlflow

    existing = study.user_attrs.get("mlflow_parent_run_id")
    if existing:
        return str(existing)
    client = mlflow.MlflowClient()
    run = client.create_run(
        experiment_id,
        run_name=f"{config.judge.name}: search {study_name} (running)",
        tags={"judgecal.study": study_name, "judgecal.judge": config.judge.name, "judgecal.kind": "search"},
    )
    client.log_param(run.info.run_id, "optuna.storage", storage_param(storage_url, root))
    study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
    return run.info.run_id


def log_trial(
    frozen: Any, study: Any, parent_run_id: str, experiment_id: str, tracking_uri: str | None, prepared: Prepared
) -> None:
    """Every trial is a child run, repeated, pruned and failed ones included, with its state."""
    import mlflow

    configure_tracking(tracking_uri, prepared.root)
    client = mlflow.MlflowClient()
    attrs = frozen.user_attrs
    strategy = str(frozen.params.get("strategy", "?"))
    tags = {
        "mlflow.parentRunId": parent_run_id,
        "judgecal.strategy": strategy,
        "judgecal.trial": str(frozen.number),
        "judgecal.trial_state": frozen.state.name,
    }
    if attrs.get("duplicate_of") is not None:
        tags["judgecal.repeat_of"] = str(attrs["duplicate_of"])
    if attrs.get("error"):
        tags["judgecal.error"] = str(attrs["error"])[:5000]
    run = client.create_run(experiment_id, run_name=f"trial-{frozen.number}-{strategy}", tags=tags)
    run_id = run.info.run_id
    params = {f"trial.{k}": str(v)[:500] for k, v in frozen.params.items()}
    if attrs.get("rule"):
        params["selection.rule"] = attrs["rule"]
    client.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in params.items()])
    metrics = {}
    if frozen.value is not None:
        metrics["selection.kappa"] = float(frozen.value)
    if attrs.get("se") is not None and math.isfinite(attrs["se"]):
        metrics["selection.kappa_se"] = float(attrs["se"])
    for key in ("lm_calls", "fit_seconds", "pruned_after_rows"):
        if attrs.get(key) is not None:
            metrics[f"cost.{key}"] = float(attrs[key])
    import time

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, v, now, 0) for k, v in metrics.items()])
    status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}.get(frozen.state.name, "FINISHED")
    client.set_terminated(run_id, status=status)
    study.set_user_attr(f"run_id.{frozen.number}", run_id)  # a finished trial's own attributes are frozen


def leaderboard_markdown(report: SearchReport) -> str:
    lines = [
        f"# Search {report.study_name}",
        "",
        "Trials are scored without test rows: cross-validated κ (mean ± standard error over grouped folds of "
        "train + dev) for strategies that make no LM calls to fit, dev κ for those that do. "
        "Repeated settings are answered from the earlier trial and do not count toward the budget.",
        "",
        "| trial | strategy | settings | state | rule | κ | ± SE | LM calls | fit s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if report.raw_dev is not None:
        lines.append(f"| raw | (the judge as it is) | – | – | dev | {report.raw_dev:.3f} | – | – | – |")
    best = report.best
    for row in report.rows:
        settings = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in row.params.items()) or "–"
        if row.duplicate_of is not None:
            settings += f" (repeat of trial {row.duplicate_of})"
        marker = " **selected**" if best is not None and row.number == best.number else ""
        score = "–" if row.score is None else f"{row.score:.3f}"
        se = "–" if row.se is None or not math.isfinite(row.se) else f"{row.se:.3f}"
        state = row.state.lower() + (f": {row.error[:80]}" if row.error else "")
        if row.pruned_after:
            state += f" after {row.pruned_after} dev rows"
        lines.append(
            f"| {row.number}{marker} | {row.strategy} | {settings} | {state} | {row.rule or '–'} | {score} | {se} | "
            f"{row.lm_calls if row.lm_calls is not None else '–'} | {row.seconds if row.seconds is not None else '–'} |"
        )
    if report.choice is not None:
        lines += ["", "## Selection", "", report.choice.rule + ".", ""]
        lines += [f"- {step}" for step in report.choice.steps]
    return "\n".join(lines) + "\n"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def log_leaderboard(report: SearchReport, prepared: Prepared) -> None:
    """The leaderboard beside the selected judge in the parent run: a table, its JSON and
    a plot, with the raw judge as the first row."""
    import mlflow

    from judgecal import plots

    assert report.parent_run_id is not None and report.best is not None
    client = mlflow.MlflowClient()
    run_id = report.parent_run_id
    client.log_dict(run_id, [row.__dict__ for row in report.rows], "leaderboard.json")
    client.log_text(run_id, leaderboard_markdown(report), "leaderboard.md")
    client.set_tag(run_id, "judgecal.best_trial", str(report.best.number))
    client.set_tag(run_id, "judgecal.best_strategy", report.best.strategy)
    scored = [r for r in report.rows if r.score is not None and r.duplicate_of is None]
    with tempfile.TemporaryDirectory() as scratch:
        estimates = {
            f"#{r.number} {r.strategy}": {
                "selection κ": (r.score, r.score - (r.se or 0.0), r.score + (r.se or 0.0))
                if r.se is not None and math.isfinite(r.se)
                else (r.score, r.score, r.score)
            }
            for r in scored[:12]
        }
        if report.raw_dev is not None:
            estimates = {"raw judge (dev)": {"selection κ": (report.raw_dev,) * 3}, **estimates}
        path = plots.metric_intervals(
            ["selection κ"],
            estimates,
            Path(scratch) / "leaderboard.png",
            title=f"{prepared.config.judge.name}: trials by selection κ (± one standard error; no test rows)",
            xlabel="selection κ: cross-validated over train + dev, or on dev",
        )
        client.log_artifact(run_id, str(path))

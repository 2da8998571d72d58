"""Searching strategies and their settings with Optuna, selecting on dev only.

Each trial picks a strategy and its settings, fits on train, and is scored by κ on dev;
dev is judged in chunks and the running κ is reported, so a median pruner can stop a
hopeless trial early. Test rows are judged after the trial's value is fixed, for the
leaderboard only: the objective never sees them.

Studies live in Optuna storage: ``mlruns/optuna.db`` (SQLite) by default, or any RDB URL
(``postgresql://...``) so several processes or machines can work on one study. Worker
heartbeats let a restarted search fail the trials of a killed worker and run them again;
finished trials are never redone. Every trial is an MLflow child run under one parent run
per study, and the parent holds the leaderboard and the best judge.
"""

from __future__ import annotations

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
    SideResult,
    assemble_report,
    judge_split,
    log_judge_artifacts,
    prepare,
    tracked_metrics,
)
from judgecal.judges import ProgressFactory
from judgecal.metrics import LabelSpace, confusion, kappa_from_confusion
from judgecal.paths import store_dir, store_lock
from judgecal.strategies import FitResult, ProgramJudge, StrategySpec, fit_strategy, resolve_strategies
from judgecal.tracking import configure_tracking, ensure_experiment


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
    dev_kappa: float | None
    test_kappa: float | None
    test_low: float | None
    test_high: float | None
    lm_calls: int | None
    seconds: float | None
    run_id: str | None
    worker: str | None
    duplicate_of: int | None = None
    error: str | None = None


@dataclass
class SearchReport:
    study_name: str
    storage: str
    rows: list[TrialRow]
    best: TrialRow | None
    raw: SideResult | None
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    metric: str = "kappa"
    new_trials: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _kappa(space: LabelSpace, human: list[Any], verdicts: list[Any]) -> float:
    cm = confusion(space.index(human), space.index(verdicts), space.size)
    if space.ordinal:
        from judgecal.metrics import metrics_from_confusion

        return float(metrics_from_confusion(cm, space)["weighted_kappa"])
    return float(kappa_from_confusion(cm))


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
    import optuna
    from optuna.storages import RDBStorage
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    prepared = prepare(config, root=root, log=log)
    task, split = prepared.task, prepared.split
    specs = {
        spec.name: spec
        for spec in resolve_strategies(search.strategies, task, has_program=isinstance(prepared.raw, ProgramJudge))
    }
    storage_url = search.storage or default_storage(prepared.root)
    study_name = search.study_name or f"{config.judge.name}-{split.fingerprint[:12]}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with store_lock(prepared.root), warnings.catch_warnings():
        # Heartbeats are marked experimental in Optuna; they are what fails a killed worker's trial.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(
            url=storage_url, heartbeat_interval=search.heartbeat_interval, grace_period=search.grace_period
        )
        study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            direction="maximize",
            load_if_exists=True,
            # Workers sharing a study need different seeds or they propose the same settings.
            sampler=optuna.samplers.TPESampler(seed=search.seed + os.getpid() % 10_000),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
        )
        _check_study(study, split.fingerprint, sorted(specs))
    finished_states = (TrialState.COMPLETE, TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished_states))
    space = LabelSpace(labels=task.spec.labels, positive=task.spec.positive, ordinal=task.spec.is_ordinal)
    log(
        f"study {study_name} in {storage_url}: {done} of {search.trials} trials finished; "
        f"strategies: {', '.join(specs)}"
    )

    parent_run_id = None
    if track:
        configure_tracking(tracking_uri, prepared.root)
        experiment_id = ensure_experiment(config.judge.name, prepared.root)
        with store_lock(prepared.root):  # one parent run per study, however many workers start together
            parent_run_id = _parent_run(study, experiment_id, study_name, storage_url, config)
    raw_side = judge_split(
        prepared.raw, task, split.test.rows, order_swap=prepared.order_swap, progress=progress, label="raw"
    )
    worker = f"{os.uname().nodename}:{os.getpid()}"

    def objective(trial: optuna.Trial) -> float:
        name = trial.suggest_categorical("strategy", sorted(specs))
        spec = specs[name]
        params = spec.space(trial)
        trial.set_user_attr("worker", worker)
        earlier = _same_settings(trial, TrialState.COMPLETE)
        if earlier is not None:  # deterministic fits: the same settings give the same judge
            trial.set_user_attr("duplicate_of", earlier.number)
            log(f"trial {trial.number}: {name} {params} = trial {earlier.number}, not refitted")
            return float(earlier.value)
        log(f"trial {trial.number}: {name} {params}")
        result = fit_strategy(spec, prepared.context(progress, log), params)
        value = _dev_score(trial, result, prepared, space, search.dev_chunk, progress)
        trial.set_user_attr("lm_calls", result.lm_calls)
        trial.set_user_attr("fit_seconds", round(result.seconds, 2))
        report = _trial_report(prepared, raw_side, result, search, progress)
        score = report.agreement.judge("calibrated").metrics.get("kappa") if report.agreement else None
        if score is not None:
            trial.set_user_attr("test_kappa", [score.value, score.low, score.high])
        if track:
            run_id = _log_trial(report, result, prepared, spec, trial.number, parent_run_id, tracking_uri)
            trial.set_user_attr("run_id", run_id)
        log(
            f"trial {trial.number}: {name} dev κ {value:.3f}"
            + (f", test κ {score.value:.3f} [{score.low:.3f}, {score.high:.3f}]" if score else "")
        )
        return value

    new_trials = 0
    if done < search.trials:
        before = len(study.trials)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(
                objective,
                callbacks=[MaxTrialsCallback(search.trials, states=finished_states)],
                catch=(Exception,),
                gc_after_trial=False,
            )
        new_trials = len(study.trials) - before
    rows = leaderboard(study)
    best = max(
        (r for r in rows if r.state == "COMPLETE" and r.dev_kappa is not None and r.duplicate_of is None),
        key=lambda r: r.dev_kappa or -1.0,
        default=None,
    )
    report = SearchReport(
        study_name=study_name,
        storage=storage_url,
        rows=rows,
        best=best,
        raw=raw_side,
        parent_run_id=parent_run_id,
        new_trials=new_trials,
    )
    if track and parent_run_id is not None:
        report.tracking_uri = configure_tracking(tracking_uri, prepared.root)
        _log_leaderboard(report, config)
    return report


def _same_settings(trial: Any, state: Any) -> Any:
    """An earlier finished trial of this study with exactly these settings, if any."""
    for other in trial.study.get_trials(deepcopy=False, states=(state,)):
        if other.number != trial.number and other.params == trial.params:
            return other
    return None


def _check_study(study: Any, fingerprint: str, strategies: list[str]) -> None:
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


def _dev_score(
    trial: Any,
    result: FitResult,
    prepared: Prepared,
    space: LabelSpace,
    chunk: int,
    progress: ProgressFactory | None,
) -> float:
    """κ on dev, judged chunk by chunk with the running value reported for pruning."""
    import optuna

    dev = prepared.guard.check(prepared.split.dev.rows, "search: score on dev")
    ordered = sorted(dev, key=lambda row: row.group)
    human: list[Any] = []
    verdicts: list[Any] = []
    for step, start in enumerate(range(0, len(ordered), chunk)):
        rows = ordered[start : start + chunk]
        verdicts += [v.label for v in result.judge.predict(rows)]
        human += [row.label for row in rows]
        if start + chunk < len(ordered):
            trial.report(_kappa(space, human, verdicts), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
    return _kappa(space, human, verdicts)


def _trial_report(
    prepared: Prepared, raw: SideResult, result: FitResult, search: SearchConfig, progress: ProgressFactory | None
) -> CalibrationReport:
    config = prepared.config.model_copy(
        update={"report": prepared.config.report.model_copy(update={"n_resamples": search.trial_resamples})}
    )
    calibrated = judge_split(
        result.judge,
        prepared.task,
        prepared.split.test.rows,
        order_swap=prepared.order_swap,
        progress=None,
        label=result.strategy,
    )
    trial_prepared = Prepared(
        config,
        prepared.task,
        prepared.dataset,
        prepared.split,
        prepared.lm,
        prepared.raw,
        prepared.guard,
        prepared.order_swap,
        prepared.root,
    )
    return assemble_report(trial_prepared, raw, calibrated, result)


def _parent_run(study: Any, experiment_id: str, study_name: str, storage_url: str, config: ExperimentConfig) -> str:
    """The study's MLflow parent run: created by the first worker, reused by the others and
    by a resumed search."""
    import mlflow

    existing = study.user_attrs.get("mlflow_parent_run_id")
    if existing:
        return str(existing)
    run = mlflow.MlflowClient().create_run(
        experiment_id,
        run_name=f"search-{study_name}",
        tags={"judgecal.study": study_name, "judgecal.judge": config.judge.name, "judgecal.kind": "search"},
    )
    mlflow.MlflowClient().log_param(run.info.run_id, "optuna.storage", _redact(storage_url))
    study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
    winner = study.user_attrs.get("mlflow_parent_run_id") or run.info.run_id
    if winner != run.info.run_id:  # another worker got there first
        mlflow.MlflowClient().delete_run(run.info.run_id)
    return str(winner)


def _redact(url: str) -> str:
    """Storage URLs may hold a password (postgresql://user:secret@host/db)."""
    import re

    return re.sub(r"//([^:/@]+):[^@]+@", r"//\1:***@", url)


def _log_trial(
    report: CalibrationReport,
    result: FitResult,
    prepared: Prepared,
    spec: StrategySpec,
    number: int,
    parent_run_id: str | None,
    tracking_uri: str | None,
) -> str:
    import mlflow

    configure_tracking(tracking_uri, prepared.root)
    experiment_id = ensure_experiment(prepared.config.judge.name, prepared.root)
    client = mlflow.MlflowClient()
    tags = {"judgecal.strategy": spec.name, "judgecal.trial": str(number)}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name=f"trial-{number}-{spec.name}", tags=tags)
    with mlflow.start_run(run_id=run.info.run_id):
        from judgecal.experiment import calibration_params

        report.strategy = spec.name
        mlflow.log_params(
            {**calibration_params(report, prepared), **{f"trial.{k}": str(v) for k, v in result.params.items()}}
        )
        mlflow.log_metrics(tracked_metrics(report))
        log_judge_artifacts(report, result.judge, prepared)
    return run.info.run_id


def leaderboard(study: Any) -> list[TrialRow]:
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        test = attrs.get("test_kappa") or [None, None, None]
        rows.append(
            TrialRow(
                number=trial.number,
                state=trial.state.name,
                strategy=str(trial.params.get("strategy", "?")),
                params={k: v for k, v in trial.params.items() if k != "strategy"},
                dev_kappa=trial.value,
                test_kappa=test[0],
                test_low=test[1],
                test_high=test[2],
                lm_calls=attrs.get("lm_calls"),
                seconds=attrs.get("fit_seconds"),
                run_id=attrs.get("run_id"),
                worker=attrs.get("worker"),
                duplicate_of=attrs.get("duplicate_of"),
                error=trial.system_attrs.get("fail_reason") if hasattr(trial, "system_attrs") else None,
            )
        )
    return sorted(rows, key=lambda r: (r.dev_kappa is None, -(r.dev_kappa or 0.0), r.number))


def leaderboard_markdown(report: SearchReport) -> str:
    lines = [
        f"# Search {report.study_name}",
        "",
        "Selected by κ on dev; test κ (95% group-bootstrap interval) is reported, never used for selection.",
        "",
        "| trial | strategy | settings | state | dev κ | test κ [95% interval] | LM calls | fit s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report.rows:
        test = "–" if row.test_kappa is None else f"{row.test_kappa:.3f} [{row.test_low:.3f}, {row.test_high:.3f}]"
        settings = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in row.params.items()) or "–"
        marker = " **best**" if report.best is not None and row.number == report.best.number else ""
        dev = "–" if row.dev_kappa is None else f"{row.dev_kappa:.3f}"
        if row.duplicate_of is not None:
            settings += f" (same as trial {row.duplicate_of})"
        lines.append(
            f"| {row.number}{marker} | {row.strategy} | {settings} | {row.state} | {dev} | {test} | "
            f"{row.lm_calls if row.lm_calls is not None else '–'} | "
            f"{row.seconds if row.seconds is not None else '–'} |"
        )
    return "\n".join(lines) + "\n"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _log_leaderboard(report: SearchReport, config: ExperimentConfig) -> None:
    import mlflow

    from judgecal import plots

    client = mlflow.MlflowClient()
    run_id = report.parent_run_id
    assert run_id is not None
    client.log_dict(run_id, [row.__dict__ for row in report.rows], "leaderboard.json")
    client.log_text(run_id, leaderboard_markdown(report), "leaderboard.md")
    if report.best is not None:
        client.log_metric(run_id, "best.dev_kappa", float(report.best.dev_kappa or 0.0))
        if report.best.test_kappa is not None:
            client.log_metric(run_id, "best.test_kappa", float(report.best.test_kappa))
        client.set_tag(run_id, "judgecal.best_trial", str(report.best.number))
        client.set_tag(run_id, "judgecal.best_strategy", report.best.strategy)
    complete = [r for r in report.rows if r.test_kappa is not None]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        if complete:
            estimates = {
                f"#{r.number} {r.strategy}": {
                    "test κ": (r.test_kappa, r.test_low, r.test_high),
                    "dev κ": (r.dev_kappa, r.dev_kappa, r.dev_kappa),
                }
                for r in complete[:12]
            }
            path = plots.metric_intervals(
                ["dev κ", "test κ"],
                estimates,
                folder / "leaderboard.png",
                title=f"{config.judge.name}: trials by dev κ (test κ with 95% interval)",
            )
            client.log_artifact(run_id, str(path))
        if report.best is not None and report.best.run_id:
            bundle = mlflow.artifacts.download_artifacts(
                run_id=report.best.run_id, artifact_path="bundle", dst_path=str(folder / "best")
            )
            with mlflow.start_run(run_id=run_id):
                from judgecal.export import log_judge_model

                mlflow.log_artifacts(bundle, artifact_path="bundle")
                log_judge_model(Path(bundle), input_names=_input_names(config))


def _input_names(config: ExperimentConfig) -> list[str]:
    from judgecal.tasks import resolve_task

    return list(resolve_task(config.judge.task).spec.input_names)

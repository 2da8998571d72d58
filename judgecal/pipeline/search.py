"""A search end to end: the rows split, the Optuna study run (:mod:`judgecal.calibrate.search`),
every trial a child run in MLflow (repeated, pruned and failed ones included, with their
state), and the selected judge reported on test beside the raw one in the study's parent
run with the leaderboard (a raw row first), its card, bundle and model.

The parent run is created by the first worker of a study and reused by the others and by
a resumed search; its name states the selected judge's result.
"""

from __future__ import annotations

import json
import math
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from judgecal.artifacts import LEADERBOARD_FILE, LEADERBOARD_PLOT, LEADERBOARD_TABLE
from judgecal.backends.calls import LMCallCounter, LMUsage
from judgecal.calibrate.search import SearchConfig, TrialRow, distinct_finished, enqueue_defaults, run_study
from judgecal.calibrate.selection import Choice
from judgecal.calibrate.storage import LOST_TRIAL, check_storage, check_study, default_storage, open_study, study_lock
from judgecal.calibrate.strategies import StrategyEnv, StrategySpec, resolve_strategies
from judgecal.judges.program import JudgeFailedError, RowFailedError
from judgecal.pipeline.calibration import prepare, report_and_record, select_band
from judgecal.pipeline.config import ExperimentConfig
from judgecal.pipeline.dry_run import search_budget
from judgecal.pipeline.results import CalibrationReport, Prepared
from judgecal.pipeline.tracking import ensure_experiment
from judgecal.progress import ProgressFactory, StatusFactory, library_logs_quiet
from judgecal.redact import redact_url as redact
from judgecal.workspace import Workspace, set_process_environment


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
    reported_in: str | None = None  # the run where another worker already reported this winner

    @property
    def usage(self) -> LMUsage | None:
        """The LM calls this worker's search made, its winner's test and gate included."""
        return self.calibration.usage if self.calibration is not None else None

    @property
    def best(self) -> TrialRow | None:
        if self.choice is None:
            return None
        return next((row for row in self.rows if row.number == self.choice.winner.number), None)


def run_search(
    config: ExperimentConfig,
    search: SearchConfig,
    *,
    workspace: Workspace | None = None,
    progress: ProgressFactory | None = None,
    track: bool = True,
    log: Any = print,
    status: StatusFactory | None = None,
) -> SearchReport:
    """Prepare the rows and search; ``workspace``: where the run's store, caches and loaded
    models are (default: the project's, :meth:`Workspace.find`); ``status`` shows a line
    with the calls, tokens and cost so far while the trials run."""
    set_process_environment()
    prepared = prepare(config, workspace or Workspace.find(), log=log)
    return search_prepared(prepared, search, progress=progress, track=track, log=log, status=status)


def search_prepared(
    prepared: Prepared,
    search: SearchConfig,
    *,
    progress: ProgressFactory | None = None,
    track: bool = True,
    log: Any = print,
    status: StatusFactory | None = None,
) -> SearchReport:
    """The search on rows already split: trials see train and dev, the winner is reported
    on test and recorded in the study's parent run with the leaderboard. DSPy's own INFO
    logs are kept off the terminal meanwhile."""
    config, workspace = prepared.config, prepared.workspace
    task, split = prepared.task, prepared.split
    storage_url = search.storage or default_storage(workspace.root)
    check_storage(storage_url)  # an unreachable database fails now, not after the first trial
    env = prepared.env(log)
    specs = {spec.name: spec for spec in resolve_strategies(search.strategies, task, has_program=env.base_is_live)}
    study_name = search.study_name or f"{config.judge.name}-{split.fingerprint[:12]}"
    # A tracking store that cannot be reached, or a deleted experiment, fails now, not after the work.
    experiment_id = ensure_experiment(workspace, config.judge.name) if track else None
    parent_run_id: str | None = None

    def record(study: Any, frozen: Any) -> None:
        if parent_run_id is not None and experiment_id is not None:
            log_trial(frozen, study, parent_run_id, experiment_id)

    study = open_study(study_name, storage_url, search, len(split.dev.rows), workspace.root, on_lost=record)
    check_study(study, split.fingerprint, sorted(specs))
    # One worker at a time, whichever machine it runs on: the first trials are enqueued and
    # the parent run created once, however many workers start together.
    with study_lock(storage_url, study_name, workspace.root):
        enqueue_defaults(study, specs, env)
        if experiment_id is not None:
            parent_run_id = parent_run(study, experiment_id, study_name, storage_url, config, workspace)
    log(
        f"study {study_name} in {redact(storage_url)}: {distinct_finished(study)} of {search.trials} trials "
        f"finished; strategies: {', '.join(specs)}"
    )

    meter = LMCallCounter()  # every LM call of this worker: trials, the raw judge on dev, test, gate
    with library_logs_quiet(), meter.counting():
        return _study_and_report(
            prepared, study, (specs, env, search), meter, experiment_id, parent_run_id, (progress, status), log
        )


def _study_and_report(
    prepared: Prepared,
    study: Any,
    searched: tuple[dict[str, StrategySpec], StrategyEnv, SearchConfig],
    meter: LMCallCounter,
    experiment_id: str | None,
    parent_run_id: str | None,
    shown: tuple[ProgressFactory | None, StatusFactory | None],
    log: Any,
) -> SearchReport:
    """The trials, then the winner reported on test and recorded in the parent run;
    ``searched``: the strategies, what they are built from and the search's settings;
    ``shown``: the judging loops' bars and the trials' status line."""
    search = searched[2]
    progress, status = shown
    storage_url = search.storage or default_storage(prepared.workspace.root)

    def record(study: Any, frozen: Any) -> None:
        if parent_run_id is not None and experiment_id is not None:
            log_trial(frozen, study, parent_run_id, experiment_id)

    outcome, raw_dev = _run_trials(prepared, study, searched, meter, record, status, log)
    skipped = [row for row in outcome.rows if row.skipped and row.duplicate_of is None]
    if skipped:
        left_out = "; ".join(f"trial {row.number} ({row.strategy})" for row in skipped)
        log(f"left out to keep the budget: {left_out}")
    report = SearchReport(
        study_name=study.study_name,
        storage=redact(storage_url),
        rows=outcome.rows,
        choice=outcome.choice,
        calibration=None,
        raw_dev=raw_dev,
        parent_run_id=parent_run_id,
        new_trials=outcome.new_trials,
        complete=outcome.complete,
    )
    if outcome.choice is None or outcome.winner is None:
        return report
    winner = outcome.choice.winner
    distinct = len([r for r in outcome.rows if r.answered_from is None])
    steps = "\n".join(f"- {step}" for step in outcome.choice.steps)
    # The workers of a study report its winner into one parent run, one at a time: the first
    # records it; another that ran at the same time and saw the same finished trials and
    # settings finds it recorded. (A later run of the same search reports again.)
    tracked = parent_run_id is not None and experiment_id is not None
    key = report_key(prepared, outcome.rows, winner.number)
    with study_lock(storage_url, study.study_name, prepared.workspace.root) if tracked else nullcontext():
        if tracked and reported_since(parent_run_id, key, prepared.started_at):
            report.reported_in = parent_run_id
            log(
                f"trial {winner.number} ({winner.strategy}) was reported in run {parent_run_id} by another "
                "worker while this one ran, with the same finished trials and settings; nothing more to record"
            )
            return report
        report.calibration = report_and_record(
            prepared,
            select_band(prepared, outcome.winner, log),
            progress=progress,
            experiment_id=experiment_id if parent_run_id is not None else None,
            log=log,
            run_id=parent_run_id,
            description_extra=(
                f"Selected by a search of {distinct} distinct trials ({len(outcome.rows)} with repeats and same "
                f"judges): {winner.strategy} (trial {winner.number}). The leaderboard: `{LEADERBOARD_FILE}`."
                f"\n\n{steps}"
            ),
            meter=meter,
        )
        if report.calibration.tracked is not None:
            report.tracking_uri = report.calibration.tracked.tracking_uri
            log_leaderboard(report, prepared)
            mark_reported(report.calibration.tracked.run_id, key)
    return report


REPORTED_TAG = "judgecal.reported_for"


def report_key(prepared: Prepared, rows: list[TrialRow], winner: int) -> str:
    """What a parent run's report describes: the experiment's settings, the split, the
    finished trials and the winner. Another report is needed only when one of them changed."""
    import hashlib

    trials = sorted((row.number, row.state, row.score) for row in rows)
    text = json.dumps(
        [prepared.config.model_dump(mode="json"), prepared.split.fingerprint, trials, winner],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def reported_since(run_id: str, key: str, started_at: float) -> bool:
    """Whether the parent run holds a report of ``key`` made after ``started_at``: another
    worker's, made while this one ran."""
    import mlflow

    tags = mlflow.MlflowClient().get_run(run_id).data.tags
    recorded = tags.get(REPORTED_TAG, "")
    reported_key, _, reported_at = recorded.partition("@")
    return reported_key == key and float(reported_at or 0) >= started_at


def mark_reported(run_id: str, key: str) -> None:
    import time

    import mlflow

    mlflow.MlflowClient().set_tag(run_id, REPORTED_TAG, f"{key}@{time.time():.3f}")


def _run_trials(
    prepared: Prepared,
    study: Any,
    searched: tuple[dict[str, StrategySpec], StrategyEnv, SearchConfig],
    meter: LMCallCounter,
    record: Any,
    status: StatusFactory | None,
    log: Any,
) -> tuple[Any, float | None]:
    """The study's trials within the budget, then the raw judge on dev, under the status
    line; returns the study's outcome and the raw judge's κ on dev."""
    specs, env, search = searched
    split = prepared.split
    budget = search_budget(prepared, list(specs.values()), search, meter)
    doing = ["starting"]

    def trial_log(message: str) -> None:
        if message.startswith("trial "):
            doing[0] = " ".join(message.split()[:3])
        log(message)

    line = status_text(prepared, meter, search, doing)
    with status(line) if status is not None else nullcontext():
        outcome = run_study(
            study,
            specs,
            env,
            split.train.rows,
            split.dev.rows,
            prepared.guard,
            search,
            on_trial=record,
            log=trial_log,
            budget=budget,
        )
        doing[0] = "raw judge on dev"
        raw_dev = _raw_dev_score(prepared, list(split.dev.rows), log)
    return outcome, raw_dev


def status_text(prepared: Prepared, meter: LMCallCounter, search: SearchConfig, doing: list[str]) -> Any:
    """The status line's text while trials run: what runs, the raw judge's rows answered,
    the LM calls, tokens and cost so far, against the budget when there is one."""
    rows = len(prepared.split.train.rows) + len(prepared.split.dev.rows) + len(prepared.split.test.rows)
    rows += len(prepared.gate_rows)

    def text() -> str:
        usage = meter.usage(prepared.prices)
        calls = f"{usage.calls:,}" + (f" of {search.max_lm_calls:,}" if search.max_lm_calls else "")
        cost = "cost unknown" if usage.cost_usd is None else f"${usage.cost_usd:.4f}"
        cost += f" of ${search.max_cost_usd:.2f}" if search.max_cost_usd else ""
        answered = getattr(prepared.raw, "answered", 0)
        return (
            f"{doing[0]} | raw judge: {answered:,} of {rows:,} rows | LM calls {calls} ({usage.cached:,} cached) | "
            f"{usage.prompt_tokens + usage.completion_tokens:,} tokens | {cost}"
        )

    return text


def _raw_dev_score(prepared: Prepared, dev: list[Any], log: Any) -> float | None:
    """The raw judge's κ on dev, for the leaderboard's first row (its answers are kept).
    A judge model that gives no answer leaves the row out, and says so; anything else is
    not the leaderboard's to hide."""
    from judgecal.calibrate.selection import agreement

    try:
        verdicts = prepared.raw.predict(dev, description="raw: judging dev")
    except (JudgeFailedError, RowFailedError) as error:
        log(f"raw judge on dev: no score for the leaderboard ({error})")
        return None
    return agreement(prepared.task, [row.label for row in dev], [v.label for v in verdicts])


def storage_param(url: str, workspace: Workspace) -> str:
    """The storage as a run records it: a SQLite file relative to the project, any other URL
    without its password."""
    if url.startswith("sqlite:///"):
        return "sqlite:///" + workspace.project_path(url.removeprefix("sqlite:///"))
    return redact(url)


def parent_run(
    study: Any, experiment_id: str, study_name: str, storage_url: str, config: ExperimentConfig, workspace: Workspace
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
    client.log_param(run.info.run_id, "optuna.storage", storage_param(storage_url, workspace))
    study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
    return run.info.run_id


def log_trial(frozen: Any, study: Any, parent_run_id: str, experiment_id: str) -> None:
    """Every trial is a child run, repeated, pruned and failed ones included, with its state."""
    import mlflow

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
    if attrs.get("same_judge_as") is not None:
        tags["judgecal.same_judge_as"] = str(attrs["same_judge_as"])
    if attrs.get("skipped"):
        tags["judgecal.skipped"] = str(attrs["skipped"])[:5000]
    error = attrs.get("error") or (LOST_TRIAL if frozen.state.name == "FAIL" else None)
    if error:
        tags["judgecal.error"] = str(error)[:5000]
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
    for key, metric in TRIAL_USAGE_METRICS.items():
        if attrs.get(key) is not None:
            metrics[metric] = float(attrs[key])
    import time

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, v, now, 0) for k, v in metrics.items()])
    status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}.get(frozen.state.name, "FINISHED")
    if attrs.get("skipped"):
        status = "KILLED"  # never started: the budget could not hold it
    client.set_terminated(run_id, status=status)
    study.set_user_attr(f"run_id.{frozen.number}", run_id)  # a finished trial's own attributes are frozen


# A trial's user attributes as the metrics of its child run, named as a run's own.
TRIAL_USAGE_METRICS = {
    "lm_calls": "lm.calls",
    "cached_calls": "lm.cached_calls",
    "prompt_tokens": "lm.prompt_tokens",
    "completion_tokens": "lm.completion_tokens",
    "cost_usd": "lm.cost_usd",
}


def leaderboard_markdown(report: SearchReport) -> str:
    lines = [
        f"# Search {report.study_name}",
        "",
        "Trials are scored without test rows: cross-validated κ (mean ± standard error over grouped folds of "
        "train + dev) for strategies that make no LM calls to fit, dev κ for those that do. "
        "Repeated settings are answered from the earlier trial and do not count toward the budget, nor does a "
        "trial whose judge gave the same held-out verdicts and probabilities as an earlier trial's (same judge) "
        "unless it called the model to find that out. "
        "LM calls include those answered from the cache (in brackets), which cost nothing; tokens "
        "(prompt + completion) and cost are those of the calls the model answered.",
        "",
        "| trial | strategy | settings | state | rule | κ | ± SE | LM calls (cached) | tokens | cost $ | fit s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if report.raw_dev is not None:
        lines.append(f"| raw | (the judge as it is) | – | – | dev | {report.raw_dev:.3f} | – | – | – | – | – |")
    best = report.best
    for row in report.rows:
        settings = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in row.params.items()) or "–"
        if row.duplicate_of is not None:
            settings += f" (repeat of trial {row.duplicate_of})"
        if row.same_judge_as is not None:
            settings += f" (same judge as trial {row.same_judge_as})"
        marker = " **selected**" if best is not None and row.number == best.number else ""
        score = "–" if row.score is None else f"{row.score:.3f}"
        se = "–" if row.se is None or not math.isfinite(row.se) else f"{row.se:.3f}"
        state = f"skipped: {row.skipped[9:120]}" if row.skipped else row.state.lower()
        state += f": {row.error[:80]}" if row.error and not row.skipped else ""
        if row.pruned_after:
            state += f" after {row.pruned_after} dev rows"
        lines.append(
            f"| {row.number}{marker} | {row.strategy} | {settings} | {state} | {row.rule or '–'} | {score} | {se} | "
            f"{trial_calls(row)} | {trial_tokens(row)} | {trial_cost(row)} | "
            f"{row.seconds if row.seconds is not None else '–'} |"
        )
    if report.usage is not None:
        lines += ["", f"The whole search (trials, the winner on test and gate rows): {report.usage.describe()}."]
    if report.choice is not None:
        lines += ["", "## Selection", "", report.choice.rule + ".", ""]
        lines += [f"- {step}" for step in report.choice.steps]
    return "\n".join(lines) + "\n"


def trial_calls(row: TrialRow) -> str:
    """A trial's LM calls with the cached ones in brackets; a repeat's cost nothing again."""
    if row.lm_calls is None:
        return "–"
    if row.duplicate_of is not None:
        return "0 (repeat)"
    return f"{row.lm_calls:,} ({row.cached_calls or 0:,})" if row.cached_calls is not None else f"{row.lm_calls:,}"


def trial_tokens(row: TrialRow) -> str:
    if row.prompt_tokens is None or row.duplicate_of is not None:
        return "–"
    return f"{row.prompt_tokens:,} + {row.completion_tokens or 0:,}"


def trial_cost(row: TrialRow) -> str:
    if row.cost_usd is None or row.duplicate_of is not None:
        return "–"
    return f"{row.cost_usd:.4f}"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def log_leaderboard(report: SearchReport, prepared: Prepared) -> None:
    """The leaderboard beside the selected judge in the parent run: a table, its JSON and
    a plot, with the raw judge as the first row."""
    import mlflow

    from judgecal.report import plots

    assert report.parent_run_id is not None and report.best is not None
    client = mlflow.MlflowClient()
    run_id = report.parent_run_id
    client.log_dict(run_id, [row.__dict__ for row in report.rows], LEADERBOARD_TABLE)
    client.log_text(run_id, leaderboard_markdown(report), LEADERBOARD_FILE)
    client.set_tag(run_id, "judgecal.best_trial", str(report.best.number))
    client.set_tag(run_id, "judgecal.best_strategy", report.best.strategy)
    scored = [r for r in report.rows if r.score is not None and r.answered_from is None]
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
            Path(scratch) / LEADERBOARD_PLOT,
            title=f"{prepared.config.judge.name}: trials by selection κ (± one standard error; no test rows)",
            xlabel="selection κ: cross-validated over train + dev, or on dev",
        )
        client.log_artifact(run_id, str(path))

"""The ``judgecal`` command line: what each sub-command does. Its flags are
:mod:`judgecal.cli.parser`'s; ``python -m judgecal.cli`` runs it (``__main__``)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from judgecal.artifacts import CARD_DIR, EVALUATION_FILE, HTML_CARD_FILE, METRICS_TABLE, MODEL_NAME, SELECTIVE_FILE
from judgecal.cli.cost import dry_run, search_settings
from judgecal.cli.labelling import label_next_command, merge_labels_command
from judgecal.cli.monitoring import monitor_command, warn_shift
from judgecal.cli.opening import open_judge_from_flags
from judgecal.cli.output import console, errors, print_error
from judgecal.cli.parser import build_parser
from judgecal.cli.planning import plan_command
from judgecal.data.rows import DataError
from judgecal.redact import error_line, redact_text, redact_url
from judgecal.workspace import Workspace, set_process_environment

if TYPE_CHECKING:
    from judgecal.calibrate.search import TrialRow
    from judgecal.pipeline.config import ExperimentConfig
    from judgecal.pipeline.results import CalibrationReport


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    # Set once, before anything starts a thread. The libraries' own progress lines (tqdm
    # reads this when it is first imported) would interleave with judgecal's bars.
    set_process_environment()
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # LiteLLM fetches its model cost map from the network when imported unless told not to;
    # offline, that leaves a retrying thread behind.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        return int(args.handler(args) or 0)
    except (DataError, FileNotFoundError, FileExistsError, ValueError, TypeError, ImportError) as error:
        print_error(str(error))
        return 2
    except KeyboardInterrupt:
        errors.print("interrupted")
        return 130
    except Exception as error:
        if _reported_to_user(error):
            print_error(error_line(error, with_type=True))
            return 1
        # A bug: the traceback is for its report, without the credentials of any URL in it.
        import traceback

        errors.print(redact_text("".join(traceback.format_exception(error))), highlight=False, markup=False)
        return 1


def _reported_to_user(error: Exception) -> bool:
    """Failures of the judge model (unreachable server, bad key, a judge failing on every
    row) are the user's to fix: a message, not a traceback."""
    if type(error).__name__ in ("JudgeFailedError", "RowFailedError"):
        return True
    if "dspy" in sys.modules:
        from dspy.utils.exceptions import LMError

        return isinstance(error, LMError)
    return False


def _parser() -> argparse.ArgumentParser:
    return build_parser(
        {
            "calibrate": _calibrate,
            "init": _init,
            "report": _report,
            "judge": _judge,
            "estimate": _estimate,
            "label-next": label_next_command,
            "plan": plan_command,
            "import": _import,
            "merge": merge_labels_command,
            "ui": _ui,
            "monitor": monitor_command,
        }
    )


def _calibrate(args: argparse.Namespace) -> int:
    from judgecal.pipeline.config import refuse_cross_fit_search

    quiet_libraries()
    configs = [_load(path, args) for path in args.configs]  # every file is checked before any runs
    for path, config in zip(args.configs, configs, strict=True):
        if not _searching(config, args) and (args.max_lm_calls is not None or args.max_cost is not None):
            flag = "--max-lm-calls" if args.max_lm_calls is not None else "--max-cost"
            print_error(
                f"{path}: {flag} is kept by a search, and --strategy runs one strategy without one: drop "
                f"--strategy (with --strategies NAME for a search of one strategy) or drop {flag}"
            )
            return 2
        if _searching(config, args) and config.selective is not None and config.selective.rows == "cross-fit":
            refuse_cross_fit_search(Path(path))
    workspace = Workspace.find(tracking_uri=args.tracking_uri)  # one for every file: models load once
    done: list[tuple[str, CalibrationReport, str | None]] = []
    for config in configs:
        if args.dry_run:
            dry_run(config, args, workspace, searching=_searching(config, args))
            continue
        if _searching(config, args):
            report, run_id = _search_one(config, args, workspace)
        else:
            report, run_id = _calibrate_one(config, args, workspace)
        if report is not None:
            done.append((config.judge.name, report, run_id))
    if len(done) > 1:
        _print_summary(done, args)
    return 0


def _trial_state(row: TrialRow) -> str:
    if row.skipped:
        return "skipped (budget)"
    if row.same_judge_as is not None:
        return f"same judge as {row.same_judge_as}"
    return row.state.lower() + (f" after {row.pruned_after} rows" if row.pruned_after else "")


def _searching(config: ExperimentConfig, args: argparse.Namespace) -> bool:
    """Whether this experiment runs as a search: its [search] section or a search's flags,
    unless --strategy names one strategy."""
    searching = args.strategies or args.trials or args.worker is not None or config.search is not None
    return bool(searching) and not args.strategy


def quiet_libraries() -> None:
    """judgecal draws one progress bar per step; the libraries' own progress lines and
    INFO logs would bury it and the results."""
    import logging

    for name in ("dspy", "mlflow", "LiteLLM", "litellm", "optuna", "httpx", "sentence_transformers", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _search_one(
    config: ExperimentConfig, args: argparse.Namespace, workspace: Workspace
) -> tuple[CalibrationReport | None, str | None]:
    from judgecal.pipeline.search import run_search, trial_calls, trial_cost, trial_tokens
    from judgecal.progress import rich_progress, rich_status

    search = search_settings(config, args)
    report = run_search(
        config,
        search,
        workspace=workspace,
        progress=rich_progress(console),
        status=rich_status(console),
        track=not args.no_track,
        log=lambda message: console.print(message, highlight=False),
    )
    distinct = len([r for r in report.rows if r.answered_from is None])
    table = Table(
        title=f"{config.judge.name}: {distinct} distinct trials, scored "
        "without test rows (cv: cross-validated over train + dev; dev: on dev)",
        title_justify="left",
    )
    for column in ("trial", "strategy", "state", "rule", "κ", "± SE", "LM calls (cached)", "tokens", "$", "s"):
        table.add_column(column, justify="left" if column in ("strategy", "state", "rule") else "right")
    if report.raw_dev is not None:
        table.add_row("raw", "(the judge as it is)", "–", "dev", f"{report.raw_dev:.3f}", *["–"] * 5)
    best = report.best
    for row in report.rows:
        if row.duplicate_of is not None:
            continue
        chosen = best is not None and row.number == best.number
        table.add_row(
            f"{row.number}{' *' if chosen else ''}",
            row.strategy,
            _trial_state(row),
            row.rule or "–",
            "–" if row.score is None else f"{row.score:.3f}",
            "–" if row.se is None or row.se != row.se else f"{row.se:.3f}",
            trial_calls(row),
            trial_tokens(row),
            trial_cost(row),
            "–" if row.seconds is None else f"{row.seconds:.0f}",
        )
    repeats = len([r for r in report.rows if r.duplicate_of is not None])
    same = len([r for r in report.rows if r.same_judge_as is not None])
    notes = [f"{repeats} proposals repeated settings already tried"] if repeats else []
    notes += [f"{same} trials gave the same judge as an earlier one"] if same else []
    if notes:
        table.caption = "; ".join(notes) + ": answered from those trials, not counted unless they called the model"
    console.print(table)
    if report.choice is not None:
        for step in report.choice.steps:
            console.print(f"selection: {step}", highlight=False)
    console.print(
        f"study {report.study_name} in {redact_url(report.storage)}; {report.new_trials} new trials this run",
        highlight=False,
    )
    if report.usage is not None:
        console.print(f"the search asked: {report.usage.describe()}", highlight=False)
    if report.reported_in is not None:
        return None, report.reported_in
    if report.calibration is None:
        console.print("no trial finished, so nothing was selected", highlight=False)
        return None, None
    _print_result(config, report.calibration, report.parent_run_id)
    return report.calibration, report.parent_run_id


def _print_result(config: ExperimentConfig, report: CalibrationReport, run_id: str | None) -> None:
    """One compact table (the headline measures, raw vs calibrated, with intervals), the
    verdict in words, and where the rest is."""
    from judgecal.report import summary

    agreement = report.agreement
    if agreement is not None:
        table = Table(
            title=f"{config.judge.name} ({report.strategy}): {agreement.rows} test rows in {agreement.groups} groups, "
            "95% intervals over groups",
            title_justify="left",
        )
        for column in ("measure", "raw", "calibrated", "Δ"):
            table.add_column(column, justify="left" if column == "measure" else "right")
        for measure, *cells in summary.headline_rows(agreement):
            # value over interval: the table stays within an 80-column terminal
            table.add_row(measure, *(cell.replace(" [", "\n[", 1) for cell in cells))
        console.print(table)
        if agreement.comparison is not None:
            colour = {"improved": "green", "worse": "red"}.get(agreement.comparison.outcome, "yellow")
            console.print(f"[{colour}]{escape(agreement.comparison.statement)}[/]")
    if report.selective is not None:
        from judgecal.report.selective import held_out_summary, targets_summary

        console.print(
            f"selective: {held_out_summary(report.selective)} {targets_summary(report.selective)}", highlight=False
        )
    if report.registry is not None:
        console.print(f"registry: {report.registry.name} v{report.registry.version}; {report.registry.reason}")
    elif config.judge.register_as and report.tracked is not None and report.tracked.not_exported:
        console.print(f"not registered as {config.judge.register_as}: no judge was exported", highlight=False)
    if run_id:
        exported = report.tracked is not None and report.tracked.model_uri
        judge = f"the judge: runs:/{run_id}/{MODEL_NAME}" if exported else "no judge was exported"
        console.print(
            f"MLflow run {run_id} in judgecal/{config.judge.name}: judge card {CARD_DIR}/{HTML_CARD_FILE}, every "
            f"metric {METRICS_TABLE}; {judge}",
            highlight=False,
        )


def _print_summary(done: list[tuple[str, CalibrationReport, str | None]], args: argparse.Namespace) -> None:
    from judgecal.report import summary

    table = Table(title="Summary: raw → calibrated judge on each judge's test rows", title_justify="left")
    for column in ("judge", "strategy", "κ raw → calibrated", "Δκ [95% interval]"):
        table.add_column(column, justify="left" if column in ("judge", "strategy") else "right")
    for name, report, _ in done:
        agreement = report.agreement
        if agreement is None or agreement.comparison is None:
            continue
        metric = summary.KAPPA[agreement.kind]
        raw = agreement.judge("raw").metrics[metric].value
        calibrated = agreement.judge("calibrated").metrics[metric].value
        delta = agreement.comparison.deltas[metric]
        colour = {"improved": "green", "worse": "red"}.get(agreement.comparison.outcome, "yellow")
        table.add_row(
            name,
            report.strategy,
            f"{raw:.2f} → {calibrated:.2f}",
            f"[{colour}]{delta.value:+.2f} [{delta.low:+.2f}, {delta.high:+.2f}][/]",
        )
    table.caption = "Δκ interval: green above 0, yellow includes 0, red below 0"
    console.print(table)
    if not args.no_track:
        console.print(
            "Browse the runs: judgecal ui (or make ui), then http://127.0.0.1:5000/#/experiments?workflowType="
            "machine_learning; each run's name states raw → calibrated κ, its description the verdict, and "
            f"{CARD_DIR}/{HTML_CARD_FILE} the plots.",
            highlight=False,
        )


def _load(path: Path, args: argparse.Namespace) -> ExperimentConfig:
    from judgecal.pipeline.config import load_config
    from judgecal.pipeline.reference import FLAGS

    overrides: dict[str, object] = dict(_settings(args.settings))
    for dotted, flag in FLAGS.items():
        if dotted.startswith("search."):
            continue  # a search's flags are applied where the search starts
        value = getattr(args, flag.removeprefix("--").replace("-", "_"), None)
        if isinstance(value, Path):
            value = str(value.resolve())
        if value is not None:
            overrides[dotted] = value
    return load_config(path, overrides)


def _settings(values: list[str]) -> list[tuple[str, object]]:
    """``--set section.key=VALUE`` pairs, the value read as TOML (a bare word is a string)."""
    import tomllib

    out = []
    for text in values:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ValueError(f"--set takes SECTION.KEY=VALUE (e.g. report.n_resamples=500), got {text!r}")
        try:
            value = tomllib.loads(f"value = {raw.strip()}")["value"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        out.append((key, value))
    return out


def _calibrate_one(
    config: ExperimentConfig, args: argparse.Namespace, workspace: Workspace
) -> tuple[CalibrationReport, str | None]:
    from judgecal.pipeline.calibration import run_calibration
    from judgecal.progress import rich_progress

    report = run_calibration(
        config,
        workspace=workspace,
        progress=rich_progress(console),
        track=not args.no_track,
        log=lambda message: console.print(message, highlight=False),
    )
    console.print(
        f"calibration: {report.strategy}, {report.calibration_seconds:.0f} s, "
        f"{report.calibration_lm_calls} LM calls (answers served from the cache included)",
        highlight=False,
    )
    if report.usage is not None:
        console.print(f"the run asked, test and gate rows included: {report.usage.describe()}", highlight=False)
    _print_result(config, report, run_id := report.tracked.run_id if report.tracked else None)
    return report, run_id


def _init(args: argparse.Namespace) -> int:
    import re

    from judgecal.pipeline.reference import starter_experiment

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.name):
        raise ValueError(f"name {args.name!r}: use letters, digits, '-', '_' or '.' (it names an MLflow experiment)")
    output = args.output or Path(f"{args.name}.toml")
    if output.exists():
        raise FileExistsError(f"{output} exists; choose another --output (nothing was overwritten)")
    text = starter_experiment(args.name, args.task, args.data or f"{args.name}.jsonl")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    console.print(
        f"wrote {output}: judge {args.name!r}, task {args.task}, rows from {args.data or args.name + '.jsonl'} "
        f"(beside it). Next: put your labelled rows there (the row template is at the top of {output}), then\n"
        f"  judgecal calibrate {output} --model openai/gpt-4o-mini",
        highlight=False,
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    from judgecal.report.agreement import evaluate_record
    from judgecal.report.card import terminal_table, write_card
    from judgecal.report.records import read_record
    from judgecal.report.selective import read_selective

    source = Path(args.source)
    if source.exists():
        record = read_record(source)
        folder = source if source.is_dir() else source.parent
        default_out = folder / "card"
        selective = folder / SELECTIVE_FILE
        saved = json.loads(selective.read_text(encoding="utf-8")) if selective.exists() else None
    else:
        import mlflow

        Workspace.find(tracking_uri=args.tracking_uri).open_tracking()
        try:
            local = mlflow.artifacts.download_artifacts(run_id=args.source, artifact_path=EVALUATION_FILE)
        except Exception as error:  # MLflow raises several types for a missing run or artifact
            raise FileNotFoundError(
                f"{args.source}: neither a file nor an MLflow run with {EVALUATION_FILE} ({error})"
            ) from None
        record = read_record(Path(local))
        default_out = Path.cwd() / f"judge-card-{args.source}"
        saved = _run_selective(args.source)
    report = evaluate_record(record, n_resamples=args.resamples, seed=args.seed)
    console.print(terminal_table(report))
    if report.comparison is not None:
        console.print(report.comparison.statement, highlight=False)
    selective, band = read_selective(saved) if saved is not None else (None, None)
    card = write_card(report, record, args.out or default_out, selective=selective, band=band)
    console.print(f"judge card: {card}", highlight=False)
    return 0


def _run_selective(run_id: str) -> dict[str, Any] | None:
    """A run's selective.json, or None for a run without [selective] (it has no such file)."""
    import mlflow

    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=SELECTIVE_FILE)
    except Exception:  # MLflow raises several types for a missing artifact
        return None
    return json.loads(Path(local).read_text(encoding="utf-8"))


def _judge(args: argparse.Namespace) -> int:
    from judgecal.export.adapters import judge_file
    from judgecal.progress import rich_progress

    workspace = Workspace.find(tracking_uri=args.tracking_uri)
    if str(args.judge).startswith(("runs:/", "models:/")):
        workspace.open_tracking()
    task = None
    if args.task:
        from judgecal.tasks.registry import resolve_task

        task = resolve_task(args.task)
    loaded = open_judge_from_flags(args, workspace, task=task)
    result = judge_file(
        loaded.judge, args.input, args.output, num_threads=args.num_threads, progress=rich_progress(console)
    )
    console.print(f"{result.judged} rows judged now, {result.already_done} already in {args.output}", highlight=False)
    warn_shift(loaded, args.input, args.output)
    if result.abstained:
        console.print(
            f'{result.abstained} of them the judge abstained on: written with "abstained": true and no verdict, '
            f"and queued for people to label in {result.queue_file}",
            highlight=False,
        )
    if result.retried:
        retried = ", ".join(f"{count} calls retried after {reason}" for reason, count in sorted(result.retried.items()))
        console.print(f"{retried} (with backoff)", highlight=False)
    if result.failed:
        print_error(
            f"{result.failed} rows got no verdict and were not written to {args.output}; they are listed in "
            f"{result.errors_file} (id, line, error). Run the same command again to judge them"
        )
        return 1
    return 0


def _estimate(args: argparse.Namespace) -> int:
    from judgecal.stats.estimate import estimate_from_files
    from judgecal.tasks.registry import resolve_task

    task = resolve_task(args.task)
    if args.design is not None:
        from judgecal.cli.labelling import estimate_from_design_command

        return estimate_from_design_command(args, task.spec)
    result = estimate_from_files(
        task.spec,
        args.verdicts,
        args.labels,
        target=args.target,
        use_probability=not args.verdict_only,
        confidence=args.confidence,
    )
    table = Table(title=f"rate of {result.target} ({result.confidence_level:.0%} intervals)", title_justify="left")
    for column in ("method", "estimate", "interval", "rows"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for name, interval in (
        ("prediction-powered (PPI++)", result.prediction_powered),
        ("judge only (biased if the judge is)", result.judge_only),
        ("human labels only", result.human_only),
    ):
        table.add_row(
            name, f"{interval.estimate:.3f}", f"[{interval.low:.3f}, {interval.high:.3f}]", str(interval.rows)
        )
    console.print(table)
    console.print(result.statement(), highlight=False)
    return 0


def _import(args: argparse.Namespace) -> int:
    import json

    from judgecal.data.importers import TASK_OF_FORMAT, format_name, import_rows
    from judgecal.tasks.registry import resolve_task

    def pairs(values: list[str], flag: str) -> dict[str, str]:
        out = {}
        for value in values:
            key, sep, rest = value.partition("=")
            if not sep or not key:
                raise ValueError(f"{flag} takes KEY=VALUE, got {value!r}")
            out[key] = rest
        return out

    fmt = format_name(args.format)
    task_name = args.task or TASK_OF_FORMAT.get(fmt)
    if task_name is None:
        raise ValueError("--task is needed for the table format (relevance, pairwise, attribute or module:Signature)")
    task = resolve_task(task_name)
    rows = import_rows(
        fmt,
        args.path,
        task.spec,
        mapping=pairs(args.map, "--map"),
        label_map=pairs(args.label_map, "--label-map"),
        group_by=args.group_by,
    )
    if args.output.exists():
        raise FileExistsError(f"{args.output} exists; choose another --output (nothing was overwritten)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.output.with_suffix(args.output.suffix + ".partial")
    temporary.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    temporary.rename(args.output)
    labels = sorted({str(row["label"]) for row in rows if "label" in row})
    console.print(
        f"{len(rows)} {task_name} rows written to {args.output} (labels: {', '.join(labels)})", highlight=False
    )
    return 0


def _ui(args: argparse.Namespace) -> int:
    from judgecal.pipeline.tracking import ui_command, ui_environment

    workspace = Workspace.find(tracking_uri=args.tracking_uri)
    # MLflow 3.17 opens on its GenAI view; this address is the runs view. A server listening
    # on every interface is browsed at 127.0.0.1 from this machine.
    browsed = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{browsed}:{args.port}/#/experiments?workflowType=machine_learning"
    console.print(
        f"MLflow UI for {redact_url(workspace.tracking_uri)}, the runs: {url}  (Ctrl-C stops it)", highlight=False
    )
    return run_until_stopped(ui_command(workspace, args.host, args.port), ui_environment())


def run_until_stopped(command: list[str], environment: dict[str, str]) -> int:
    """Run a server in its own process group and stop the whole group when this process
    is interrupted (Ctrl-C) or terminated (SIGTERM): uvicorn's workers would otherwise
    outlive it and keep the port."""
    import signal

    server = subprocess.Popen(command, env=environment, cwd=os.getcwd(), start_new_session=True)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a process started in the background by a script inherits SIGINT ignored,
    # and Python then never raises KeyboardInterrupt for it.
    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        return server.wait()
    except KeyboardInterrupt:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        except ProcessLookupError:
            pass
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

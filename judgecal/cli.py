"""The ``judgecal`` command line."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from judgecal.data.rows import DataError
from judgecal.redact import error_line, redact_text, redact_url

if TYPE_CHECKING:
    from judgecal.pipeline.calibration import CalibrationReport
    from judgecal.pipeline.config import ExperimentConfig


console = Console(stderr=False)


# Errors are never wrapped: a piped or logged "file:line: field ..." must stay one line.
errors = Console(stderr=True, soft_wrap=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    # The libraries' own progress lines (tqdm reads this when it is first imported) would
    # interleave with judgecal's bars.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # MLflow draws a bar for every small artifact it moves; judgecal draws its own.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # LiteLLM fetches its model cost map from the network when imported unless told not to;
    # offline, that leaves a retrying thread behind.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        return int(args.handler(args) or 0)
    except (DataError, FileNotFoundError, FileExistsError, ValueError, TypeError, ImportError) as error:
        _print_error(str(error))
        return 2
    except KeyboardInterrupt:
        errors.print("interrupted")
        return 130
    except Exception as error:
        if _reported_to_user(error):
            _print_error(error_line(error, with_type=True))
            return 1
        # A bug: the traceback is for its report, without the credentials of any URL in it.
        import traceback

        errors.print(redact_text("".join(traceback.format_exception(error))), highlight=False, markup=False)
        return 1


def _print_error(message: str) -> None:
    """One line on stderr, whatever the message holds: line breaks are joined, and a
    password or key in any URL it quotes is hidden."""
    text = " ".join(part.strip() for part in message.splitlines() if part.strip())
    errors.print(f"[bold red]error:[/] {escape(redact_text(text))}", highlight=False, markup=True)


def _reported_to_user(error: Exception) -> bool:
    """Failures of the judge model (unreachable server, bad key, a judge failing on every
    row) are the user's to fix: a message, not a traceback."""
    if type(error).__name__ in ("JudgeFailedError", "RowFailedError"):
        return True
    if "dspy" in sys.modules:
        from dspy.utils.exceptions import LMError

        return isinstance(error, LMError)
    return False


class _Parser(argparse.ArgumentParser):
    """argparse with judgecal's refusals: one line on stderr (not the usage block) and exit
    code 2. Its sub-commands' parsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        _print_error(f"{message} (see {self.prog} --help)")
        raise SystemExit(2)


def _positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (argparse names the flag)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _level(text: str) -> float:
    """An argparse type: a confidence level strictly between 0 and 1 (argparse names the flag)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a level strictly between 0 and 1 (e.g. 0.95), got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="judgecal", description="Calibrate LLM-as-judge models against human labels.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    calibrate = commands.add_parser("calibrate", help="calibrate a judge on labelled rows and record the run in MLflow")
    calibrate.add_argument(
        "configs",
        type=Path,
        nargs="+",
        metavar="CONFIG",
        help="experiment file(s), e.g. experiments/relevance.toml; several run one after another",
    )
    calibrate.add_argument("--data", type=Path, help="labelled rows (JSONL or CSV) instead of the config's")
    calibrate.add_argument("--name", help="judge name (MLflow experiment judgecal/<name>)")
    calibrate.add_argument("--task", help="task of the rows: relevance, pairwise, attribute or module:Signature")
    calibrate.add_argument("--model", help="judge model: 'embedded', a .gguf path, or a LiteLLM model string")
    calibrate.add_argument("--api-base", help="base URL of an OpenAI-compatible server (vLLM, llama.cpp)")
    calibrate.add_argument("--temperature", type=float, help="sampling temperature of the judge model")
    calibrate.add_argument(
        "--max-tokens",
        type=_positive_int,
        help="most tokens per judge answer (reasoning models such as openai/o4-mini need 16000)",
    )
    calibrate.add_argument(
        "--strategy",
        help="one strategy: a DSPy optimizer (labeled_few_shot, bootstrap_few_shot, bootstrap_random_search, "
        "mipro, copro, simba, gepa), threshold, base_rate, order_swap, verifier, embedding_verifier or stacking",
    )
    calibrate.add_argument("--strategies", help="search these strategies with Optuna: comma-separated names or 'all'")
    calibrate.add_argument(
        "--trials", type=_positive_int, help="search: finished trials the study should reach (at least 1)"
    )
    calibrate.add_argument("--storage", help="search: Optuna storage URL (default: sqlite:///mlruns/optuna.db)")
    calibrate.add_argument("--study-name", help="search: study to create or resume")
    calibrate.add_argument(
        "--worker", type=int, help="search: this worker's number in a shared study (its sampler seed is seed + N)"
    )
    calibrate.add_argument("--recorded", help="calibrate the verdicts of reference_judges.<NAME> in the rows")
    calibrate.add_argument("--verdicts", type=Path, help="calibrate verdicts from a JSONL file {id, verdict}")
    calibrate.add_argument(
        "--register", help="register the judge under this MLflow model name (champion moves only if it is better)"
    )
    calibrate.add_argument(
        "--gate-data", type=Path, help="fresh labelled rows for the registry's champion gate (instead of a gate share)"
    )
    calibrate.add_argument("--seed", type=int, help="optimizer seed")
    calibrate.add_argument("--split-seed", type=int, help="seed of the grouped train/dev/test split")
    for part in ("train", "dev", "test", "gate"):
        calibrate.add_argument(
            f"--max-{part}-rows",
            type=_positive_int,
            help=f"cap the {part} rows, drawn evenly across groups",
        )
    calibrate.add_argument("--limit", type=int, help="use only the first N rows")
    calibrate.add_argument(
        "--set",
        action="append",
        default=[],
        dest="settings",
        metavar="SECTION.KEY=VALUE",
        help="set any other key of the experiment file for this run; VALUE is read as TOML "
        "(e.g. --set report.n_resamples=500); repeatable",
    )
    calibrate.add_argument("--tracking-uri", help="MLflow tracking URI (default: mlruns/mlflow.db)")
    calibrate.add_argument("--no-track", action="store_true", help="do not record an MLflow run")
    calibrate.set_defaults(handler=_calibrate)

    init = commands.add_parser(
        "init", help="write a starter experiment file: every key present, the required ones set, a row template"
    )
    init.add_argument("name", help="judge name: the MLflow experiment judgecal/<NAME> and the registered model")
    init.add_argument(
        "--task", required=True, help="relevance, pairwise, attribute, or your own module:Signature / file.py:Signature"
    )
    init.add_argument("--data", help="the labelled rows, relative to the experiment file (default: NAME.jsonl)")
    init.add_argument("--output", type=Path, help="the experiment file to write (default: NAME.toml)")
    init.set_defaults(handler=_init)

    report = commands.add_parser("report", help="print a calibration's agreement table and write its judge card")
    report.add_argument("source", help="an MLflow run id, or a path to evaluation.json (or a folder holding it)")
    report.add_argument("--out", type=Path, help="folder for the card (default: ./judge-card-<run id or name>)")
    report.add_argument("--resamples", type=int, default=2000, help="group-bootstrap resamples")
    report.add_argument("--seed", type=int, default=0)
    report.add_argument("--tracking-uri", help="MLflow tracking URI (default: mlruns/mlflow.db)")
    report.set_defaults(handler=_report)

    judge = commands.add_parser("judge", help="judge rows with a calibrated judge (resumes an interrupted run)")
    judge.add_argument("--judge", required=True, help="bundle folder, runs:/<id>/judge or models:/<name>@<alias>")
    judge.add_argument("--input", type=Path, required=True, help="rows to judge (JSONL or CSV with id + inputs)")
    judge.add_argument("--output", type=Path, required=True, help="verdicts JSONL; appended to, never rewritten")
    judge.add_argument(
        "--num-threads",
        type=_positive_int,
        default=1,
        help="rows sent to a remote model at once (DSPy's parallel executor); an in-process model takes one at a time",
    )
    judge.add_argument("--model", help="run the calibrated judge on another model (e.g. a served copy)")
    judge.add_argument(
        "--api-base", help="server of the judge model; a bundle's own endpoint is not used unless --trust-endpoint"
    )
    judge.add_argument(
        "--trust-endpoint", action="store_true", help="send the rows to the endpoint the bundle names (its api_base)"
    )
    judge.add_argument(
        "--allow-modified", action="store_true", help="load a bundle edited after it was saved (digest mismatch)"
    )
    judge.add_argument(
        "--task",
        help="your own task (module:Signature or file.py:Signature) for a bundle that does not describe its "
        "custom signature; this imports your code, which loading a bundle never does by itself",
    )
    judge.add_argument("--tracking-uri", help="MLflow tracking URI for runs:/ and models:/ (default: mlruns/)")
    judge.set_defaults(handler=_judge)

    estimate = commands.add_parser(
        "estimate", help="estimate a human-level rate from judge verdicts plus a few human labels (PPI++)"
    )
    estimate.add_argument("--task", required=True, help="task of the rows: relevance, pairwise, attribute, module:Sig")
    estimate.add_argument(
        "--verdicts",
        type=Path,
        required=True,
        help="judge verdicts on every row (JSONL {id, verdict, probability?}: judgecal judge output)",
    )
    estimate.add_argument("--labels", type=Path, required=True, help="human-labelled subset (rows with id and label)")
    estimate.add_argument("--target", help="label whose rate to estimate (default: the positive label)")
    estimate.add_argument("--verdict-only", action="store_true", help="use 0/1 verdicts, not the judge's probability")
    estimate.add_argument(
        "--confidence", type=_level, default=0.95, help="level of the intervals, between 0 and 1 (default 0.95)"
    )
    estimate.set_defaults(handler=_estimate)

    data = commands.add_parser("data", help="convert published human-judgment data into judgecal rows")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", parser_class=_Parser)
    data.set_defaults(handler=lambda _: (data.print_help(), 2)[1])
    importer = data_commands.add_parser(
        "import", help="convert a file: annotation-tool, pandalm, llmbar, mt-bench, or table (any CSV/JSONL with --map)"
    )
    importer.add_argument("format", help="annotation-tool, pandalm, llmbar, mt-bench or table (any case)")
    importer.add_argument("path", type=Path, help="the source file")
    importer.add_argument("--output", type=Path, required=True, help="rows to write (JSONL)")
    importer.add_argument("--task", help="task the rows are for (default: relevance or pairwise by format)")
    importer.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="table: judgecal field from a source column, e.g. prompt=question (repeatable)",
    )
    importer.add_argument(
        "--label-map",
        action="append",
        default=[],
        metavar="VALUE=LABEL",
        help="table: rewrite a label value, e.g. 1=A (repeatable)",
    )
    importer.add_argument(
        "--group-by",
        choices=("prompt", "user-prompt", "user"),
        help="annotation-tool: which rows form a group (kept in one split, resampled together): 'prompt' "
        "(default) = one prompt across users, which the paper's data needs since each prompt is asked for "
        "several users; 'user-prompt' = one user's prompt (the tool's prompt_id; optimistic intervals when "
        "prompts repeat); 'user' = one user across prompts",
    )
    importer.set_defaults(handler=_import)

    ui = commands.add_parser("ui", help="start the MLflow UI on the project's store")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--tracking-uri", help="store to show (default: mlruns/mlflow.db)")
    ui.set_defaults(handler=_ui)
    return parser


def _calibrate(args: argparse.Namespace) -> int:
    quiet_libraries()
    configs = [_load(path, args) for path in args.configs]  # every file is checked before any runs
    done: list[tuple[str, CalibrationReport, str | None]] = []
    for config in configs:
        searching = args.strategies or args.trials or args.worker is not None or config.search is not None
        if searching and not args.strategy:
            report, run_id = _search_one(config, args)
        else:
            report, run_id = _calibrate_one(config, args)
        if report is not None:
            done.append((config.judge.name, report, run_id))
    if len(done) > 1:
        _print_summary(done, args)
    return 0


def quiet_libraries() -> None:
    """judgecal draws one progress bar per step; the libraries' own progress lines and
    INFO logs would bury it and the results."""
    import logging

    for name in ("dspy", "mlflow", "LiteLLM", "litellm", "optuna", "httpx", "sentence_transformers", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _search_one(config: ExperimentConfig, args: argparse.Namespace) -> tuple[CalibrationReport | None, str | None]:
    from judgecal.pipeline.config import SearchConfig
    from judgecal.pipeline.search import run_search
    from judgecal.progress import rich_progress

    updates: dict[str, object] = {}
    if args.strategies:
        updates["strategies"] = [s.strip() for s in args.strategies.split(",") if s.strip()]
    for key in ("trials", "storage", "study_name", "worker"):
        if getattr(args, key) is not None:
            updates[key] = getattr(args, key)
    search = (config.search or SearchConfig()).model_copy(update=updates)
    report = run_search(
        config,
        search,
        progress=rich_progress(console),
        track=not args.no_track,
        tracking_uri=args.tracking_uri,
        log=lambda message: console.print(message, highlight=False),
    )
    table = Table(
        title=f"{config.judge.name}: {len([r for r in report.rows if r.duplicate_of is None])} trials, scored "
        "without test rows (cv: cross-validated over train + dev; dev: on dev)",
        title_justify="left",
    )
    for column in ("trial", "strategy", "state", "rule", "κ", "± SE", "LM calls", "s"):
        table.add_column(column, justify="left" if column in ("strategy", "state", "rule") else "right")
    if report.raw_dev is not None:
        table.add_row("raw", "(the judge as it is)", "–", "dev", f"{report.raw_dev:.3f}", "–", "–", "–")
    best = report.best
    for row in report.rows:
        if row.duplicate_of is not None:
            continue
        chosen = best is not None and row.number == best.number
        table.add_row(
            f"{row.number}{' *' if chosen else ''}",
            row.strategy,
            row.state.lower() + (f" after {row.pruned_after} rows" if row.pruned_after else ""),
            row.rule or "–",
            "–" if row.score is None else f"{row.score:.3f}",
            "–" if row.se is None or row.se != row.se else f"{row.se:.3f}",
            "–" if row.lm_calls is None else str(row.lm_calls),
            "–" if row.seconds is None else f"{row.seconds:.0f}",
        )
    repeats = len([r for r in report.rows if r.duplicate_of is not None])
    if repeats:
        table.caption = f"{repeats} proposals repeated settings already tried; answered from those trials"
    console.print(table)
    if report.choice is not None:
        for step in report.choice.steps:
            console.print(f"selection: {step}", highlight=False)
    console.print(
        f"study {report.study_name} in {redact_url(report.storage)}; {report.new_trials} new trials this run",
        highlight=False,
    )
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
    if report.registry is not None:
        console.print(f"registry: {report.registry.name} v{report.registry.version}; {report.registry.reason}")
    elif config.judge.register_as and report.not_exported:
        console.print(f"not registered as {config.judge.register_as}: no judge was exported", highlight=False)
    if run_id:
        judge = f"the judge: runs:/{run_id}/judge" if report.model_uri else "no judge was exported"
        console.print(
            f"MLflow run {run_id} in judgecal/{config.judge.name}: judge card card/judge_card.html, every metric "
            f"metrics.json; {judge}",
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
            "card/judge_card.html the plots.",
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


def _calibrate_one(config: ExperimentConfig, args: argparse.Namespace) -> tuple[CalibrationReport, str | None]:
    from judgecal.pipeline.calibration import run_calibration
    from judgecal.progress import rich_progress

    report = run_calibration(
        config,
        progress=rich_progress(console),
        track=not args.no_track,
        tracking_uri=args.tracking_uri,
        log=lambda message: console.print(message, highlight=False),
    )
    console.print(
        f"calibration: {report.strategy}, {report.calibration_seconds:.0f} s, "
        f"{report.calibration_lm_calls} LM calls (answers served from the cache included)",
        highlight=False,
    )
    _print_result(config, report, report.run_id)
    return report, report.run_id


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

    source = Path(args.source)
    if source.exists():
        record = read_record(source)
        default_out = (source if source.is_dir() else source.parent) / "card"
    else:
        import mlflow

        from judgecal.pipeline.tracking import EVALUATION_FILE
        from judgecal.workspace import configure_tracking, quiet_artifact_downloads

        configure_tracking(args.tracking_uri)
        try:
            with quiet_artifact_downloads():
                local = mlflow.artifacts.download_artifacts(run_id=args.source, artifact_path=EVALUATION_FILE)
        except Exception as error:  # MLflow raises several types for a missing run or artifact
            raise FileNotFoundError(
                f"{args.source}: neither a file nor an MLflow run with {EVALUATION_FILE} ({error})"
            ) from None
        record = read_record(Path(local))
        default_out = Path.cwd() / f"judge-card-{args.source}"
    report = evaluate_record(record, n_resamples=args.resamples, seed=args.seed)
    console.print(terminal_table(report))
    if report.comparison is not None:
        console.print(report.comparison.statement, highlight=False)
    card = write_card(report, record, args.out or default_out)
    console.print(f"judge card: {card}", highlight=False)
    return 0


def _judge(args: argparse.Namespace) -> int:
    from judgecal.backends.models import configure_dspy_cache
    from judgecal.export.adapters import judge_file
    from judgecal.export.flavor import open_judge
    from judgecal.progress import rich_progress
    from judgecal.workspace import dspy_cache_dir

    if str(args.judge).startswith(("runs:/", "models:/")):
        from judgecal.workspace import configure_tracking

        configure_tracking(args.tracking_uri)
    configure_dspy_cache(dspy_cache_dir())
    task = None
    if args.task:
        from judgecal.tasks.registry import resolve_task

        task = resolve_task(args.task)
    loaded = open_judge(
        args.judge,
        model=args.model,
        api_base=args.api_base,
        trust_endpoint=args.trust_endpoint,
        allow_modified=args.allow_modified,
        task=task,
    )
    for note in loaded.notes:
        errors.print(f"[bold yellow]warning:[/] {note}", highlight=False, markup=True)
    console.print(
        f"judge {loaded.bundle.name!r} from {redact_url(loaded.source)}, bundle {loaded.digest}", highlight=False
    )
    result = judge_file(
        loaded.judge, args.input, args.output, num_threads=args.num_threads, progress=rich_progress(console)
    )
    console.print(f"{result.judged} rows judged now, {result.already_done} already in {args.output}", highlight=False)
    if result.retried:
        retried = ", ".join(f"{count} calls retried after {reason}" for reason, count in sorted(result.retried.items()))
        console.print(f"{retried} (with backoff)", highlight=False)
    if result.failed:
        _print_error(
            f"{result.failed} rows got no verdict and were not written to {args.output}; they are listed in "
            f"{result.errors_file} (id, line, error). Run the same command again to judge them"
        )
        return 1
    return 0


def _estimate(args: argparse.Namespace) -> int:
    from judgecal.stats.estimate import estimate_from_files
    from judgecal.tasks.registry import resolve_task

    task = resolve_task(args.task)
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
    from judgecal.pipeline.tracking import ui_environment
    from judgecal.workspace import store_dir, tracking_uri

    uri = tracking_uri(args.tracking_uri)
    artifacts = store_dir() / "artifacts"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--default-artifact-root",
        artifacts.resolve().as_uri(),
        "--artifacts-destination",
        str(artifacts.resolve()),
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        "1",
    ]
    # MLflow 3.17 opens on its GenAI view; this address is the runs view. A server listening
    # on every interface is browsed at 127.0.0.1 from this machine.
    browsed = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{browsed}:{args.port}/#/experiments?workflowType=machine_learning"
    console.print(f"MLflow UI for {redact_url(uri)}, the runs: {url}  (Ctrl-C stops it)", highlight=False)
    return run_until_stopped(command, ui_environment())


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


if __name__ == "__main__":
    raise SystemExit(main())

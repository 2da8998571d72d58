"""The ``judgecal`` command's sub-commands and their flags, and its refusal of bad ones:
one line on stderr (not argparse's usage block) and exit code 2.

What each sub-command does lives in :mod:`judgecal.cli`, which hands its handlers to
:func:`build_parser`, so the flags need none of that code.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NoReturn

from judgecal.cli.output import print_error

Handler = Callable[[argparse.Namespace], int]
Commands = argparse._SubParsersAction  # what add_subparsers returns: one add_parser per sub-command


class _Parser(argparse.ArgumentParser):
    """argparse with judgecal's refusals: one line on stderr (not the usage block) and exit
    code 2. Its sub-commands' parsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        print_error(f"{message} (see {self.prog} --help)")
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


def _number(text: str, accepted: Callable[[float], bool], expected: str) -> float:
    """A number the flag accepts, or argparse's error saying what was expected (NaN and
    text that is not a number fail every check)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not accepted(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _positive_amount(text: str) -> float:
    """An argparse type: a finite amount above 0 (argparse names the flag)."""
    return _number(text, lambda value: 0 < value < float("inf"), "an amount above 0, e.g. 5 or 0.50")


def _alpha(text: str) -> float:
    """An argparse type: a chance of a false alarm, above 0 and below 0.5 (argparse names the flag)."""
    return _number(text, lambda value: 0 < value < 0.5, "a chance above 0 and below 0.5 (e.g. 0.05)")


def _level(text: str) -> float:
    """An argparse type: a confidence level strictly between 0 and 1 (argparse names the flag)."""
    return _number(text, lambda value: 0 < value < 1, "a level strictly between 0 and 1 (e.g. 0.95)")


def _targets(text: str) -> dict[str, float]:
    """An argparse type: ``VERDICT=SHARE`` pairs, comma-separated (``true=0.7,false=0.95``)."""
    targets: dict[str, float] = {}
    for part in text.split(","):
        verdict, sep, share = part.partition("=")
        try:
            value = float(share)
        except ValueError:
            value = float("nan")
        if not sep or not verdict.strip() or not 0 < value < 1:
            raise argparse.ArgumentTypeError(
                f"expected VERDICT=SHARE pairs with shares strictly between 0 and 1, e.g. true=0.7,false=0.95; "
                f"got {text!r}"
            )
        targets[verdict.strip()] = value
    return targets


def build_parser(handlers: Mapping[str, Handler]) -> argparse.ArgumentParser:
    """The whole command line; ``handlers`` holds the function each sub-command runs, by
    name (``import`` and ``merge`` for ``judgecal data import`` and ``judgecal data merge``)."""
    parser = _Parser(prog="judgecal", description="Calibrate LLM-as-judge models against human labels.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _calibrate_command(commands, handlers["calibrate"])
    _init_command(commands, handlers["init"])
    _report_command(commands, handlers["report"])
    _judge_command(commands, handlers["judge"])
    _estimate_command(commands, handlers["estimate"])
    _label_next_command(commands, handlers["label-next"])
    _plan_command(commands, handlers["plan"])
    _data_command(commands, handlers["import"], handlers["merge"])
    _ui_command(commands, handlers["ui"])
    _monitor_command(commands, handlers["monitor"])
    return parser


def _calibrate_command(commands: Commands, handler: Handler) -> None:
    calibrate = commands.add_parser("calibrate", help="calibrate a judge on labelled rows and record the run in MLflow")
    _calibrate_rows_and_model(calibrate)
    _calibrate_strategy(calibrate)
    _calibrate_run(calibrate)
    calibrate.set_defaults(handler=handler)


def _calibrate_rows_and_model(calibrate: argparse.ArgumentParser) -> None:
    """The experiment files, the rows and the judge model."""
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


def _calibrate_strategy(calibrate: argparse.ArgumentParser) -> None:
    """One strategy, or a search over several and where its study lives."""
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
    calibrate.add_argument(
        "--max-lm-calls",
        type=_positive_int,
        help="search: LM calls it may make, the winner's test and gate rows included; a trial that could exceed "
        "what is left is skipped",
    )
    calibrate.add_argument(
        "--max-cost",
        type=_positive_amount,
        help="search: US dollars it may spend on LM calls, kept like --max-lm-calls",
    )
    calibrate.add_argument(
        "--dry-run",
        action="store_true",
        help="print the LM calls, tokens, cost and time the run will take at most, then stop: nothing is judged "
        "or tracked (a few real calls time the model)",
    )


def _calibrate_run(calibrate: argparse.ArgumentParser) -> None:
    """Recorded verdicts, the registry, seeds, caps on the split and any other key of the file."""
    calibrate.add_argument("--recorded", help="calibrate the verdicts of reference_judges.<NAME> in the rows")
    calibrate.add_argument("--verdicts", type=Path, help="calibrate verdicts from a JSONL file {id, verdict}")
    calibrate.add_argument(
        "--register", help="register the judge under this MLflow model name (champion moves only if it is better)"
    )
    calibrate.add_argument(
        "--gate-data", type=Path, help="fresh labelled rows for the registry's champion gate (instead of a gate share)"
    )
    calibrate.add_argument(
        "--precision",
        type=_targets,
        metavar="VERDICT=SHARE,...",
        help="make the judge selective for this run: the precision each verdict must reach where it is given "
        "(e.g. true=0.7,false=0.95; [selective] in the experiment file)",
    )
    calibrate.add_argument("--seed", type=int, help="optimizer seed")
    calibrate.add_argument(
        "--num-threads",
        type=_positive_int,
        help="rows a remote model judges at once, for this run ([calibration] num_threads; an in-process model "
        "takes one at a time)",
    )
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


def _init_command(commands: Commands, handler: Handler) -> None:
    init = commands.add_parser(
        "init", help="write a starter experiment file: every key present, the required ones set, a row template"
    )
    init.add_argument("name", help="judge name: the MLflow experiment judgecal/<NAME> and the registered model")
    init.add_argument(
        "--task", required=True, help="relevance, pairwise, attribute, or your own module:Signature / file.py:Signature"
    )
    init.add_argument("--data", help="the labelled rows, relative to the experiment file (default: NAME.jsonl)")
    init.add_argument("--output", type=Path, help="the experiment file to write (default: NAME.toml)")
    init.set_defaults(handler=handler)


def _report_command(commands: Commands, handler: Handler) -> None:
    report = commands.add_parser("report", help="print a calibration's agreement table and write its judge card")
    report.add_argument("source", help="an MLflow run id, or a path to evaluation.json (or a folder holding it)")
    report.add_argument("--out", type=Path, help="folder for the card (default: ./judge-card-<run id or name>)")
    report.add_argument("--resamples", type=int, default=2000, help="group-bootstrap resamples")
    report.add_argument("--seed", type=int, default=0)
    report.add_argument("--tracking-uri", help="MLflow tracking URI (default: mlruns/mlflow.db)")
    report.set_defaults(handler=handler)


def _judge_command(commands: Commands, handler: Handler) -> None:
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
    judge.set_defaults(handler=handler)


def _estimate_command(commands: Commands, handler: Handler) -> None:
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
    estimate.add_argument(
        "--design",
        type=Path,
        help="the design judgecal label-next wrote (next.design.json): estimate from the rows it drew, each label "
        "weighted by its inclusion probability (active inference); --verdicts must be the file it drew from",
    )
    estimate.set_defaults(handler=handler)


def _share(text: str) -> float:
    """An argparse type: a share between 0 and 1 inclusive (argparse names the flag)."""
    return _number(text, lambda value: 0 <= value <= 1, "a share between 0 and 1 (e.g. 0.2)")


def _label_next_command(commands: Commands, handler: Handler) -> None:
    label = commands.add_parser(
        "label-next",
        help="choose the rows to label next from judged rows, with the inclusion probabilities an estimate needs",
    )
    label.add_argument("--task", required=True, help="task of the rows: relevance, pairwise, attribute, module:Sig")
    label.add_argument(
        "--verdicts",
        type=Path,
        required=True,
        help="judged rows: judgecal judge's output (with --rows), its queue of abstained rows, or rows with a "
        "probability",
    )
    label.add_argument(
        "--rows", type=Path, help="the rows that were judged (judgecal judge --input): their group and inputs"
    )
    label.add_argument(
        "--budget",
        type=_positive_int,
        required=True,
        help="rows to label, in expectation (the count drawn varies around it)",
    )
    label.add_argument(
        "--strategy",
        choices=("uncertainty", "stratified", "uniform"),
        default="uncertainty",
        help="uncertainty: more often where the judge is unsure; stratified: by verdict within each group; "
        "uniform (default: uncertainty)",
    )
    label.add_argument(
        "--mix", type=_share, default=0.2, help="uncertainty: share of the budget spread uniformly (default 0.2)"
    )
    label.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    label.add_argument(
        "--by",
        choices=("row", "group"),
        default="row",
        help="draw rows one by one (default) or whole groups (wider intervals; see docs/labelling.md)",
    )
    label.add_argument("--labelled", type=Path, help="rows labelled already (with id and label): left out of the draw")
    label.add_argument(
        "--output", type=Path, required=True, help="rows for annotators (JSONL); the design goes beside it"
    )
    label.set_defaults(handler=handler)


def _share_open(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1 (argparse names the flag)."""
    return _number(text, lambda value: 0 < value < 1, "a number strictly between 0 and 1")


def _plan_command(commands: Commands, handler: Handler) -> None:
    plan = commands.add_parser(
        "plan", help="how many labels (rows and groups) a decision needs, from pilot labels or expected rates"
    )
    plan.add_argument(
        "pilot",
        nargs="?",
        help="pilot labels with verdicts: runs:/<run id>, an evaluation.json, or labelled rows (with --task); "
        "leave out to plan from --kappa and --prevalence",
    )
    plan.add_argument("--task", help="task of a rows file: relevance, pairwise, attribute or module:Signature")
    plan.add_argument("--verdicts", type=Path, help="judgecal judge's output for the rows file, joined by id")
    plan.add_argument("--judge", help="the judge planned for (default: calibrated, or the only one)")
    plan.add_argument("--versus", help="a baseline judge: also plan to show the judge's kappa above it (default: raw)")
    plan.add_argument("--metric", choices=("kappa", "agreement", "precision"), default="kappa", help="default kappa")
    plan.add_argument("--verdict", help="precision of which verdict (default: the positive label)")
    plan.add_argument(
        "--half-width", type=_share_open, default=0.05, help="the interval wanted: metric ± this (default 0.05)"
    )
    plan.add_argument("--above", type=float, help="also plan to show the metric above this value")
    plan.add_argument("--power", type=_share_open, default=0.8, help="power of each test (default 0.8)")
    plan.add_argument("--alpha", type=_share_open, default=0.05, help="tests' level; intervals at 1 - alpha")
    plan.add_argument(
        "--alternative",
        choices=("two-sided", "greater"),
        default="two-sided",
        help="tests two-sided (default; what judgecal report's 95%% intervals show) or one-sided",
    )
    plan.add_argument(
        "--coverage",
        type=_share_open,
        help="plan instead the calibration groups a selective run's judge needs to find a band that meets its "
        "targets and answers this share of rows (the pilot: the run, or its evaluation.json with selective.json)",
    )
    plan.add_argument("--kappa", type=float, help="without a pilot: the judge's expected kappa")
    plan.add_argument("--prevalence", type=_share_open, help="without a pilot: the share of positive labels")
    plan.add_argument("--judge-rate", type=_share_open, help="without a pilot: the judge's positive rate")
    plan.add_argument("--rows-per-group", type=_positive_int, default=1, help="without a pilot (default 1)")
    plan.add_argument("--icc", type=_share, default=0.0, help="without a pilot: the label's intraclass correlation")
    plan.add_argument(
        "--pilot-uncertainty",
        choices=("ignore", "mean", "upper"),
        help="with a pilot: size the widths for how loosely its few groups show how much groups differ: mean, the "
        "width asked on average over such pilots; upper, the width asked or narrower from --pilot-confidence of "
        "them; ignore (default), the pilot's groups taken for the population's",
    )
    plan.add_argument("--pilot-confidence", type=_share_open, help="of --pilot-uncertainty upper (default 0.8)")
    plan.add_argument("--simulations", type=_positive_int, default=200, help="studies per size (default 200)")
    plan.add_argument("--resamples", type=_positive_int, default=400, help="bootstrap draws per study (default 400)")
    plan.add_argument("--seed", type=int, default=0, help="seed of every draw (default 0)")
    plan.add_argument(
        "--least-groups",
        type=_positive_int,
        default=10,
        help="smallest size planned (default 10: with fewer groups a group bootstrap's interval is too narrow)",
    )
    plan.add_argument("--most-groups", type=_positive_int, default=20_000, help="largest size searched")
    plan.add_argument("--out", type=Path, default=Path("plan"), help="folder for plan.json and plan.png")
    plan.add_argument("--tracking-uri", help="MLflow store of a runs:/ pilot (default: mlruns/mlflow.db)")
    plan.add_argument("--no-log", action="store_true", help="do not log the plan to a child of the pilot's run")
    plan.set_defaults(handler=handler)


def _data_command(commands: Commands, handler: Handler, merge_handler: Handler) -> None:
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
    importer.set_defaults(handler=handler)
    merge = data_commands.add_parser(
        "merge", help="join labelled files (the old labels and the rows annotators labelled) into one for calibrate"
    )
    merge.add_argument("files", type=Path, nargs="+", metavar="FILE", help="labelled rows (JSONL or CSV), in order")
    merge.add_argument("--task", required=True, help="task of the rows: relevance, pairwise, attribute, module:Sig")
    merge.add_argument("--output", type=Path, required=True, help="the joined rows to write (JSONL)")
    merge.set_defaults(handler=merge_handler)


def _ui_command(commands: Commands, handler: Handler) -> None:
    ui = commands.add_parser("ui", help="start the MLflow UI on the project's store")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--tracking-uri", help="store to show (default: mlruns/mlflow.db)")
    ui.set_defaults(handler=handler)


def _monitor_command(commands: Commands, handler: Handler) -> None:
    monitor = commands.add_parser(
        "monitor", help="re-check a deployed judge on one batch of fresh labelled rows (exit 3 on an alarm)"
    )
    monitor.add_argument("--judge", required=True, help="models:/<name>@<alias>, runs:/<id>/judge or a bundle folder")
    monitor.add_argument("--batch", type=Path, required=True, help="fresh rows with human labels (JSONL or CSV)")
    monitor.add_argument(
        "--state", type=Path, required=True, help="the monitor's state file (JSON); made on the first batch"
    )
    monitor.add_argument(
        "--threshold",
        type=_level,
        help="alarm when agreement is surely below this (default: the low end of the judge's test interval, or a "
        "selective judge's lowest target); fixed when the monitor starts",
    )
    monitor.add_argument(
        "--alpha", type=_alpha, help="chance of a false alarm over all batches (default 0.05); fixed at the start"
    )
    monitor.add_argument("--model", help="run the calibrated judge on another model (e.g. a served copy)")
    monitor.add_argument("--api-base", help="server of the judge model")
    monitor.add_argument(
        "--trust-endpoint", action="store_true", help="send the rows to the endpoint the bundle names (its api_base)"
    )
    monitor.add_argument(
        "--allow-modified", action="store_true", help="load a bundle edited after it was saved (digest mismatch)"
    )
    monitor.add_argument("--tracking-uri", help="MLflow tracking URI (default: mlruns/)")
    monitor.set_defaults(handler=handler)

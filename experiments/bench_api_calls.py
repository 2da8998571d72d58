"""What a calibration asks of its judge model, strategy by strategy: LM calls, tokens, and
what they would cost and take against a paid API.

    JUDGECAL_HOME=<dir> .venv/bin/python experiments/bench_api_calls.py [--records DIR]

Runs, on ``../shared/data/relevance/dev.jsonl`` with the embedded SmolLM2, what a user of a
paid API would run: ``judgecal calibrate --strategy NAME`` for each strategy of the
relevance task, then one ``--strategies all --trials 12`` search, each with the settings
of ``judgecal init``'s starter file (the default split plus a gate share of 0.15,
registered), each recorded in MLflow like any calibration. The embedded model is asked
exactly the requests an API model would be asked; a DSPy callback sorts every call by step
(fitting or the search's trials, the raw and the calibrated judge on test, the gate rows),
tells the calls the model answered from those DSPy's disk cache answered, and counts their
tokens with GPT-4o's tokenizer (``o200k_base``, shipped with LiteLLM) beside the embedded
model's own count.

The single strategies share one workspace, ``threshold`` first: it asks the raw judge about
every row, so every later run finds the raw judge's answers in the cache, as it would in a
project, and its model calls are the strategy's own. The search runs in a workspace of its
own (``<workspace>/search/``: its Optuna study and an empty response cache; its MLflow runs
go to the same store as the others): its model calls are what a search costs a new
project. Each finished run is saved in ``--records`` (default
``<workspace>/api-calls/``) and read back by a later run, which goes on with the next; the
tables (calls, tokens, cost at the prices of LiteLLM's local cost table, time at a given
latency) are printed from the records. Two of them are computed, not measured: a DSPy
strategy's own calls at most (all its calls but the raw judge's on test, whether an earlier
run had cached their answers or not), and what the search asks at most, from the single
runs, while its own record is missing or beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "relevance" / "dev.jsonl"
SINGLES = (
    "threshold",
    "base_rate",
    "verifier",
    "embedding_verifier",
    "stacking",
    "labeled_few_shot",
    "bootstrap_few_shot",
    "bootstrap_random_search",
    "copro",
    "mipro",
    "simba",
    "gepa",
)
DSPY_STRATEGIES = SINGLES[5:]  # the strategies that call the model to fit
PRICED_MODELS = ("gpt-4o-mini", "gpt-4.1-mini", "gpt-4o")
TOKENIZER_MODEL = "gpt-4o-mini"  # o200k_base, the tokenizer of every model priced above
# (seconds per call, calls at once): time = calls × latency ÷ threads, computed, not measured
LATENCIES = ((0.5, 1), (2.0, 1), (2.0, 16))
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


@dataclass
class StepCount:
    """The LM calls of one step: all of them, and those the model answered (not the cache)."""

    calls: int = 0
    model_calls: int = 0
    prompt_tokens: int = 0  # o200k_base, every call
    completion_tokens: int = 0
    model_prompt_tokens: int = 0  # o200k_base, the calls the model answered
    model_completion_tokens: int = 0
    smollm2_prompt_tokens: int = 0  # the embedded model's own count, the calls it answered
    longest_completion: int = 0


@dataclass
class RunRecord:
    name: str
    kind: str  # "single" or "search"
    rows: dict[str, int]
    steps: dict[str, StepCount]
    seconds: float
    fit_seconds: float | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)
    selected: str | None = None
    run_id: str | None = None


def call_meter() -> Any:
    """A DSPy callback counting every LM call under the step set last (``meter.step``),
    with its tokens; a call the engine did not see was answered from DSPy's cache. The
    embedded model takes one call at a time, so its counters move only for the call under
    way. (Defined here so that LiteLLM is imported after its cost table is set to local.)"""
    from dspy.utils.callback import BaseCallback

    class CallMeter(BaseCallback):
        def __init__(self) -> None:
            self.step = "fit"
            self.steps: dict[str, StepCount] = {}
            self._open: dict[str, tuple[str, int, Any, int, int]] = {}
            self._lock = threading.Lock()

        def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
            stats = engine_stats(instance)
            prompt = prompt_tokens(inputs)
            with self._lock:
                count = self.steps.setdefault(self.step, StepCount())
                count.calls += 1
                count.prompt_tokens += prompt
                seen = (stats.calls, stats.prompt_tokens) if stats is not None else (0, 0)
                self._open[call_id] = (self.step, prompt, stats, *seen)

        def on_lm_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
            with self._lock:
                opened = self._open.pop(call_id, None)
            if opened is None:
                return
            step, prompt, stats, calls_before, tokens_before = opened
            completion = completion_tokens(outputs)
            with self._lock:
                count = self.steps[step]
                count.completion_tokens += completion
                count.longest_completion = max(count.longest_completion, completion)
                if stats is not None and stats.calls > calls_before:
                    count.model_calls += 1
                    count.model_prompt_tokens += prompt
                    count.model_completion_tokens += completion
                    count.smollm2_prompt_tokens += stats.prompt_tokens - tokens_before

    return CallMeter()


def engine_stats(lm: Any) -> Any:
    return getattr(getattr(lm, "engine", None), "stats", None)


def prompt_tokens(inputs: dict[str, Any]) -> int:
    import litellm

    messages = inputs.get("messages") or [{"role": "user", "content": inputs.get("prompt") or ""}]
    return int(litellm.token_counter(model=TOKENIZER_MODEL, messages=messages))


def completion_tokens(outputs: Any) -> int:
    import litellm

    texts = []
    for output in outputs or []:
        text = output.get("text") if isinstance(output, dict) else output
        texts.append(text if isinstance(text, str) else json.dumps(text))
    return sum(len(litellm.encode(model=TOKENIZER_MODEL, text=text)) for text in texts)


class StepProgress:
    """A progress factory that only names the step: judgecal names each judging loop of a
    calibration ``raw: ...`` or ``calibrated: ...``; a judge inside another (a stack's raw
    judge) names its own loop otherwise, and its calls stay in the step around it."""

    def __init__(self, meter: Any) -> None:
        self.meter = meter

    def __call__(self, total: int, description: str) -> Any:
        if description.startswith(("raw:", "calibrated:")):
            self.meter.step = description
        return self

    def advance(self, steps: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def experiment(name: str, data: Path, strategy: str | None, trials: int | None) -> Any:
    """The settings of ``judgecal init NAME --task relevance`` on the shared file."""
    from judgecal.calibrate.optimizers import CalibrationConfig
    from judgecal.calibrate.search_config import SearchConfig
    from judgecal.data.split import SplitSpec
    from judgecal.pipeline.config import ExperimentConfig, JudgeSection

    return ExperimentConfig(
        judge=JudgeSection(name=name, task="relevance", data=data, register_as=name),
        split=SplitSpec(gate=0.15),
        calibration=CalibrationConfig(strategy=strategy),
        search=SearchConfig(trials=trials) if trials else None,
    )


def run_single(strategy: str, data: Path, workspace: Any, meter: Any, log: Any) -> RunRecord:
    from judgecal.pipeline.calibration import run_calibration

    config = experiment(f"api-{strategy}", data, strategy, None)
    started = time.perf_counter()
    meter.step = "fit"
    report = run_calibration(config, workspace=workspace, progress=StepProgress(meter), track=True, log=log)
    return RunRecord(
        name=strategy,
        kind="single",
        rows=split_rows(report.split, report.gate),
        steps=dict(meter.steps),
        seconds=time.perf_counter() - started,
        fit_seconds=report.calibration_seconds,
        run_id=report.tracked.run_id if report.tracked is not None else None,
    )


def run_search_record(trials: int, data: Path, workspace: Any, meter: Any, log: Any) -> RunRecord:
    """The search in ``workspace``: its own response cache and study, its MLflow runs in
    the workspace's tracking store (that of the single strategies)."""
    from judgecal.pipeline.search import run_search

    config = experiment("api-search", data, None, trials)
    assert config.search is not None
    started = time.perf_counter()
    meter.step = "search trials"

    def step_log(message: str) -> None:
        if "fitting again" in message or "compiling the program" in message:
            meter.step = "refit of the selected trial"
        log(message)

    report = run_search(
        config, config.search, workspace=workspace, progress=StepProgress(meter), track=True, log=step_log
    )
    assert report.calibration is not None
    split = report.calibration.split
    dev_rows = len(split.dev.rows)
    trial_rows = []
    for row in report.rows:
        if row.state not in FINISHED:
            continue
        calls = row.lm_calls
        at_most = calls
        if row.state == "PRUNED" and calls is not None and row.pruned_after is not None:
            at_most = calls + dev_rows - row.pruned_after  # had it been scored on all of dev
        trial_rows.append(
            {
                "number": row.number,
                "strategy": row.strategy,
                "state": row.state,
                "lm_calls": calls,
                "lm_calls_at_most": at_most,
                "pruned_after": row.pruned_after,
                "seconds": row.seconds,
                "repeat_of": row.duplicate_of,
            }
        )
    winner = report.choice.winner if report.choice is not None else None
    return RunRecord(
        name="search",
        kind="search",
        rows=split_rows(split, report.calibration.gate),
        steps=dict(meter.steps),
        seconds=time.perf_counter() - started,
        trials=trial_rows,
        selected=f"{winner.strategy} (trial {winner.number})" if winner is not None else None,
        run_id=report.parent_run_id,
    )


def split_rows(split: Any, gate: Any) -> dict[str, int]:
    sizes = {**split.sizes, "gate": len(gate.ids) if gate is not None else 0}
    return {**sizes, "all": sizes["train"] + sizes["dev"] + sizes["test"] + sizes["gate"]}


def load_record(path: Path) -> RunRecord:
    data = json.loads(path.read_text())
    data["steps"] = {name: StepCount(**count) for name, count in data["steps"].items()}
    return RunRecord(**data)


def save_record(path: Path, record: RunRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(record), indent=2))


def total(record: RunRecord, attribute: str, *, raw: bool | None = None) -> int:
    """Summed over steps; ``raw=True`` only the raw judge's steps, ``False`` the others."""
    return sum(
        getattr(count, attribute)
        for step, count in record.steps.items()
        if raw is None or step.startswith("raw:") == raw
    )


def price(model: str) -> tuple[float, float]:
    import litellm

    entry = litellm.model_cost[model]
    return float(entry["input_cost_per_token"]), float(entry["output_cost_per_token"])


def dollars(prompt: int, completion: int, model: str) -> float:
    per_prompt, per_completion = price(model)
    return prompt * per_prompt + completion * per_completion


def print_tables(records: list[RunRecord]) -> None:
    import importlib.metadata

    singles = [r for r in records if r.kind == "single"]
    searches = [r for r in records if r.kind == "search"]
    if singles:
        rows = singles[0].rows
        print(
            f"\nrows: train {rows['train']}, dev {rows['dev']}, test {rows['test']}, gate {rows['gate']} "
            f"(of {rows['all']})"
        )
        print("\nLM calls per strategy (all calls, cached answers included; tokens: o200k_base)")
        header = (
            "| strategy | fit | raw: test | calibrated: test | calibrated: gate | "
            "calls not answered by the cache | their prompt tokens | their completion tokens | fit s |"
        )
        print(header)
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for record in singles:
            steps = record.steps

            def calls(step: str, steps: dict[str, StepCount] = steps) -> str:
                return f"{steps[step].calls:,}" if step in steps else "0"

            print(
                f"| {record.name} | {calls('fit')} | {calls('raw: judging test')} | "
                f"{calls('calibrated: judging test')} | {calls('calibrated: judging gate rows')} | "
                f"{total(record, 'model_calls'):,} | {total(record, 'model_prompt_tokens'):,} | "
                f"{total(record, 'model_completion_tokens'):,} | {record.fit_seconds or 0:.0f} |"
            )
        print("\nTokens per call by step (o200k_base; SmolLM2's own count of the same prompts)")
        print("| strategy | step | calls | prompt tokens per call | SmolLM2 per call | completion per call | longest |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for record in singles:
            for step, count in record.steps.items():
                if not count.calls:
                    continue
                smol = f"{count.smollm2_prompt_tokens / count.model_calls:.0f}" if count.model_calls else "–"
                print(
                    f"| {record.name} | {step} | {count.calls:,} | {count.prompt_tokens / count.calls:.0f} | {smol} | "
                    f"{count.completion_tokens / count.calls:.1f} | {count.longest_completion} |"
                )
    version = importlib.metadata.version("litellm")
    prices = ", ".join(f"{m} ${price(m)[0] * 1e6:.2f} / ${price(m)[1] * 1e6:.2f}" for m in PRICED_MODELS)
    print(
        f"\nCost of the calls not answered by the cache (LiteLLM {version} cost table, per 1M tokens in/out: {prices})"
    )
    print(
        "| run | model calls | "
        + " | ".join(PRICED_MODELS)
        + " | "
        + " | ".join(time_header(*t) for t in LATENCIES)
        + " |"
    )
    print("|---|---:|" + "---:|" * (len(PRICED_MODELS) + len(LATENCIES)))
    for record in [*singles, *searches]:
        prompt, completion = total(record, "model_prompt_tokens"), total(record, "model_completion_tokens")
        cost = " | ".join(f"${dollars(prompt, completion, m):.2f}" for m in PRICED_MODELS)
        model_calls = total(record, "model_calls")
        times = " | ".join(duration(model_calls * latency / threads) for latency, threads in LATENCIES)
        print(f"| {record.name} | {model_calls:,} | {cost} | {times} |")
    dspy_runs = [r for r in singles if r.name in DSPY_STRATEGIES]
    if dspy_runs:
        print(
            "\nA DSPy strategy's own calls, at most (every call but the raw judge's on test, answered by the cache"
            " or not: what it asks when no earlier run shares its requests)"
        )
        print(
            "| strategy | calls | "
            + " | ".join(PRICED_MODELS)
            + " | "
            + " | ".join(time_header(*t) for t in LATENCIES)
            + " |"
        )
        print("|---|---:|" + "---:|" * (len(PRICED_MODELS) + len(LATENCIES)))
        for record in dspy_runs:
            calls = total(record, "calls", raw=False)
            prompt, completion = (
                total(record, "prompt_tokens", raw=False),
                total(record, "completion_tokens", raw=False),
            )
            cost = " | ".join(f"${dollars(prompt, completion, m):.2f}" for m in PRICED_MODELS)
            times = " | ".join(duration(calls * latency / threads) for latency, threads in LATENCIES)
            print(f"| {record.name} | {calls:,} | {cost} | {times} |")
    if singles:
        print_search_bound(singles)
    for record in searches:
        lm_trials = [t for t in record.trials if t["lm_calls"]]
        recorded = sum(t["lm_calls"] or 0 for t in record.trials)
        at_most = sum(t["lm_calls_at_most"] or 0 for t in record.trials)
        print(f"\nsearch: selected {record.selected}; {len(record.trials)} trials, {record.seconds / 60:.0f} min")
        print("| trial | strategy | state | LM calls | at most (all of dev scored) | pruned after dev rows |")
        print("|---|---|---|---:|---:|---:|")
        for t in record.trials:
            print(
                f"| {t['number']} | {t['strategy']} | {t['state'].lower()} | {t['lm_calls'] or 0:,} | "
                f"{t['lm_calls_at_most'] or 0:,} | {t['pruned_after'] or '–'} |"
            )
        print(
            f"trials' LM calls {recorded:,} (at most {at_most:,} had no trial been pruned; "
            f"{len(lm_trials)} trials called the model); the whole search by step:"
        )
        for step, count in record.steps.items():
            print(
                f"  {step}: {count.calls:,} calls, {count.model_calls:,} answered by the model, "
                f"{count.model_prompt_tokens:,} prompt and {count.model_completion_tokens:,} completion tokens"
            )


def print_search_bound(singles: list[RunRecord]) -> None:
    """What a ``--strategies all --trials 12`` search of a new project asks the model at
    most, computed from the single runs (not measured): on a binary task its 12 trials are
    the 12 strategies' defaults. The raw judge answers every row once (train + dev for the
    cross-validated trials, test, gate); each DSPy trial compiles as its single run did and
    is judged on every dev row (pruning only lowers that), at the tokens per call of its
    calibrated judge on test; a DSPy winner judges test and gate once more (the costliest
    of them is counted)."""
    by_name = {record.name: record for record in singles}
    rows = singles[0].rows
    raw = by_name.get("threshold")
    print(
        f"\nBefore any run, judgecal calibrate --dry-run bounds the same search at {package_bound(rows):,} LM calls "
        "(judgecal.calibrate.budget: each optimizer's loops at most, not what it asked here)"
    )
    print("\nA --strategies all --trials 12 search, at most (computed from the single runs above, not measured)")
    print(f"| part | LM calls | prompt tokens | completion tokens | {' | '.join(PRICED_MODELS)} |")
    print("|---|---:|---:|---:|" + "---:|" * len(PRICED_MODELS))
    parts: list[tuple[str, int, float, float]] = []
    if raw is not None:
        parts.append(
            (
                "raw judge, every row once",
                total(raw, "calls"),
                total(raw, "prompt_tokens"),
                total(raw, "completion_tokens"),
            )
        )
    missing = [] if raw is not None else ["threshold"]
    winners: list[tuple[str, int, float, float]] = []
    for name in DSPY_STRATEGIES:
        record = by_name.get(name)
        test = record.steps.get("calibrated: judging test") if record is not None else None
        if record is None or test is None or not test.calls:
            missing.append(name)
            continue
        fit = record.steps.get("fit", StepCount())
        dev = rows["dev"]
        parts.append(
            (
                f"{name} trial: fit {fit.calls:,} + dev {dev:,}",
                fit.calls + dev,
                fit.prompt_tokens + dev * test.prompt_tokens / test.calls,
                fit.completion_tokens + dev * test.completion_tokens / test.calls,
            )
        )
        judged = [
            record.steps[step]
            for step in ("calibrated: judging test", "calibrated: judging gate rows")
            if step in record.steps
        ]
        winners.append(
            (
                f"a DSPy winner on test and gate (the costliest: {name})",
                sum(c.calls for c in judged),
                sum(c.prompt_tokens for c in judged),
                sum(c.completion_tokens for c in judged),
            )
        )
    if winners:
        parts.append(max(winners, key=lambda part: part[2]))
    for part in [
        *parts,
        (
            "the search, at most" if not missing else f"sum of the parts measured (not: {', '.join(missing)})",
            sum(p[1] for p in parts),
            sum(p[2] for p in parts),
            sum(p[3] for p in parts),
        ),
    ]:
        name, calls, prompt, completion = part
        cost = " | ".join(f"${dollars(round(prompt), round(completion), m):.2f}" for m in PRICED_MODELS)
        print(f"| {name} | {calls:,} | {prompt:,.0f} | {completion:,.0f} | {cost} |")


def package_bound(rows: dict[str, int]) -> int:
    """The package's bound on a --strategies all --trials 12 search of a binary task with
    the embedded model (which gives token probabilities) on these rows, as the dry run
    computes it before anything is judged."""
    from judgecal.calibrate.budget import RowCounts, run_bound, search_trials
    from judgecal.calibrate.optimizers import CalibrationConfig
    from judgecal.calibrate.strategies import STRATEGIES

    counts = RowCounts(rows["train"], rows["dev"], rows["test"], rows["gate"])
    specs = [STRATEGIES[name] for name in SINGLES]
    trials = search_trials(specs, {}, 12, CalibrationConfig(), counts)
    return run_bound(trials, CalibrationConfig(), counts, searched=True, live=True).total


def time_header(latency: float, threads: int) -> str:
    return f"{latency:g} s per call, {threads} thread{'s' * (threads > 1)} (computed)"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def main() -> int:
    # LiteLLM reads its cost table from the package, not the network (this must precede its import).
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--strategies", default=",".join(SINGLES), help="single strategies, in this order")
    parser.add_argument("--search-trials", type=int, default=12, help="0: no search")
    parser.add_argument("--records", type=Path, help="default: <workspace>/api-calls")
    parser.add_argument("--tables-only", action="store_true", help="print the tables of the saved records")
    args = parser.parse_args()
    if not args.data.exists():
        print(f"{args.data} is absent; this benchmark needs the shared relevance data")
        return 2
    import dspy

    from judgecal.workspace import LoadedModels, Workspace

    workspace = Workspace.find(models=LoadedModels())
    root = workspace.root
    records_dir = args.records or root / "api-calls"
    names = [n for n in args.strategies.split(",") if n]
    plan = [(name, records_dir / f"{name}.json") for name in names]
    if args.search_trials:
        plan.append(("search", records_dir / f"search-{args.search_trials}.json"))
    records = []
    for name, path in plan:
        if path.exists():
            records.append(load_record(path))
            continue
        if args.tables_only:
            continue
        meter = call_meter()
        log = lambda message, name=name: print(f"[{name}] {message}", flush=True)  # noqa: E731
        with dspy.context(callbacks=[*dspy.settings.get("callbacks", []), meter]):
            if name == "search":
                search_root = root / "search"
                (search_root / "mlruns").mkdir(parents=True, exist_ok=True)
                searching = Workspace(search_root, tracking_uri=workspace.tracking_uri, models=workspace.models)
                record = run_search_record(args.search_trials, args.data, searching, meter, log)
            else:
                record = run_single(name, args.data, workspace, meter, log)
        save_record(path, record)
        records.append(record)
        print(
            f"[{name}] {total(record, 'calls'):,} LM calls, {total(record, 'model_calls'):,} answered by the "
            f"model, {record.seconds / 60:.1f} min",
            flush=True,
        )
    print_tables(records)
    return 0


if __name__ == "__main__":
    sys.exit(main())

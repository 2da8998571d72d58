"""What a calibration or a search will ask of its judge model, before it runs (``judgecal
calibrate --dry-run``): LM calls at most per strategy (:mod:`judgecal.calibrate.budget`),
tokens from the rows' rendered prompts counted with the model's tokenizer where that is
cheap (llama.cpp's for an in-process model, LiteLLM's ``token_counter`` for an API model),
their cost, and time from a probe of a few real calls. Nothing is judged and nothing is
tracked; the probe's answers are not cached.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from judgecal.calibrate.budget import (
    RowCounts,
    RunBound,
    SearchBudget,
    StrategyBound,
    raw_calls,
    run_bound,
    search_trials,
    strategy_bound,
)
from judgecal.calibrate.optimizers import strategy_name
from judgecal.calibrate.search import default_params
from judgecal.calibrate.search_config import SearchConfig
from judgecal.calibrate.strategies import resolve_strategies
from judgecal.data.rows import LabeledRow
from judgecal.pipeline.calibration import prepare, strategy_params
from judgecal.pipeline.results import Prepared
from judgecal.workspace import Workspace

PROBE_CALLS = 3  # real calls timed for the time estimate
TOKEN_SAMPLE = 200  # rows whose prompts are rendered and counted


@dataclass(frozen=True)
class TokenSizes:
    """Tokens per call, from the rows' rendered prompts: the raw judge's request, what
    one demo adds to a compiled program's, and an answer."""

    prompt: float
    demo: float
    answer: float


@dataclass(frozen=True)
class Probe:
    """Seconds per call over ``calls`` real calls to ``model``, not answered by the cache;
    ``failed``: why the probe got no answer (the time is then unknown)."""

    calls: int
    seconds_per_call: float
    model: str
    in_process: bool
    failed: str | None = None


@dataclass(frozen=True)
class RunPlan:
    """A dry run's answer: the rows, the bound on LM calls, tokens per call, the model's
    price per token (``None``: unknown), the probe, and how many calls go out at once."""

    rows: RowCounts
    bound: RunBound
    model: str
    tokens: TokenSizes | None
    price: tuple[float, float] | None
    probe: Probe | None
    threads: int
    max_labeled_demos: int

    def tokens_of(self, calls: int, bound: StrategyBound | None = None) -> tuple[float, float]:
        """Prompt and completion tokens of ``calls`` calls; a DSPy strategy's prompts carry
        its demos."""
        if self.tokens is None:
            return 0.0, 0.0
        demos = 0
        if bound is not None and (bound.fit or bound.dev) and bound.test:
            demos = int(bound.params.get("max_labeled_demos", self.max_labeled_demos))
        return calls * (self.tokens.prompt + demos * self.tokens.demo), calls * self.tokens.answer

    def cost_of(self, calls: int, bound: StrategyBound | None = None) -> float | None:
        if self.price is None:
            return None
        prompt, completion = self.tokens_of(calls, bound)
        return prompt * self.price[0] + completion * self.price[1]

    def seconds_of(self, calls: int) -> float | None:
        if self.probe is None or self.probe.failed:
            return None
        threads = 1 if self.probe.in_process else self.threads
        return calls * self.probe.seconds_per_call / threads

    @property
    def total_cost(self) -> float | None:
        if self.price is None:
            return None
        raw = self.cost_of(sum(self.bound.raw.values())) or 0.0
        trials = sum(self.cost_of(t.trial, t) or 0.0 for t in self.bound.trials)
        winner = self.bound.winner
        return raw + trials + ((self.cost_of(winner.winner, winner) or 0.0) if winner is not None else 0.0)


def plan_run(
    prepared: Prepared, search: SearchConfig | None, *, probe_calls: int = PROBE_CALLS, log: Any = print
) -> RunPlan:
    """The plan of a calibration (``search`` None: its one strategy) or a search on the
    rows ``prepared`` split."""
    config, split = prepared.config, prepared.split
    env = prepared.env(log)
    rows = RowCounts(
        len(split.train.rows), len(split.dev.rows), len(split.test.rows), len(prepared.gate_rows), prepared.order_swap
    )
    if search is not None:
        specs = resolve_strategies(search.strategies, prepared.task, has_program=env.base_is_live)
        defaults = {spec.name: default_params(spec, env) for spec in specs}
        trials = search_trials(
            specs, {n: _settings_of(p) for n, p in defaults.items()}, search.trials, config.calibration, rows
        )
    else:
        [spec] = resolve_strategies([strategy_name(config.calibration)], prepared.task, has_program=env.base_is_live)
        trials = [(spec, strategy_params(spec, config.calibration))]
    bound = run_bound(
        trials,
        config.calibration,
        rows,
        searched=search is not None,
        live=env.base_is_live,
        folds=search.folds if search is not None else 5,
        stated=may_state_scores(config.lm),
    )
    live = env.base_is_live and prepared.lm is not None
    sample = [*split.train.rows, *split.dev.rows][:TOKEN_SAMPLE]
    price = prepared.prices.per_token(prepared.lm.model) if live else (0.0, 0.0)
    return RunPlan(
        rows=rows,
        bound=bound,
        model=config.lm.model if live else f"recorded verdicts ({config.judge.recorded or config.judge.verdicts})",
        tokens=token_sizes(prepared, sample) if live else None,
        price=price,
        probe=probe(prepared, sample[:probe_calls]) if live and probe_calls else None,
        threads=config.calibration.num_threads,
        max_labeled_demos=config.calibration.max_labeled_demos,
    )


def may_state_scores(lm: Any) -> bool:
    """Whether the model may give no token probabilities, so that a cut on P(positive)
    asks for stated scores: a model they are not asked of (``[lm] logprobs``; by default
    they are asked of the embedded model, ``openai/`` and ``hosted_vllm/`` ones). A server
    that ignores the request makes the bound too low for ``threshold`` and ``base_rate``."""
    return not lm.wants_logprobs


def _settings_of(optuna_params: dict[str, Any]) -> dict[str, Any]:
    """A strategy's default Optuna parameters (``mipro.seed``) as its settings (``seed``)."""
    return {key.rsplit(".", 1)[-1]: value for key, value in optuna_params.items()}


def token_sizes(prepared: Prepared, rows: list[LabeledRow]) -> TokenSizes:
    """Mean tokens of the raw judge's rendered request over ``rows``, of one row as a demo,
    and of an answer, in the judge model's tokenizer."""
    import dspy

    from judgecal.judges.program import JudgeProgram

    task = prepared.task
    signature = JudgeProgram(task.signature).predict.signature
    adapter = dspy.JSONAdapter()
    count = _counter(prepared)
    prompts, demos = [], []
    for row in rows:
        prompts.append(count(adapter.format(signature, demos=[], inputs=dict(row.inputs))))
        demos.append(count([{"role": "user", "content": json.dumps(row.inputs, ensure_ascii=False)}]))
    answer = {task.decision_field: task.spec.labels[0]}
    answered = count([{"role": "assistant", "content": json.dumps(answer)}])
    mean = lambda values: sum(values) / max(1, len(values))  # noqa: E731
    return TokenSizes(prompt=mean(prompts), demo=mean(demos) + answered, answer=answered)


def _counter(prepared: Prepared) -> Any:
    """Tokens of a list of messages: llama.cpp's tokenizer for an in-process model (the
    model is already loaded), LiteLLM's ``token_counter`` for any other."""
    lm = prepared.lm
    engine = getattr(lm, "engine", None)
    if prepared.config.lm.is_in_process and engine is not None and hasattr(engine, "model"):
        llama = engine.model.llama

        def count_llama(messages: list[dict[str, Any]]) -> int:
            text = "\n".join(str(m.get("content", "")) for m in messages)
            return len(llama.tokenize(text.encode("utf-8"), add_bos=True, special=True)) + 4 * len(messages)

        return count_llama
    import litellm

    model = prepared.config.lm.model
    return lambda messages: int(litellm.token_counter(model=model, messages=messages))


def probe(prepared: Prepared, rows: list[LabeledRow]) -> Probe:
    """A few real calls of the raw judge, past the response cache, timed."""
    from judgecal.judges.fitted import ProgramJudge
    from judgecal.judges.program import JudgeProgram
    from judgecal.redact import error_line

    lm = prepared.lm.copy(cache=False)
    judge = ProgramJudge(prepared.task, JudgeProgram(prepared.task.signature), lm, prepared.config.judge.name)
    model, in_process = prepared.config.lm.model, prepared.config.lm.is_in_process
    started = time.perf_counter()
    try:
        judge.predict(rows)
    except Exception as error:  # an unreachable server or a bad key: the counts stand, the time is unknown
        return Probe(len(rows), 0.0, model, in_process, failed=error_line(error, with_type=True))
    return Probe(len(rows), (time.perf_counter() - started) / max(1, len(rows)), model, in_process)


def plan(
    config: Any, search: SearchConfig | None, workspace: Workspace, *, probe_calls: int = PROBE_CALLS, log: Any = print
) -> RunPlan:
    """Split the rows and plan (``judgecal calibrate --dry-run``)."""
    return plan_run(prepare(config, workspace, log=log), search, probe_calls=probe_calls, log=log)


def search_budget(prepared: Prepared, specs: list[Any], search: SearchConfig, meter: Any) -> SearchBudget | None:
    """The budget a search keeps (``max_lm_calls``, ``max_cost_usd``), with its trials'
    bounds, what is reserved for the raw judge's calls still to come and the costliest
    winner, and what ``meter`` (the search's counter) has counted so far. A cost limit on
    a model without a known price stops here, before any call."""
    config = prepared.config
    if search.max_lm_calls is None and search.max_cost_usd is None:
        return None
    split = prepared.split
    rows = RowCounts(
        len(split.train.rows), len(split.dev.rows), len(split.test.rows), len(prepared.gate_rows), prepared.order_swap
    )
    stated = may_state_scores(config.lm)
    price = prepared.prices.per_token(prepared.lm.model) if prepared.lm is not None else (0.0, 0.0)
    if search.max_cost_usd is not None and price is None:
        raise ValueError(
            f"--max-cost: LiteLLM's cost table has no price for {config.lm.model}; give one in the experiment "
            "file: [lm] price_per_million = {input = ..., output = ...} (US dollars per million tokens)"
        )
    sample = [*split.train.rows, *split.dev.rows][:TOKEN_SAMPLE]
    sizes = token_sizes(prepared, sample) if search.max_cost_usd is not None and prepared.lm is not None else None
    costing = RunPlan(
        rows,
        run_bound([], config.calibration, rows, searched=True, live=False),
        config.lm.model,
        sizes,
        price,
        None,
        config.calibration.num_threads,
        config.calibration.max_labeled_demos,
    )

    def bound(spec: Any, params: dict[str, Any]) -> StrategyBound:
        if prepared.lm is None:
            return StrategyBound(spec.name, 0, 0, 0, 0, params)
        return strategy_bound(spec, config.calibration, params, rows, searched=True, folds=search.folds, stated=stated)

    raw_total = sum(raw_calls(specs, rows, searched=True, live=prepared.lm is not None).values())
    winner = max((bound(spec, {}) for spec in specs), key=lambda b: b.winner, default=None)

    def reserved() -> tuple[int, float]:
        still_raw = max(0, raw_total - getattr(prepared.raw, "answered", 0))
        kept = still_raw + (winner.winner if winner is not None else 0)
        dollars = (costing.cost_of(still_raw) or 0.0) + (
            costing.cost_of(winner.winner, winner) or 0.0 if winner else 0.0
        )
        return kept, dollars

    def spent() -> tuple[int, float | None]:
        return meter.calls, meter.usage(prepared.prices).cost_usd

    return SearchBudget(search.max_lm_calls, search.max_cost_usd, bound, costing.cost_of, spent, reserved)

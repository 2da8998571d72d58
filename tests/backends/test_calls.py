"""Counting LM calls with their tokens and cost: a call the cache answered costs nothing
and is counted apart; tokens are seen in DSPy's worker threads and by an outer counter."""

from __future__ import annotations

import uuid

import pytest

from judgecal.backends.calls import LMCallCounter
from judgecal.backends.models import build_lm
from judgecal.backends.pricing import PricePerMillion, Prices
from judgecal.backends.settings import LMConfig
from judgecal.data.rows import LabeledRow
from judgecal.judges.program import Judge
from judgecal.tasks.registry import resolve_task


def _rows(count: int) -> list[LabeledRow]:
    tag = uuid.uuid4().hex  # new requests: the session's response cache has never seen them
    return [
        LabeledRow(id=f"r{i}", group="g", inputs={"prompt": f"{tag} row {i}", "attribute": "a"}, label=True, line=i)
        for i in range(count)
    ]


def _judge(server, model: str = "openai/gpt-4o-mini", threads: int = 3) -> Judge:
    lm = build_lm(LMConfig(model=model, api_base=server.url, cache=True, num_retries=0))
    return Judge(resolve_task("relevance"), lm=lm, num_threads=threads)


def test_tokens_are_counted_in_dspys_worker_threads_and_priced_from_litellms_table(chat_server, dspy_cache) -> None:
    chat_server.usage = (100, 5)
    counter = LMCallCounter()
    with counter.counting():
        _judge(chat_server).predict(_rows(3))
    usage = counter.usage()
    assert (usage.calls, usage.cached, usage.prompt_tokens, usage.completion_tokens) == (3, 0, 300, 15)
    assert usage.cost_usd == pytest.approx(300 * 0.15e-6 + 15 * 0.6e-6)  # gpt-4o-mini: $0.15 / $0.60 per 1M


def test_a_call_the_cache_answered_is_counted_apart_and_costs_nothing(chat_server, dspy_cache) -> None:
    chat_server.usage = (100, 5)
    rows, judge = _rows(2), _judge(chat_server, threads=1)
    judge.predict(rows)
    counter = LMCallCounter()
    with counter.counting():
        judge.predict(rows)
    usage = counter.usage()
    assert len(chat_server.requests) == 2
    assert (usage.calls, usage.cached, usage.prompt_tokens, usage.cost_usd) == (2, 2, 0, 0.0)


def test_a_users_price_overrides_the_table_and_an_unknown_model_has_no_cost(chat_server, dspy_cache) -> None:
    chat_server.usage = (1000, 10)
    counter = LMCallCounter()
    with counter.counting():
        _judge(chat_server, model="openai/my-own-model").predict(_rows(1))
    assert counter.usage().cost_usd is None
    prices = Prices({"openai/my-own-model": PricePerMillion(input=2.0, output=8.0)})
    assert counter.usage(prices).cost_usd == pytest.approx(1000 * 2e-6 + 10 * 8e-6)


def test_an_outer_counter_sees_the_tokens_of_the_calls_an_inner_one_counted(chat_server, dspy_cache) -> None:
    chat_server.usage = (7, 3)
    outer, inner = LMCallCounter(), LMCallCounter()
    with outer.counting():
        _judge(chat_server).predict(_rows(1))
        with inner.counting():
            _judge(chat_server).predict(_rows(2))
    assert (inner.usage().calls, inner.usage().prompt_tokens) == (2, 14)
    assert (outer.usage().calls, outer.usage().prompt_tokens, outer.usage().completion_tokens) == (3, 21, 9)


def test_a_model_in_this_process_costs_nothing() -> None:
    assert Prices().cost("llamacpp/smollm2-135m-instruct.q4_1-0123456789ab", 10_000, 100) == 0.0

"""experiments/bench_api_calls.py: what it counts as a request the model answered, and what
as one DSPy's cache answered (the cost of an API model rests on that difference)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest

from tests.conftest import REPO


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_api_calls", REPO / "experiments" / "bench_api_calls.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Passing OpenAI-style message:DeprecationWarning")  # as DSPy's adapters call it
def test_a_request_asked_again_is_counted_as_answered_by_the_cache(embedded_lm) -> None:
    import dspy

    meter = bench().call_meter()
    messages = [{"role": "user", "content": "Is the sky blue? Answer yes or no. (asked twice by the call meter)"}]
    with dspy.context(callbacks=[meter]):
        meter.step = "first"
        embedded_lm(messages=messages)
        meter.step = "again"
        embedded_lm(messages=messages)
    first, again = meter.steps["first"], meter.steps["again"]
    assert (first.calls, first.model_calls) == (1, 1)
    assert (again.calls, again.model_calls) == (1, 0)
    assert first.prompt_tokens == again.prompt_tokens > 0  # the same request, counted with o200k_base
    assert first.model_prompt_tokens == first.prompt_tokens and again.model_prompt_tokens == 0
    assert first.smollm2_prompt_tokens > 0 and again.smollm2_prompt_tokens == 0
    assert first.completion_tokens == again.completion_tokens > 0


def test_a_stacks_inner_loop_stays_in_the_calibrations_step() -> None:
    module = bench()
    meter = module.call_meter()
    progress = module.StepProgress(meter)
    progress(406, "calibrated: judging gate rows")
    progress(406, "stacking")
    assert meter.step == "calibrated: judging gate rows"

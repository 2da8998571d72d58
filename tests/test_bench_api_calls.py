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


def test_the_searchs_bound_adds_the_raw_judge_each_dspy_trial_on_all_of_dev_and_one_winner(capsys) -> None:
    module = bench()
    step = module.StepCount
    rows = {"train": 10, "dev": 4, "test": 3, "gate": 2, "all": 19}
    raw = module.RunRecord(
        "threshold",
        "single",
        rows,
        {
            "fit": step(14, 14, 1400, 14),
            "raw: judging test": step(3, 3, 300, 3),
            "calibrated: judging gate rows": step(2, 2, 200, 2),
        },
        1.0,
    )
    few_shot = module.RunRecord(
        "bootstrap_few_shot",
        "single",
        rows,
        {
            "fit": step(5, 5, 500, 5),
            "calibrated: judging test": step(3, 3, 600, 3),
            "calibrated: judging gate rows": step(2, 2, 400, 2),
        },
        1.0,
    )
    module.print_search_bound([raw, few_shot])
    lines = capsys.readouterr().out.splitlines()
    trial = next(line for line in lines if line.startswith("| bootstrap_few_shot trial"))
    assert "| 9 | 1,300 | 9 |" in trial  # fit 5 + 4 dev rows at the test's 200 tokens per call
    winner = next(line for line in lines if line.startswith("| a DSPy winner"))
    assert "| 5 | 1,000 | 5 |" in winner
    summed = lines[-1]
    assert summed.startswith("| sum of the parts measured (not: labeled_few_shot, bootstrap_random_search")
    assert "| 33 | 4,200 | 33 |" in summed  # 19 raw + 9 + 5

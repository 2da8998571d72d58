"""The embedded model behind the llama.cpp engine: grammar-constrained JSON, every allowed
answer's probability at the decision, DSPy's cache in front of it, and prefix reuse."""

from __future__ import annotations

import pytest

from judgecal.data.rows import LabeledRow
from judgecal.judges.program import Judge
from judgecal.judges.verdict import Verdict
from judgecal.tasks.registry import resolve_task

pytestmark = pytest.mark.slow  # each test runs the embedded model


def test_embedded_model_answers_relevance_with_a_parsed_verdict_and_confidence(embedded_lm) -> None:
    judge = Judge(resolve_task("relevance"), lm=embedded_lm)
    verdict = judge(prompt="Suggest a quick dinner recipe.", attribute="The user has a peanut allergy.")
    assert isinstance(verdict, Verdict)
    assert verdict.error is None
    assert isinstance(verdict.label, bool)
    assert verdict.probabilities is not None
    assert set(verdict.probabilities) == {"true", "false"}
    assert sum(verdict.probabilities.values()) == pytest.approx(1.0)
    assert verdict.confidence == pytest.approx(verdict.probabilities["true" if verdict.label else "false"])
    assert verdict.confidence >= 0.5  # greedy decoding picks the likelier answer


def test_embedded_model_answers_pairwise_with_one_of_the_allowed_labels(embedded_lm) -> None:
    judge = Judge(resolve_task("pairwise"), lm=embedded_lm)
    verdict = judge(prompt="What is 2 + 2?", user_attributes=[], response_a="4", response_b="5")
    assert verdict.label in {"A", "B", "tie"}
    assert verdict.probabilities is not None and set(verdict.probabilities) == {"A", "B", "tie"}


def test_embedded_model_extracts_attributes_with_evidence(embedded_lm) -> None:
    import dspy
    from judgecal.signatures import Attribute, ExtractAttributes, Turn

    conversation = [
        Turn(role="user", content="I'm a nurse on night shifts and I need easy meals I can cook at 7am."),
        Turn(role="assistant", content="Here are three quick breakfast-dinner ideas."),
    ]
    with dspy.context(lm=embedded_lm, adapter=dspy.JSONAdapter()):
        prediction = dspy.Predict(ExtractAttributes)(conversation=conversation)
    assert isinstance(prediction.attributes, list)
    assert 1 <= len(prediction.attributes) <= 8
    for attribute in prediction.attributes:
        assert isinstance(attribute, Attribute)
        assert attribute.attribute.strip() and attribute.evidence.strip()


def test_embedded_model_is_deterministic_and_a_repeat_is_served_from_the_cache(embedded_lm) -> None:
    judge = Judge(resolve_task("relevance"), lm=embedded_lm)
    inputs = {"prompt": "Plan a weekend in Lisbon.", "attribute": "The user uses a wheelchair."}
    calls_before = embedded_lm.engine.stats.calls
    first = judge(**inputs)
    calls_after_first = embedded_lm.engine.stats.calls
    second = judge(**inputs)
    assert first == second
    assert embedded_lm.engine.stats.calls == calls_after_first  # the engine was not called again
    assert calls_after_first - calls_before <= 1


def test_rows_judged_with_the_same_demos_reuse_the_evaluated_prefix(embedded_lm) -> None:
    import dspy

    task = resolve_task("relevance")
    judge = Judge(task, lm=embedded_lm)
    judge.program.predict.demos = [
        dspy.Example(prompt=f"Demo prompt {i}", attribute=f"Demo attribute {i}", relevant=i % 2 == 0) for i in range(4)
    ]
    rows = [
        LabeledRow(
            id=f"r{i}",
            group="g",
            inputs={"prompt": "Recommend a laptop for travel.", "attribute": f"The user owns {i + 2} cats."},
            label=False,
        )
        for i in range(3)
    ]
    stats = embedded_lm.engine.stats
    prompt_before, reused_before = stats.prompt_tokens, stats.reused_tokens
    verdicts = judge.predict(rows)
    assert len(verdicts) == 3
    evaluated = stats.prompt_tokens - prompt_before
    reused = stats.reused_tokens - reused_before
    # The 2nd and 3rd prompts differ from the previous one only near the end.
    assert reused > 0.5 * evaluated

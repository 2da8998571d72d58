"""Stage 1: grounded evidence, verify-and-refine, and instructor's validate-and-retry."""

from __future__ import annotations

import json
from pathlib import Path

import instructor
import pytest
from judgecal.signatures import Turn
from pydantic import ValidationError

from judgecal.data import SplitSpec, load_rows, split_by_group
from judgecal.extraction import (
    GroundedAttribute,
    RefinedExtractor,
    extract_with_instructor,
    instructor_create,
    quotes_conversation,
)
from judgecal.strategies import VerifierJudge
from judgecal.tasks import resolve_task

REPO = Path(__file__).resolve().parents[1]
CONVERSATION = [
    Turn(role="user", content="I'm a nurse on night shifts and I need easy meals I can cook at 7am."),
    Turn(role="assistant", content="As a chef I'd suggest omelettes."),
]


def test_evidence_must_quote_what_the_user_said() -> None:
    assert quotes_conversation("I'm a nurse on night shifts", CONVERSATION)
    assert quotes_conversation("im a nurse on night shifts!", CONVERSATION)  # case and punctuation
    assert not quotes_conversation("As a chef I'd suggest omelettes", CONVERSATION)  # the assistant's words
    assert not quotes_conversation("I live in Boston", CONVERSATION)


def test_grounded_attribute_validates_against_the_conversation_in_context() -> None:
    context = {"conversation": CONVERSATION}
    good = GroundedAttribute.model_validate(
        {"attribute": "The user is a nurse.", "evidence": "I'm a nurse"}, context=context
    )
    assert good.evidence == "I'm a nurse"
    with pytest.raises(ValidationError, match="does not quote anything the user said"):
        GroundedAttribute.model_validate({"attribute": "The user is a chef.", "evidence": "As a chef"}, context=context)


def completion(payload: dict) -> object:
    from openai.types.chat import ChatCompletion

    return ChatCompletion.model_validate(
        {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "scripted",
            "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": json.dumps(payload)}}
            ],
        }
    )


def test_instructor_re_asks_with_the_validation_error_until_the_evidence_is_real() -> None:
    answers = iter(
        [
            {"attributes": [{"attribute": "The user is a chef.", "evidence": "As a chef I'd suggest"}]},
            {"attributes": [{"attribute": "The user works night shifts.", "evidence": "nurse on night shifts"}]},
        ]
    )
    seen: list[list[dict]] = []

    def scripted(**kwargs: object) -> object:
        seen.append(list(kwargs["messages"]))  # type: ignore[arg-type]
        return completion(next(answers))

    create = instructor.patch(create=scripted, mode=instructor.Mode.JSON_SCHEMA)
    attributes = extract_with_instructor(CONVERSATION, create=create, max_retries=2)
    assert [a.attribute for a in attributes] == ["The user works night shifts."]
    assert len(seen) == 2
    assert "does not quote anything the user said" in json.dumps(seen[1])  # the error went back to the model


@pytest.mark.slow
def test_embedded_model_runs_behind_instructor(embedded_lm) -> None:
    """The 135M model rarely quotes correctly; what matters is that requests are
    grammar-constrained, parsed and validated, and a failure says why."""
    create = instructor_create("embedded", max_tokens=200)
    try:
        attributes = extract_with_instructor(CONVERSATION, create=create, max_retries=1)
    except instructor.core.InstructorRetryException as error:
        assert "does not quote" in str(error) or "validation error" in str(error)
    else:
        assert all(quotes_conversation(a.evidence, CONVERSATION) for a in attributes)


@pytest.mark.slow
def test_refined_extractor_keeps_only_grounded_attributes_the_verifier_accepts(embedded_lm) -> None:
    import dspy

    task = resolve_task("attribute")
    dataset = load_rows(REPO / "experiments" / "data" / "attribute_demo.jsonl", task.spec)
    split = split_by_group(dataset, SplitSpec(dev=0.25, test=0.25, seed=0))
    verifier = VerifierJudge(task=task).fit(split.train.rows, split.dev.rows)
    with dspy.context(lm=embedded_lm.copy(max_tokens=600), adapter=dspy.JSONAdapter()):
        result = RefinedExtractor(verifier=verifier)(conversation=CONVERSATION)
    assert len(result.attributes) + len(result.rejected) == len(result.extracted)
    for attribute in result.attributes:
        assert quotes_conversation(attribute.evidence, CONVERSATION)

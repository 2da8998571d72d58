"""Stage 1: grounded evidence, verify-and-refine, and instructor's validate-and-retry."""

from __future__ import annotations

import json
from pathlib import Path

import instructor
import pytest
from judgecal.signatures import Turn
from pydantic import ValidationError

from judgecal.calibrate.trained import VerifierJudge
from judgecal.data.rows import load_rows
from judgecal.data.split import SplitSpec, split_by_group
from judgecal.judges.extraction import GroundedAttribute, RefinedExtractor, extract_with_instructor, quotes_conversation
from judgecal.tasks.registry import resolve_task

REPO = Path(__file__).resolve().parents[2]
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
    """Whatever the 135M model says, its answer is grammar-constrained JSON of the response
    model, and instructor's result is exactly what validation against the conversation
    allows: the attributes when every evidence quotes the user, else a retry error saying so."""
    from judgecal.backends.instructor import openai_chat_create
    from judgecal.backends.settings import LMConfig
    from judgecal.judges.extraction import GroundedAttributes

    complete = openai_chat_create(LMConfig(max_tokens=300))
    answers: list[str] = []

    def recording(**kwargs: object) -> object:
        completion = complete(**kwargs)
        answers.append(completion.choices[0].message.content)
        return completion

    create = instructor.patch(create=recording, mode=instructor.Mode.JSON_SCHEMA)
    try:
        attributes, error = extract_with_instructor(CONVERSATION, create=create, max_retries=1, max_tokens=300), None
    except instructor.core.InstructorRetryException as raised:
        attributes, error = None, str(raised)
    assert 1 <= len(answers) <= 2  # max_retries=1: one re-ask at most
    for answer in answers:
        GroundedAttributes.model_validate_json(answer)  # the grammar held: schema-valid JSON every time

    def problem(answer: str) -> str | None:
        """Why validation against the conversation rejects ``answer`` (None: it accepts it)."""
        try:
            GroundedAttributes.model_validate_json(answer, context={"conversation": CONVERSATION})
        except ValidationError as invalid:
            return invalid.errors()[0]["msg"]
        return None

    problems = [problem(answer) for answer in answers]
    assert None not in problems[:-1]  # the model was re-asked only after an invalid answer
    if problems[-1] is None:
        final = GroundedAttributes.model_validate_json(answers[-1]).attributes
        assert attributes is not None and [a.attribute for a in attributes] == [a.attribute for a in final]
    else:
        assert attributes is None and error is not None and len(answers) == 2
        assert problems[-1] in error  # the failure says why


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

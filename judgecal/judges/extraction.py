"""Stage 1: extracting user attributes, and refining them with a calibrated verifier.

Extractors over-reach: they infer a profession from one question, describe the assistant
instead of the user, or cite evidence the conversation does not contain. Verify-and-refine
keeps an extracted attribute only when

1. its evidence quotes a user turn of the conversation (a pydantic validator, so the
   same rule applies inside DSPy and to instructor's validate-and-retry), and
2. a calibrated attribute verifier (a judge of the ``attribute`` task, calibrated like any
   other) accepts it.

:class:`RefinedExtractor` is the DSPy module; :func:`extract_with_instructor` is the same
contract for callers outside DSPy: instructor re-asks the model, with the validation
error, until every attribute's evidence is real.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

import dspy
from pydantic import BaseModel, Field, ValidationInfo, field_validator

from judgecal.data.rows import LabeledRow
from judgecal.signatures import ExtractAttributes, Turn

MIN_QUOTE_MATCH = 0.8


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s$%.,'-]", " ", text.lower())).strip(" .,'\"")


def quotes_conversation(evidence: str, conversation: Sequence[Turn | dict[str, Any]]) -> bool:
    """Whether ``evidence`` quotes (or nearly quotes) something the user said.

    Exact containment after normalising case and punctuation, or a matching stretch of at
    least 80% of the evidence (``difflib``), so light paraphrase of a quote still counts.
    """
    quote = _normalise(evidence)
    if len(quote) < 3:
        return False
    for turn in conversation:
        role = turn.role if isinstance(turn, Turn) else turn.get("role")
        content = turn.content if isinstance(turn, Turn) else str(turn.get("content", ""))
        if role != "user":
            continue
        said = _normalise(content)
        if quote in said:
            return True
        matcher = difflib.SequenceMatcher(None, quote, said, autojunk=False)
        matched = sum(block.size for block in matcher.get_matching_blocks())
        if matched / len(quote) >= MIN_QUOTE_MATCH and matcher.find_longest_match().size >= 0.5 * len(quote):
            return True
    return False


class GroundedAttribute(BaseModel):
    """An attribute whose evidence must quote the user (validated against the
    ``conversation`` passed as pydantic validation context)."""

    attribute: str = Field(min_length=3, max_length=300)
    evidence: str = Field(min_length=3, max_length=300)

    @field_validator("evidence")
    @classmethod
    def evidence_is_in_the_conversation(cls, value: str, info: ValidationInfo) -> str:
        conversation = (info.context or {}).get("conversation")
        if conversation is not None and not quotes_conversation(value, conversation):
            raise ValueError(f"evidence {value!r} does not quote anything the user said; quote the user's own words")
        return value


class GroundedAttributes(BaseModel):
    attributes: list[GroundedAttribute] = Field(max_length=5)


class RefinedExtractor(dspy.Module):
    """Extract attributes, drop those whose evidence is not in the conversation, then keep
    only those the verifier accepts. ``verifier`` is any fitted judge of the ``attribute``
    task (a calibrated LLM judge, a trained verifier, a stack)."""

    def __init__(self, verifier: Any = None) -> None:
        super().__init__()
        self.extract = dspy.Predict(ExtractAttributes)
        self.verifier = verifier

    def forward(self, conversation: list[Turn]) -> dspy.Prediction:
        extracted = self.extract(conversation=conversation).attributes or []
        grounded, ungrounded = [], []
        for item in extracted:
            (grounded if quotes_conversation(item.evidence, conversation) else ungrounded).append(item)
        rejected = list(ungrounded)
        kept = grounded
        if self.verifier is not None and grounded:
            rows = [
                LabeledRow(
                    id=f"candidate-{i}",
                    group="-",
                    label=True,
                    inputs={"conversation": conversation, "attribute": a.attribute, "evidence": a.evidence},
                )
                for i, a in enumerate(grounded)
            ]
            verdicts = self.verifier.predict(rows)
            kept = [a for a, v in zip(grounded, verdicts, strict=True) if v.label is True]
            rejected += [a for a, v in zip(grounded, verdicts, strict=True) if v.label is not True]
        return dspy.Prediction(attributes=kept, rejected=rejected, extracted=extracted)


def extract_with_instructor(
    conversation: Sequence[Turn], *, create: Any, max_retries: int = 2, max_tokens: int = 400
) -> list[GroundedAttribute]:
    """Extract grounded attributes with instructor: the model is re-asked, with the
    validation error, while any evidence fails to quote the user. ``create`` is an
    instructor-patched ``chat.completions.create`` (see :func:`instructor_create`)."""
    turns = [t if isinstance(t, Turn) else Turn.model_validate(t) for t in conversation]
    transcript = "\n".join(f"{t.role}: {t.content}" for t in turns)
    instructions = (ExtractAttributes.__doc__ or "").strip()
    result = create(
        response_model=GroundedAttributes,
        messages=[
            {"role": "system", "content": instructions + "\nEvidence must quote the user's own words."},
            {"role": "user", "content": f"Conversation:\n{transcript}\n\nReturn the attributes as JSON."},
        ],
        context={"conversation": turns},
        max_retries=max_retries,
        max_tokens=max_tokens,
    )
    return list(result.attributes)


def instructor_create(model: str = "embedded", **settings: Any) -> Any:
    """An instructor-patched create function: in-process models through the llama.cpp
    rewrite of JSON-schema requests, anything else through LiteLLM."""
    import instructor

    from judgecal.backends.instructor import openai_chat_create
    from judgecal.backends.settings import LMConfig

    config = LMConfig(model=model, **settings)
    if config.is_in_process:
        return instructor.patch(create=openai_chat_create(config), mode=instructor.Mode.JSON_SCHEMA)
    import litellm

    client = instructor.from_litellm(litellm.completion, mode=instructor.Mode.JSON_SCHEMA)

    def create(**kwargs: Any) -> Any:
        extra = {"api_base": config.api_base} if config.api_base else {}
        return client.chat.completions.create(model=config.model, temperature=config.temperature, **extra, **kwargs)

    return create

"""Stage 1: extracting user attributes from a conversation, and verifying them."""

from typing import Literal

import dspy
from pydantic import BaseModel, Field


class Turn(BaseModel):
    """One message of a conversation."""

    role: Literal["user", "assistant", "system"]
    content: str


class Attribute(BaseModel):
    """A user attribute with the evidence it rests on."""

    attribute: str = Field(max_length=300, description="A short statement about the user.")
    evidence: str = Field(
        max_length=300, description="A quote or close paraphrase of the user's words that supports it."
    )


class ExtractAttributes(dspy.Signature):
    """Extract attributes of the user that could help personalize future responses.

    An attribute is a durable fact about the user (background, goals, preferences,
    constraints, expertise), stated or clearly implied by the user's own messages.
    Give the evidence for each one from the conversation. Do not guess beyond what the
    conversation supports, and do not list facts about the assistant or the topic only.
    """

    conversation: list[Turn] = dspy.InputField(desc="The conversation, oldest turn first.")
    attributes: list[Attribute] = dspy.OutputField(desc="At most five attributes, each with evidence.")


class VerifyAttribute(dspy.Signature):
    """Decide whether an extracted user attribute is accurate and supported.

    Accept the attribute only when the user's own messages in the conversation support
    it, explicitly or by clear implication, and the evidence matches the conversation.
    Reject attributes that overreach, describe the assistant instead of the user, or
    rest on evidence the conversation does not contain.
    """

    conversation: list[Turn] = dspy.InputField(desc="The conversation, oldest turn first.")
    attribute: str = dspy.InputField(desc="The extracted attribute.")
    evidence: str = dspy.InputField(desc="The extractor's evidence for it.")
    accepted: bool = dspy.OutputField(desc="true if the attribute is accurate and supported, else false.")

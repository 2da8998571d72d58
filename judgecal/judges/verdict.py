"""What a judge said about one row: the verdict, its probability, whether it abstained, and
any error."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field

from judgecal.data.rows import LabelValue


class Verdict(BaseModel):
    """What a judge said about one row."""

    model_config = ConfigDict(frozen=True)

    label: LabelValue | None = Field(
        description="The verdict; None when the judge abstained or gave no valid answer (see error)."
    )
    confidence: float | None = Field(
        default=None, description="Probability the judge put on its verdict, from token probabilities."
    )
    probabilities: dict[str, float] | None = Field(
        default=None, description="Probability of each allowed answer (JSON spelling: 'true', 'A', ...)."
    )
    rationale: str | None = None
    error: str | None = None
    abstained: bool = Field(
        default=False,
        description="The judge chose not to answer (a selective judge outside its band): an answer, not an error.",
    )

    def probability_of(self, label: LabelValue) -> float | None:
        if self.probabilities is None:
            return None
        return self.probabilities.get(answer_key(label))


def answer_key(label: LabelValue) -> str:
    """How an answer is spelled in JSON output: ``true``, ``false``, ``A``, ``tie``."""
    return json.dumps(label) if isinstance(label, bool) else str(label)

"""Stage 3: which of two responses is better for this user?"""

from typing import Literal

import dspy


class JudgePairwise(dspy.Signature):
    """Compare two responses to the same prompt and say which one is better.

    Judge helpfulness, correctness and how well each response follows the prompt. When
    user attributes are given, prefer the response that serves this particular user
    better, but only where the attributes genuinely matter to the prompt: personalization
    for its own sake is not better. Ignore the order in which the responses appear and
    their length as such. Answer "tie" when neither is clearly better.
    """

    prompt: str = dspy.InputField(desc="The request both responses answer.")
    user_attributes: list[str] = dspy.InputField(
        desc="What is known about the user; empty when the comparison is not personalized."
    )
    response_a: str = dspy.InputField(desc="The first response.")
    response_b: str = dspy.InputField(desc="The second response.")
    verdict: Literal["A", "B", "tie"] = dspy.OutputField(
        desc='"A" if response A is better, "B" if response B is better, "tie" if neither is.'
    )

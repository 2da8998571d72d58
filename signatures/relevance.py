"""Stage 2: is a known user attribute relevant to a new prompt?"""

import dspy


class JudgeRelevance(dspy.Signature):
    """Decide whether a known attribute of the user is relevant to their new prompt.

    The attribute is relevant when it should change the response to this prompt in any
    way, explicitly or implicitly: what the response says, which examples it picks, its
    tone, level of detail or format. It is not relevant when a good response for this
    user would be the same as for anyone else. Most attributes are not relevant to a
    given prompt; answer true only when the attribute clearly matters.
    """

    prompt: str = dspy.InputField(desc="The user's new request.")
    attribute: str = dspy.InputField(desc="Something known about the user from earlier conversations.")
    relevant: bool = dspy.OutputField(desc="true if the attribute should change the response, else false.")

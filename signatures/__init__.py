"""DSPy signatures of the judges judgecal calibrates.

This folder installs as ``judgecal.signatures`` (see ``pyproject.toml``). A signature is
a judge when it has exactly one decision output field typed ``bool`` or ``Literal[...]``;
every other field is an input that rows supply by name. Add your own the same way and
point an experiment file's ``[judge]`` at it (``task = "my_pkg.my_module:MyJudge"``).
"""

from judgecal.signatures.extraction import Attribute, ExtractAttributes, Turn, VerifyAttribute
from judgecal.signatures.pairwise import JudgePairwise
from judgecal.signatures.relevance import JudgeRelevance

__all__ = [
    "Attribute",
    "ExtractAttributes",
    "JudgePairwise",
    "JudgeRelevance",
    "Turn",
    "VerifyAttribute",
]

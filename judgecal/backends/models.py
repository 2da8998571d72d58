"""Building DSPy LMs: in-process models behind the llama.cpp engine, any other through
LiteLLM. (DSPy's response cache is set where a run starts: ``Workspace.use_dspy_cache``.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from judgecal.backends.files import embedded_model_path, file_digest, file_identity
from judgecal.backends.llamacpp import AsyncLlamaCppEngine, LlamaCppEngine
from judgecal.backends.settings import EMBEDDED_ALIASES, LMConfig
from judgecal.workspace import LoadedModels


def build_lm(config: LMConfig, models: LoadedModels | None = None) -> Any:
    """A ``dspy.LM`` for the configured model; in-process models go through the engine,
    loaded once in ``models`` (the workspace's; a new one when not given)."""
    import dspy

    common: dict[str, Any] = {
        "temperature": config.temperature,
        "max_tokens": config.max_tokens,
        "cache": config.cache,
        "num_retries": config.num_retries,
    }
    if config.wants_logprobs:
        # The engine adds every allowed answer at the verdict step itself; a remote API
        # needs a few alternatives per token for the answers to be comparable.
        common["logprobs"] = True
        if not config.is_in_process:
            common["top_logprobs"] = 5
    if config.is_in_process:
        path = embedded_model_path() if config.model in EMBEDDED_ALIASES else Path(config.model)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such model file")
        models = models if models is not None else LoadedModels()
        engine = LlamaCppEngine(path, n_ctx=config.n_ctx, n_threads=config.n_threads, models=models)
        # The cache key is the request; the file's hash in the model name keeps a
        # changed model file from being served answers cached for the old one.
        digest = models.get(("sha256", *file_identity(path)), lambda: file_digest(path))
        name = f"llamacpp/{path.stem.lower()}-{digest[:12]}"
        return dspy.LM(name, engine=engine, async_engine=AsyncLlamaCppEngine(engine), seed=config.seed, **common)
    extra: dict[str, Any] = {}
    if config.api_base:
        extra["api_base"] = config.api_base
    return dspy.LM(config.model, **common, **extra)

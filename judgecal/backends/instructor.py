"""The in-process model for callers outside DSPy (instructor's validate-and-retry).

llama.cpp constrains output only with its own ``{"type": "json_object", "schema": ...}``
shape, so the OpenAI ``json_schema`` shape is rewritten into it here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from judgecal.backends.files import embedded_model_path
from judgecal.backends.llamacpp import LlamaCppEngine, bound_schema
from judgecal.backends.settings import EMBEDDED_ALIASES, LMConfig


def openai_chat_create(config: LMConfig) -> Any:
    """An OpenAI-style ``chat.completions.create`` for the in-process model, for callers
    outside DSPy (instructor's validate-and-retry). llama.cpp constrains output only with
    its own ``{"type": "json_object", "schema": ...}`` shape, so the OpenAI ``json_schema``
    shape is rewritten into it here; the answer comes back as an ``openai`` ChatCompletion."""
    from openai.types.chat import ChatCompletion

    if not config.is_in_process:
        raise ValueError(f"{config.model!r} is not an in-process model; use instructor.from_litellm for it")
    path = embedded_model_path() if config.model in EMBEDDED_ALIASES else Path(config.model)
    engine = LlamaCppEngine(path, n_ctx=config.n_ctx, n_threads=config.n_threads)

    def create(
        *,
        messages: list[dict[str, Any]],
        response_format: dict[str, Any] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        **_: Any,
    ) -> ChatCompletion:
        fmt = None
        if response_format and response_format.get("type") == "json_schema":
            schema = response_format.get("json_schema", {}).get("schema") or response_format.get("schema")
            fmt = {"type": "json_object", "schema": bound_schema(schema)}
        elif response_format:
            fmt = {"type": "json_object"}
        loaded = engine.model
        with loaded.lock:
            raw = loaded.llama.create_chat_completion(
                messages=messages,
                response_format=fmt,
                max_tokens=max_tokens or config.max_tokens,
                temperature=config.temperature if temperature is None else temperature,
                seed=config.seed,
            )
        return ChatCompletion.model_validate(raw)

    return create

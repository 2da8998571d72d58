"""How to reach the judge model: the embedded SmolLM2, a ``.gguf`` file, or any LiteLLM
model string. Secrets are never part of the settings: API keys come from the provider's
usual environment variables, and a password in ``api_base`` is hidden when saved.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from judgecal.backends.pricing import PricePerMillion

EMBEDDED_MODEL = "embedded"


EMBEDDED_ALIASES = {"embedded", "smollm2", "local", "smollm2-135m-instruct"}


class LMConfig(BaseModel):
    """How to reach the judge model. Secrets are never stored here: API keys come
    from the provider's usual environment variables (``OPENAI_API_KEY``, ...), and a
    password or key inside ``api_base`` is hidden whenever the settings are serialised
    (run parameters, bundles); only the LM built from them uses it."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        default=EMBEDDED_MODEL,
        description="'embedded' (SmolLM2-135M in-process), a path to a .gguf file, or a "
        "LiteLLM model string such as 'openai/gpt-4o-mini' or 'hosted_vllm/<name>'.",
    )
    temperature: float = Field(default=0.0, ge=0, le=2, description="Sampling temperature; 0 decodes greedily.")
    max_tokens: int = Field(
        default=256,
        gt=0,
        description="Most tokens a judge answer may take. DSPy refuses OpenAI's reasoning models (o-series, "
        "gpt-5) below 16000.",
    )
    seed: int = Field(default=0, description="Sampling seed, for backends that take one.")
    api_base: str | None = Field(default=None, description="Server URL for OpenAI-compatible servers.")
    logprobs: bool | None = Field(
        default=None,
        description="Ask for token probabilities to get judge confidences; None asks only "
        "backends known to give them (embedded, openai/, hosted_vllm/).",
    )
    n_ctx: int = Field(default=4096, gt=0, description="Context length of an in-process model.")
    n_threads: int | None = Field(default=None, description="CPU threads of an in-process model.")
    cache: bool = Field(
        default=True,
        description="Keep every answer in DSPy's disk cache (.cache/dspy/); a repeated run is served from it.",
    )
    num_retries: int = Field(
        default=3,
        ge=0,
        description="Retries of a call that failed for a transient reason (rate limit, server error, timeout, "
        "lost connection), with exponential backoff: DSPy's own, before the judge's.",
    )

    price_per_million: PricePerMillion | None = Field(
        default=None,
        description="The model's price in US dollars per million tokens, e.g. {input = 0.15, output = 0.6}; "
        "default: LiteLLM's cost table (0 for in-process models).",
    )

    @field_serializer("api_base")
    def _hide_credentials(self, value: str | None) -> str | None:
        from judgecal.redact import redact_url

        return redact_url(value) if value else value

    @property
    def is_in_process(self) -> bool:
        return self.model in EMBEDDED_ALIASES or self.model.endswith(".gguf")

    @property
    def wants_logprobs(self) -> bool:
        if self.logprobs is not None:
            return self.logprobs
        return self.is_in_process or self.model.startswith(("openai/", "hosted_vllm/"))

"""What an LM call costs: the price per token of a model, from a user's price in ``[lm]``
or LiteLLM's cost table (read from the installed package when
``LITELLM_LOCAL_MODEL_COST_MAP`` is set, as the ``judgecal`` command sets it); a model run
in this process costs nothing."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

# The prefix of the DSPy model name of an in-process llama.cpp model (backends/models.py).
IN_PROCESS_PREFIX = "llamacpp/"


class PricePerMillion(BaseModel):
    """A model's price in US dollars per million tokens, prompt and completion."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0, description="US dollars per million prompt tokens.")
    output: float = Field(ge=0, description="US dollars per million completion tokens.")


@dataclass(frozen=True)
class Prices:
    """Price per token by DSPy model name: the user's own for the models in ``overrides``,
    0 for in-process models, else LiteLLM's cost table; ``None`` for a model the table does
    not know (its calls are counted, their cost is unknown)."""

    overrides: dict[str, PricePerMillion] = field(default_factory=dict)

    def per_token(self, model: str) -> tuple[float, float] | None:
        if model in self.overrides:
            price = self.overrides[model]
            return price.input / 1e6, price.output / 1e6
        if model.startswith(IN_PROCESS_PREFIX) or model.endswith(".gguf"):
            return 0.0, 0.0
        return litellm_price(model)

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        price = self.per_token(model)
        if price is None:
            return None
        return prompt_tokens * price[0] + completion_tokens * price[1]


def litellm_price(model: str) -> tuple[float, float] | None:
    """LiteLLM's price per prompt and completion token of ``model``, or ``None`` when its
    table has no entry for it (a self-hosted model, a new name)."""
    import litellm

    try:
        prompt, completion = litellm.cost_per_token(model=model, prompt_tokens=1_000_000, completion_tokens=1_000_000)
    except Exception:  # LiteLLM raises its own errors (NotFoundError, ModelNotMappedError, ...) for unknown names
        return None
    return prompt / 1e6, completion / 1e6

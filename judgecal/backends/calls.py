"""Counting the LM calls a fit or a trial makes (cached answers included), across the
LM copies DSPy's optimizers create, which keep their own histories, and those of them that
failed, with the tokens of the calls the model answered and what they cost; and the calls
a judge retried after a transient failure (rate limits above all).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from dspy.utils.callback import BaseCallback

from judgecal.backends.pricing import Prices


@dataclass(frozen=True)
class LMUsage:
    """What a step asked of its models: every call (``cached`` of them answered by DSPy's
    cache, which costs nothing), the tokens of the calls a model answered, and their cost
    in US dollars (``None`` when a model has no known price)."""

    calls: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0

    def __add__(self, other: LMUsage) -> LMUsage:
        cost = None if self.cost_usd is None or other.cost_usd is None else self.cost_usd + other.cost_usd
        return LMUsage(
            self.calls + other.calls,
            self.cached + other.cached,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            cost,
        )

    def metrics(self, prefix: str = "lm") -> dict[str, float]:
        """As MLflow metrics: ``lm.calls``, ``lm.cached_calls``, ``lm.prompt_tokens``,
        ``lm.completion_tokens`` and ``lm.cost_usd`` (left out when unknown)."""
        values = {
            f"{prefix}.calls": float(self.calls),
            f"{prefix}.cached_calls": float(self.cached),
            f"{prefix}.prompt_tokens": float(self.prompt_tokens),
            f"{prefix}.completion_tokens": float(self.completion_tokens),
        }
        if self.cost_usd is not None:
            values[f"{prefix}.cost_usd"] = float(self.cost_usd)
        return values

    def describe(self) -> str:
        cost = "cost unknown (no price for the model)" if self.cost_usd is None else f"${self.cost_usd:.4f}"
        return (
            f"{self.calls:,} LM calls ({self.cached:,} answered from the cache), {self.prompt_tokens:,} prompt + "
            f"{self.completion_tokens:,} completion tokens, {cost}"
        )


class LMCallCounter(BaseCallback):
    """Counts every LM call a program makes (cached answers included), across the LM
    copies optimizers create, which keep their own histories; ``failed`` counts the calls
    that raised (a server error, a timeout, ... after the LM's own retries) and
    ``last_error`` keeps the last of those errors. DSPy's optimizers catch such errors and
    score the call as a wrong answer, so this is where they can still be seen.

    A prompt longer than the model's context is counted apart, in ``too_long``: it fails
    the same way every time, so no answer was lost; the candidate program (or an
    optimizer's instruction proposal) that made it cannot be used on that row.

    Inside :meth:`counting` it is also DSPy's usage tracker, which DSPy tells the tokens of
    every call a model answered and never those of a call its cache answered: ``answered``
    counts those calls, ``tokens`` their prompt and completion tokens by model; the
    tracker that was in place before is told them too."""

    def __init__(self) -> None:
        self.calls = 0
        self.failed = 0
        self.too_long = 0
        self.answered = 0
        self.tokens: dict[str, list[int]] = {}
        self.last_error: BaseException | None = None
        self._parent: Any = None
        self._lock = threading.Lock()

    @contextmanager
    def counting(self) -> Iterator[LMCallCounter]:
        """Count the calls made in this block, in this thread and in DSPy's worker threads."""
        import dspy

        parent = dspy.settings.get("usage_tracker")
        self._parent = parent if parent is not self else None
        with dspy.context(callbacks=[*dspy.settings.get("callbacks", []), self], usage_tracker=self):
            yield self

    def __deepcopy__(self, memo: dict[int, Any]) -> LMCallCounter:
        # DSPy's parallel executor deep-copies the usage tracker into each worker thread;
        # the counter is shared on purpose (its lock makes that safe).
        return self

    def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
        """DSPy's usage tracker's hook: a call the model answered, with its tokens."""
        prompt = int(usage_entry.get("prompt_tokens") or 0)
        completion = int(usage_entry.get("completion_tokens") or 0)
        with self._lock:
            self.answered += 1
            counts = self.tokens.setdefault(lm, [0, 0])
            counts[0] += prompt
            counts[1] += completion
        if self._parent is not None:
            self._parent.add_usage(lm, usage_entry)

    def usage(self, prices: Prices | None = None) -> LMUsage:
        """What was counted, priced with ``prices`` (LiteLLM's cost table when not given)."""
        prices = prices if prices is not None else Prices()
        with self._lock:
            tokens = {model: tuple(counts) for model, counts in self.tokens.items()}
            cached = max(0, self.calls - self.answered - self.failed - self.too_long)
            calls = self.calls
        cost: float | None = 0.0
        for model, (prompt, completion) in tokens.items():
            spent = prices.cost(model, prompt, completion) if prompt or completion else 0.0
            cost = None if cost is None or spent is None else cost + spent
        return LMUsage(
            calls=calls,
            cached=cached,
            prompt_tokens=sum(t[0] for t in tokens.values()),
            completion_tokens=sum(t[1] for t in tokens.values()),
            cost_usd=cost,
        )

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        with self._lock:
            self.calls += 1

    def on_lm_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        if exception is None:
            return
        from dspy.utils.exceptions import ContextWindowExceededError

        with self._lock:
            if isinstance(exception, ContextWindowExceededError):
                self.too_long += 1
                return
            self.failed += 1
            self.last_error = exception


class RetryCounter(BaseCallback):
    """Counts the calls a judge retried after a transient failure, by reason (``HTTP 429``
    for a rate limit, ``server error``, ...). Put it among DSPy's callbacks
    (``dspy.context(callbacks=[...])``); DSPy's parallel executor carries it into every
    thread, and each judge reports its retries to the callbacks that have ``on_retry``."""

    def __init__(self) -> None:
        from collections import Counter

        self.retries: Counter[str] = Counter()
        self._lock = threading.Lock()

    def on_retry(self, error: BaseException) -> None:
        with self._lock:
            self.retries[retry_reason(error)] += 1

    @property
    def rate_limited(self) -> int:
        """Calls retried after HTTP 429."""
        return self.retries.get(RATE_LIMITED, 0)


RATE_LIMITED = "HTTP 429"


def retry_reason(error: BaseException) -> str:
    """Why a call was retried, in a word: ``HTTP 429``, ``HTTP 503``, ``timeout``, ..."""
    from dspy.utils import exceptions

    if isinstance(error, exceptions.LMRateLimitError):
        return RATE_LIMITED
    status = getattr(error, "status", None)
    if isinstance(status, int):
        return f"HTTP {status}"
    return type(error).__name__

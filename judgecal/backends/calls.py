"""Counting the LM calls a fit or a trial makes (cached answers included), across the
LM copies DSPy's optimizers create, which keep their own histories, and those of them that
failed; and the calls a judge retried after a transient failure (rate limits above all).
"""

from __future__ import annotations

import threading
from typing import Any

from dspy.utils.callback import BaseCallback


class LMCallCounter(BaseCallback):
    """Counts every LM call a program makes (cached answers included), across the LM
    copies optimizers create, which keep their own histories; ``failed`` counts the calls
    that raised (a server error, a timeout, ... after the LM's own retries) and
    ``last_error`` keeps the last of those errors. DSPy's optimizers catch such errors and
    score the call as a wrong answer, so this is where they can still be seen.

    A prompt longer than the model's context is counted apart, in ``too_long``: it fails
    the same way every time, so no answer was lost; the candidate program (or an
    optimizer's instruction proposal) that made it cannot be used on that row."""

    def __init__(self) -> None:
        self.calls = 0
        self.failed = 0
        self.too_long = 0
        self.last_error: BaseException | None = None
        self._lock = threading.Lock()

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

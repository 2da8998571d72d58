"""Counting the LM calls a fit or a trial makes (cached answers included), across the
LM copies DSPy's optimizers create, which keep their own histories.
"""

from __future__ import annotations

import threading
from typing import Any

from dspy.utils.callback import BaseCallback


class LMCallCounter(BaseCallback):
    """Counts every LM call a program makes (cached answers included), across the LM
    copies optimizers create, which keep their own histories."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        with self._lock:
            self.calls += 1

"""The test-row guard: every fit and selection step passes its rows through it.

A calibration that fitted or selected on a test row would report an optimistic number;
the guard holds the test (and gate) rows and raises :class:`LeakError` when one reaches
a fit or selection step, or when a compiled program's demo repeats one (matched by its
inputs, since demos an optimizer bootstraps carry no row id). A leak stops everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from judgecal.data.rows import LabeledRow
from judgecal.judges.fitted import inputs_key


class LeakError(AssertionError):
    """A test row reached a fit or selection step."""


@dataclass
class RowGuard:
    """Holds the test rows; every fit and selection step passes its rows through ``check``,
    and a compiled program's demos through ``check_demos`` (matched by their inputs, since
    demos an optimizer bootstraps carry no row id)."""

    forbidden: frozenset[str]
    seen: dict[str, set[str]] = field(default_factory=dict)
    forbidden_inputs: frozenset[str] = frozenset()

    @classmethod
    def for_rows(cls, test: Sequence[LabeledRow], others: Sequence[LabeledRow] = ()) -> RowGuard:
        """A guard against ``test``; inputs that also occur among ``others`` (train, dev)
        cannot tell where a demo came from, so they are not treated as leaks."""
        allowed = {inputs_key(row.inputs) for row in others}
        forbidden = frozenset(key for key in (inputs_key(row.inputs) for row in test) if key not in allowed)
        return cls(frozenset(row.id for row in test), forbidden_inputs=forbidden)

    def check(self, rows: Sequence[LabeledRow], step: str) -> Sequence[LabeledRow]:
        ids = {row.id for row in rows}
        self.seen.setdefault(step, set()).update(ids)
        leaked = ids & self.forbidden
        if leaked:
            raise LeakError(f"{len(leaked)} test rows reached '{step}', e.g. {sorted(leaked)[:3]}")
        return rows

    def check_demos(self, judge: Any, input_names: Sequence[str], step: str) -> None:
        program = getattr(judge, "program", None)
        if program is None or not self.forbidden_inputs:
            return
        for predictor in program.predictors():
            for demo in predictor.demos:
                inputs = {name: demo.get(name) for name in input_names} if hasattr(demo, "get") else {}
                if inputs_key(inputs) in self.forbidden_inputs:
                    raise LeakError(f"a test row reached '{step}' as a demo: {str(inputs)[:120]}")

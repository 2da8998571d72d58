"""The test-row guard: every fit and selection step passes its rows through it.

A calibration that fitted or selected on a test row would report an optimistic number;
the guard holds the test (and gate) rows and raises :class:`LeakError` when one reaches
a fit or selection step, or when a compiled program's demo repeats one (matched by its
inputs, since demos an optimizer bootstraps carry no row id). It holds a selective
judge's calibration rows back from fitting and selection too: its band is chosen on rows
the judge never saw, or its guarantee does not hold. A leak stops everything.
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
    calibration: frozenset[str] = frozenset()

    @classmethod
    def for_rows(
        cls, test: Sequence[LabeledRow], others: Sequence[LabeledRow] = (), calibration: Sequence[LabeledRow] = ()
    ) -> RowGuard:
        """A guard against ``test`` (and ``calibration``, the rows a selective judge's band is
        chosen on); inputs that also occur among ``others`` (train, dev) cannot tell where a
        demo came from, so they are not treated as leaks."""
        allowed = {inputs_key(row.inputs) for row in others}
        held = [*test, *calibration]
        forbidden = frozenset(key for key in (inputs_key(row.inputs) for row in held) if key not in allowed)
        return cls(
            frozenset(row.id for row in test),
            forbidden_inputs=forbidden,
            calibration=frozenset(row.id for row in calibration),
        )

    def check(self, rows: Sequence[LabeledRow], step: str) -> Sequence[LabeledRow]:
        ids = {row.id for row in rows}
        self.seen.setdefault(step, set()).update(ids)
        for held, part in ((self.forbidden, "test"), (self.calibration, "calibration")):
            leaked = ids & held
            if leaked:
                raise LeakError(f"{len(leaked)} {part} rows reached '{step}', e.g. {sorted(leaked)[:3]}")
        return rows

    def check_demos(self, judge: Any, input_names: Sequence[str], step: str) -> None:
        program = getattr(judge, "program", None)
        if program is None or not self.forbidden_inputs:
            return
        for predictor in program.predictors():
            for demo in predictor.demos:
                inputs = {name: demo.get(name) for name in input_names} if hasattr(demo, "get") else {}
                if inputs_key(inputs) in self.forbidden_inputs:
                    raise LeakError(f"a test or calibration row reached '{step}' as a demo: {str(inputs)[:120]}")

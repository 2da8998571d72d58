"""experiments/bench_plan.py: the judge the comparison is planned for is calibrated as a user
calibrates it, never on the rows it is scored on: each pilot prompt's verdicts come from a
stack fitted on the pilot's other prompts, and each draw's from a stack fitted on prompts
set aside from the draw."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np
import pytest

from judgecal.data.rows import LabeledRow
from judgecal.stats.metrics import kappa_from_confusion
from tests.conftest import REPO


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_plan", REPO / "experiments" / "bench_plan.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def rows(module: ModuleType, n_groups: int = 12, per_group: int = 12, seed: int = 0) -> list[LabeledRow]:
    """Rows where the stack over both verdicts (say yes where both do) beats the raw judge."""
    rng = np.random.default_rng(seed)
    out = []
    for g in range(n_groups):
        rate = rng.uniform(0.1, 0.4)  # prompts differ
        for i in range(per_group):
            relevant = bool(rng.uniform() < rate)
            out.append(
                LabeledRow(
                    id=f"g{g}-{i}",
                    group=f"g{g}",
                    inputs={"prompt": "Help me.", "attribute": f"The user likes item {i}."},
                    label=relevant,
                    reference_judges={
                        module.RAW: bool(relevant or rng.uniform() < 0.4),
                        module.OTHER: bool(relevant or rng.uniform() < 0.4),
                    },
                )
            )
    return out


@dataclass
class Calls:
    fitted_on: list[set[int]] = field(default_factory=list)  # prompts of each fit
    judged: list[set[int]] = field(default_factory=list)  # prompts each fitted judge scored


def watched(module: ModuleType, data: object, calls: Calls) -> object:
    """The same rows, recording which prompts each stack is fitted on and scores."""

    class Watched(module.FileRows):
        def calibrate(self, prompts: np.ndarray):  # type: ignore[no-untyped-def]
            calls.fitted_on.append({int(p) for p in prompts})
            return super().calibrate(prompts)

        def judged(self, judge, rows: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
            calls.judged.append({int(g) for g in self.groups[rows]})
            return super().judged(judge, rows)

    return Watched(**{name: getattr(data, name) for name in data.__dataclass_fields__})  # type: ignore[attr-defined]


def test_each_pilot_prompt_is_judged_by_a_stack_fitted_on_the_other_pilot_prompts() -> None:
    module = bench()
    calls = Calls()
    data = watched(module, module.FileRows.of(rows(module)), calls)
    pilot = np.array([0, 3, 5, 7, 8, 11])
    tables = module.cross_fitted_pilot(data, pilot)
    assert len(calls.fitted_on) == len(pilot)
    for fitted, judged in zip(calls.fitted_on, calls.judged, strict=True):
        assert len(judged) == 1 and not judged & fitted
        assert fitted | judged == set(pilot.tolist())
    assert tables.shape == (len(pilot), 2, 3, 3)
    assert tables[:, 0].sum() == tables[:, 1].sum() == len(pilot) * 12


def test_a_draw_is_scored_by_a_stack_fitted_on_prompts_set_aside_from_it() -> None:
    module = bench()
    calls = Calls()
    data = watched(module, module.FileRows.of(rows(module)), calls)
    quantity = module.kappa_gain(0, 1, name=module.CALIBRATED)
    for seed in range(5):
        width, value, replace = module.calibrated_draw(data, quantity, 6, 4, np.random.default_rng(seed), seed=seed)
        fitted, judged = calls.fitted_on[-1], calls.judged[-1]
        assert len(fitted) == 4 and not fitted & judged and not replace
        assert width > 0
        drawn = sorted(judged)
        on_draw = data.rows_of(np.array(drawn))
        stack = data.calibrate(np.array(sorted(fitted)))
        raw = data.tables(data.verdicts[:1, on_draw], on_draw).sum(axis=0)[0]
        calibrated = data.tables(data.judged(stack, on_draw)[None], on_draw).sum(axis=0)[0]
        assert value == pytest.approx(float(kappa_from_confusion(calibrated) - kappa_from_confusion(raw)))


def test_a_plan_larger_than_the_prompts_left_is_drawn_with_replacement() -> None:
    module = bench()
    calls = Calls()
    data = watched(module, module.FileRows.of(rows(module)), calls)
    quantity = module.kappa_gain(0, 1, name=module.CALIBRATED)
    _, _, replace = module.calibrated_draw(data, quantity, 20, 4, np.random.default_rng(0), seed=0)
    assert replace and not calls.fitted_on[-1] & calls.judged[-1]

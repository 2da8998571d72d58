"""experiments/bench_monitor.py: its streams are counted the way the monitor counts them,
and on a small run the stable streams keep the error level while a drop is caught, a
selective judge's too."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from tests.conftest import REPO


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_monitor", REPO / "experiments" / "bench_monitor.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_alarm_at_an_observation_is_dated_to_its_batch() -> None:
    module = bench()
    assert [module.batch_of(i, 10) for i in (1, 10, 11, 20, 21)] == [1, 1, 2, 2, 3]


def test_a_small_run_keeps_alpha_and_catches_the_drop() -> None:
    results = bench().main(["--streams", "60", "--batches", "25", "--groups", "20", "--levels", "0.8"])[0.8][20]
    assert results["stable"] <= 0.05
    assert results["caught"] >= 0.9 and results["early"] <= 0.05
    assert 0 <= results["median"] <= 10


def test_a_small_selective_run_keeps_alpha_and_catches_the_drop_of_one_verdict_the_pooled_sequence_misses() -> None:
    results = bench().main(["--selective", "--streams", "30", "--batches", "25", "--groups", "20", "--rows", "10"])
    row = results[0.7][20]
    assert row["stable"] <= 0.05 and row["early"] <= 0.05
    assert row["caught"] >= 0.9 and row["named"] == 1.0
    assert row["pooled"] == 0.0

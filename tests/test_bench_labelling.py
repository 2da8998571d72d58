"""experiments/bench_labelling.py: the first labels it takes, the round it runs as
``label-next`` and ``estimate --design`` would, the κ it pools over folds, and the folds
it reads back from its checkpoint."""

from __future__ import annotations

import importlib.util
import io
import sys
from types import ModuleType

import numpy as np
import pytest
from rich.console import Console

from judgecal.judges.verdict import Verdict
from judgecal.stats.active import inclusion_probabilities
from judgecal.stats.estimate import active_rate
from judgecal.workspace import Workspace
from tests.conftest import REPO
from tests.helpers import RELEVANCE, recorded_rows


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(REPO / "experiments"))  # it imports bench_search's helpers
    spec = importlib.util.spec_from_file_location("bench_labelling", REPO / "experiments" / "bench_labelling.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_first_labels_take_each_prompt_in_proportion_and_the_same_rows_for_a_seed(bench) -> None:
    rows = [row for g, size in enumerate((40, 40, 20, 100)) for row in recorded_rows(1, size, seed=g).rows]
    rows = [row.model_copy(update={"group": f"g{i // 10 % 4}"}) for i, row in enumerate(rows)]  # unequal groups
    sizes = {g: sum(row.group == g for row in rows) for g in {row.group for row in rows}}
    chosen = bench.initial_rows(rows, 30, seed=1)
    assert len(chosen) == len(set(chosen)) == 30 and chosen == sorted(chosen)
    taken = {g: sum(rows[i].group == g for i in chosen) for g in sizes}
    for group, size in sizes.items():
        assert abs(taken[group] - 30 * size / len(rows)) < 1
    assert bench.initial_rows(rows, 30, seed=1) == chosen
    assert bench.initial_rows(rows, 30, seed=2) != chosen


def test_the_interval_over_repetitions_is_students_t(bench) -> None:
    from scipy.stats import t

    values = [0.41, 0.45, 0.43, 0.50, 0.39]
    mean, low, high = bench.t_interval(values)
    expected = t.interval(0.95, 4, loc=np.mean(values), scale=np.std(values, ddof=1) / np.sqrt(5))
    assert mean == pytest.approx(0.436)
    assert (low, high) == pytest.approx(expected)


def test_a_round_draws_the_rows_label_next_would_and_gives_the_estimate_from_their_design(bench, tmp_path) -> None:
    pool = list(recorded_rows(10, 30).rows)
    p = np.random.default_rng(0).uniform(0.02, 0.98, size=len(pool))
    verdicts = [Verdict(label=bool(q >= 0.5), probabilities={"true": q, "false": 1 - q}) for q in p]
    drawn, estimate = bench.draw_and_estimate(RELEVANCE, pool, verdicts, "uncertainty", 40, 7, 0.2, tmp_path)

    pi = inclusion_probabilities(p, 40, "uncertainty", mix=0.2, groups=[row.group for row in pool])
    uniform = np.random.default_rng(7).uniform(size=len(pool))  # as label-next's draw with seed 7
    expected_drawn = {row.id for row, u, q in zip(pool, uniform, pi, strict=True) if u < q}
    assert drawn == expected_drawn and estimate["labels"] == len(drawn)
    mask = np.array([row.id in drawn for row in pool])
    y = np.array([float(row.label is True) for row in pool])
    interval, weight = active_rate(p, p[mask], y[mask], pi[mask])
    assert estimate["estimate"] == pytest.approx(interval.estimate)
    assert estimate["width"] == pytest.approx(interval.width)
    assert estimate["weight"] == pytest.approx(weight)
    assert estimate["truth"] == pytest.approx(y.mean())
    assert estimate["covered"] == (interval.low <= y.mean() <= interval.high)


def test_kappa_is_pooled_over_folds_by_row_id_and_compared_with_uniform_repetition_by_repetition(bench) -> None:
    rows = list(recorded_rows(4, 10).rows)
    human = {row.id: row.label for row in rows}
    folds = [[row.id for row in rows[20:]][::-1], [row.id for row in rows[:20]]]  # not in row order
    right = lambda ids: [human[i] for i in ids]  # noqa: E731
    silent = lambda ids: [False for _ in ids]  # noqa: E731 (κ 0)
    estimate = {"labels": 10, "width": 0.2, "labels_alone_width": 0.3, "weight": 0.5, "covered": True}

    def fold(ids: list[str]) -> dict:
        run = lambda said: {"labels": [5, 15], "verdicts": [said, said], "estimates": [estimate]}  # noqa: E731
        return {
            "ids": ids,
            "all_labels": {"verdicts": right(ids)},
            "seconds": 1.0,
            "repetitions": [
                {"uncertainty": run(right(ids)), "uniform": run(right(ids))},
                {"uncertainty": run(right(ids)), "uniform": run(silent(ids))},
            ],
        }

    args = bench.parse_args(["--strategies", "uncertainty,uniform", "--repetitions", "2", "--recorded", "strict"])
    summary = bench.summarise(RELEVANCE, rows, [fold(ids) for ids in folds], args)
    assert summary["curves"]["uncertainty"][1]["per_repetition"] == [1.0, 1.0]
    assert summary["curves"]["uniform"][1]["per_repetition"] == [1.0, 0.0]
    assert summary["curves"]["uncertainty"][1]["versus_uniform"][0] == pytest.approx(0.5)
    assert summary["curves"]["uniform"][0]["labels"] == 5
    assert summary["estimates"]["uncertainty"]["ratio_to_uniform"][0] == 1.0
    assert summary["estimates"]["uniform"]["covered"] == 4
    assert summary["references"]["stack on every label of the training part"] == 1.0


def test_a_run_reads_its_finished_folds_back_and_refuses_a_checkpoint_of_other_settings(bench, tmp_path) -> None:
    dataset = recorded_rows(8, 15)
    flags = ["--outer-folds", "2", "--repetitions", "2", "--start", "20", "--rounds", "1", "--budget", "10"]
    flags += ["--recorded", "strict", "--verifiers", "", "--checkpoint", str(tmp_path / "folds")]
    workspace = Workspace(tmp_path / "workspace")
    console = Console(file=io.StringIO(), width=200)

    first = bench.run_labelling(dataset, bench.parse_args(flags), console, workspace)
    again = bench.run_labelling(dataset, bench.parse_args(flags), console, workspace)
    assert again["curves"] == first["curves"] and again["estimates"] == first["estimates"]
    assert console.file.getvalue().count("read from") == 2
    assert first["curves"]["uniform"][0]["labels"] == 20
    assert all(round_["labels"] > 20 for round_ in [first["curves"][s][1] for s in ("uncertainty", "uniform")])
    with pytest.raises(SystemExit, match="other settings"):
        bench.run_labelling(dataset, bench.parse_args([*flags, "--budget", "12"]), console, workspace)

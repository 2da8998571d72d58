"""experiments/bench_selective.py: the band is chosen on prompts of the outer training part
held back as a calibration holds them back, and a fold's answers are pooled and judged
against the targets as the docs report them."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from types import ModuleType

import pytest

from judgecal.judges.verdict import Verdict
from judgecal.stats.selective import Answer, Band, BandChoice, CalibrationRows, Candidates, Guarantee
from tests.conftest import REPO
from tests.helpers import RELEVANCE, recorded_rows


def bench() -> ModuleType:
    sys.path.insert(0, str(REPO / "experiments"))  # it imports bench_search's helpers as the script does
    try:
        spec = importlib.util.spec_from_file_location("bench_selective", REPO / "experiments" / "bench_selective.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "experiments"))


def choice(hi: float | None, lo: float | None, found: bool = True) -> BandChoice:
    guarantee = Guarantee(
        precision={"true": 0.7, "false": 0.95},
        delta=0.1,
        groups="design_effect",
        allow_never=hi is None,
        method="test",
        statement="test",
    )
    band = Band(
        answers=[
            Answer(verdict="true", when=">=", threshold=hi, of="P(true)"),
            Answer(verdict="false", when="<", threshold=lo, of="P(true)"),
        ]
    )
    return BandChoice(
        found=found,
        band=band if found else None,
        guarantee=guarantee,
        calibration_rows=CalibrationRows(count=1, groups=1, fingerprint="sha256:0"),
        candidates=Candidates(thresholds=[], valid={}),
    )


def test_the_calibration_share_is_of_the_training_parts_prompts_and_touches_neither_test_nor_fitting() -> None:
    module = bench()
    dataset = recorded_rows(n_groups=24, per_group=5)
    test_rows = list(dataset.rows[:20])  # 4 prompts: the outer fold
    part = list(dataset.rows[20:])  # 20 prompts
    for share, held in ((0.2, 4), (0.35, 7)):
        split = module.calibration_split(part, test_rows, dataset, share, seed=3)
        calibration = {row.group for row in split.calibration.rows}
        fitting = {row.group for row in [*split.train.rows, *split.dev.rows]}
        assert len(calibration) == held
        assert not calibration & fitting
        assert calibration | fitting == {row.group for row in part}
        assert list(split.test.rows) == test_rows


def test_a_fold_counts_abstentions_against_coverage_and_a_verdict_never_given_as_held() -> None:
    module = bench()
    rows = list(recorded_rows(n_groups=2, per_group=4).rows)
    said = [Verdict(label=False, confidence=0.9, probabilities={"true": 0.1, "false": 0.9}) for _ in rows]
    said[0] = Verdict(label=None, abstained=True, probabilities={"true": 0.5, "false": 0.5})
    outcome = module.fold_outcome(choice(None, 0.3), rows, said, RELEVANCE)
    negatives = [not row.label for row in rows[1:]]
    assert outcome["coverage"] == 7 / 8
    assert outcome["precision"] == {"true": None, "false": sum(negatives) / 7}
    assert outcome["held"]["true"]  # never said: holds vacuously
    assert outcome["held"]["false"] == (sum(negatives) / 7 >= 0.95)
    assert outcome["rows"][rows[0].id] == [None, 0.5]


def test_pooled_rows_are_each_from_their_fold_and_a_missed_target_fails_the_aim() -> None:
    module = bench()
    rows = list(recorded_rows(n_groups=6, per_group=10).rows)
    args = argparse.Namespace(resamples=200, seed=0, coverage_aim=0.65)

    def fold(part, said_true: bool) -> dict:
        verdicts = [Verdict(label=said_true, confidence=1.0, probabilities={"true": 1.0, "false": 0.0}) for _ in part]
        return module.fold_outcome(choice(0.5, 0.2), part, verdicts, RELEVANCE)

    folds = [fold(rows[:30], True), fold(rows[30:], False)]
    pooled = module.pool(folds, rows, args)
    assert pooled["answered"] == {"true": 30, "false": 30}
    assert pooled["coverage"]["value"] == 1.0
    true_precision = sum(row.label for row in rows[:30]) / 30
    assert abs(pooled["precision"]["true"]["value"] - true_precision) < 1e-12
    assert true_precision < 0.7 and pooled["status"]["true"] == "missed"
    assert not pooled["aim_met"]
    assert pooled["held_in_folds"]["true"] == 1  # the fold that never said 'true'
    assert pooled["band_folds"]["folds"] == 2 and pooled["band_folds"]["coverage"] == 1.0
    assert pooled["band_folds"]["precision"]["true"] == true_precision


def test_a_saved_fold_is_read_back_by_a_run_with_the_same_settings_and_refused_by_another(tmp_path) -> None:
    module = bench()
    dataset = recorded_rows(n_groups=2, per_group=3)
    args = argparse.Namespace(
        outer_folds=7,
        seed=0,
        recorded="gpt-5.4",
        settings="default",
        precision_true=0.7,
        precision_false=0.95,
        delta=0.1,
        band_rows="split",
        folds=5,
    )
    settings = module.checkpoint_settings("recorded", dataset, args)
    record = module.fold_record({"default": {"found": False}}, 12.0)
    module.save_fold(tmp_path, settings, 0, record)
    assert module.load_fold(tmp_path, settings, 0)["outcomes"] == record["outcomes"]
    for change in ({"delta": 0.05}, {"band_rows": "cross-fit"}):
        other = module.checkpoint_settings("recorded", dataset, argparse.Namespace(**{**vars(args), **change}))
        with pytest.raises(SystemExit, match="other settings"):
            module.load_fold(tmp_path, other, 0)

"""The registry gate: champion moves only on a significant paired improvement."""

from __future__ import annotations

from pathlib import Path

import mlflow

from judgecal.calibration import CalibrationConfig
from judgecal.data import SplitSpec
from judgecal.experiment import ExperimentConfig, JudgeSection, ReportConfig, run_calibration
from judgecal.export import load_judge
from tests.conftest import write_jsonl
from tests.test_strategies import recorded_rows


def calibrate(data: Path, strategy: str, recorded: str, split_seed: int = 1):
    config = ExperimentConfig(
        judge=JudgeSection(name="gated", task="relevance", data=data, recorded=recorded, register_as="relevance-judge"),
        split=SplitSpec(dev=0.25, test=0.25, seed=split_seed),
        calibration=CalibrationConfig(strategy=strategy),
        report=ReportConfig(n_resamples=500),
    )
    return run_calibration(config, log=lambda m: None)


def test_champion_moves_only_when_the_improvement_is_significant(tmp_path: Path, isolated_workspace: Path) -> None:
    data = write_jsonl(tmp_path / "rows.jsonl", [row.to_record() for row in recorded_rows(n_groups=24).rows])
    first = calibrate(data, "threshold", "loose")  # the loose judge, as it is
    assert first.registry.moved and "first registered version" in first.registry.reason
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("relevance-judge", "champion").version) == first.registry.version

    better = calibrate(data, "stacking", "loose")  # stacked with the strict judge and the verifier
    assert better.registry.moved, better.registry.reason
    assert "interval [+" in better.registry.reason
    assert str(client.get_model_version_by_alias("relevance-judge", "champion").version) == better.registry.version

    same = calibrate(data, "stacking", "loose")  # no better than the champion
    assert not same.registry.moved
    assert "stays with" in same.registry.reason
    run = mlflow.get_run(same.run_id)
    assert run.data.tags["judgecal.registry.champion"] == "kept"

    elsewhere = calibrate(data, "stacking", "strict", split_seed=2)  # other test rows
    assert not elsewhere.registry.moved and "other rows" in elsewhere.registry.reason
    champion = load_judge("models:/relevance-judge@champion")
    assert champion.kind == "stacked"

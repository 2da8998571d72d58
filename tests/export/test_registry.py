"""The registry gate: champion moves only on a significant paired improvement."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from judgecal.calibrate.optimizers import CalibrationConfig
from judgecal.data.split import SplitSpec
from judgecal.export.flavor import load_judge
from judgecal.pipeline.calibration import run_calibration
from judgecal.pipeline.config import ExperimentConfig, JudgeSection, ReportConfig
from tests.conftest import write_jsonl
from tests.helpers import recorded_rows


def calibrate(data: Path, strategy: str, recorded: str, split_seed: int = 1, gate: float = 0.2, gate_data=None):
    config = ExperimentConfig(
        judge=JudgeSection(
            name="gated",
            task="relevance",
            data=data,
            recorded=recorded,
            register_as="relevance-judge",
            gate_data=gate_data,
        ),
        split=SplitSpec(dev=0.25, test=0.25, gate=gate, seed=split_seed),
        calibration=CalibrationConfig(
            strategy=strategy, params={"verifiers": ["tfidf"]} if strategy == "stacking" else {}
        ),
        report=ReportConfig(n_resamples=500),
    )
    return run_calibration(config, log=lambda m: None)


def test_champion_moves_only_when_the_improvement_on_gate_rows_is_significant(
    tmp_path: Path, isolated_workspace: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Unset, as in a Python session: the calibration sets MLflow's own switch before it starts.
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    data = write_jsonl(tmp_path / "rows.jsonl", [row.to_record() for row in recorded_rows(n_groups=30).rows])
    first = calibrate(data, "threshold", "loose")  # the loose judge, as it is
    assert first.registry.moved and "first registered version" in first.registry.reason
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("relevance-judge", "champion").version) == first.registry.version

    capfd.readouterr()
    better = calibrate(data, "stacking", "loose")  # stacked with the strict judge and the verifier
    # The gate reads the champion's gate rows back from MLflow without MLflow's download bar.
    assert "Downloading artifacts" not in capfd.readouterr().err
    assert better.registry.moved, better.registry.reason
    assert "interval [+" in better.registry.reason and "gate rows" in better.registry.reason
    assert str(client.get_model_version_by_alias("relevance-judge", "champion").version) == better.registry.version
    # The gate rows are neither test rows nor rows any fit or selection saw.
    assert not set(better.gate.ids) & set(better.record.ids)
    fitted = {row.id for row in (*better.split.train.rows, *better.split.dev.rows)}
    assert not set(better.gate.ids) & fitted
    version = client.get_model_version("relevance-judge", better.registry.version)
    assert "Δ" in version.description and better.registry.reason in version.description

    same = calibrate(data, "stacking", "loose")  # no better than the champion
    assert not same.registry.moved
    assert "stays with" in same.registry.reason
    run = mlflow.get_run(same.tracked.run_id)
    assert run.data.tags["judgecal.registry.champion"] == "kept"

    elsewhere = calibrate(data, "stacking", "strict", split_seed=2)  # gate rows the champion was fitted on
    assert not elsewhere.registry.moved and "fitted or selected on" in elsewhere.registry.reason
    champion = load_judge("models:/relevance-judge@champion")
    assert champion.kind == "stacked"

    ungated = calibrate(data, "stacking", "strict", gate=0.0)
    assert not ungated.registry.moved and "no gate rows" in ungated.registry.reason


def test_fresh_gate_rows_are_judged_by_the_champion_too(tmp_path: Path, isolated_workspace: Path) -> None:
    rows = [row.to_record() for row in recorded_rows(n_groups=30).rows]
    data = write_jsonl(tmp_path / "rows.jsonl", rows[:200])
    fresh = write_jsonl(tmp_path / "fresh.jsonl", rows[200:])
    first = calibrate(data, "threshold", "loose")  # gated on a share of its own split
    assert first.registry.moved
    better = calibrate(data, "stacking", "loose", gate=0.2, gate_data=fresh)
    assert len(better.gate.ids) == 100 and set(better.gate.ids) == {r["id"] for r in rows[200:]}
    assert better.registry.moved, better.registry.reason
    assert "100 gate rows" in better.registry.reason


FRESH_PROCESS = """
import json, sys
import judgecal
from judgecal.data.rows import load_rows
rows_path, ids, uris = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
for uri in uris:
    judge = judgecal.load_judge(uri)
    rows = [r for r in load_rows(rows_path, judge.task.spec).rows if r.id in set(ids)]
    rows.sort(key=lambda r: ids.index(r.id))
    print(json.dumps([v.label for v in judge.batch(rows, progress=False)]))
"""


@pytest.mark.slow
def test_demo_judge_loads_by_path_run_and_champion_alias_in_a_fresh_process(isolated_workspace: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    from judgecal.pipeline.config import load_config

    repo = Path(__file__).resolve().parents[2]
    config = load_config(
        repo / "experiments" / "relevance.toml",
        {
            "calibration.strategy": "threshold",
            "judge.register_as": "relevance-demo",
            # Few rows for the embedded model to judge: the point is loading, not agreement.
            "split.max_train_rows": 8,
            "split.max_dev_rows": 8,
            "split.max_test_rows": 8,
            "split.max_gate_rows": 4,
        },
    )
    report = run_calibration(config, log=lambda m: None)
    assert report.registry is not None and report.registry.moved
    record = report.record
    ids, expected = record.ids[:8], record.judges["calibrated"].verdicts[:8]  # the point is loading
    bundle = Path(
        mlflow.artifacts.download_artifacts(
            run_id=report.tracked.run_id, artifact_path="bundle", dst_path=str(isolated_workspace / "downloaded")
        )
    )
    env = {**os.environ, "JUDGECAL_HOME": str(isolated_workspace)}
    uris = [str(bundle), f"runs:/{report.tracked.run_id}/judge", "models:/relevance-demo@champion"]
    out = subprocess.run(  # one process other than this one loads each in turn
        [sys.executable, "-c", FRESH_PROCESS, str(config.judge.data), json.dumps(ids), *uris],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    printed = [line for line in out.stdout.splitlines() if line.startswith("[")]
    assert [json.loads(line) for line in printed] == [expected] * len(uris), out.stdout

"""The MLflow flavor's verbs: a judge saved with ``save_model`` comes back from
``load_model`` as the same judge."""

from __future__ import annotations

from pathlib import Path

import pytest

import judgecal
from judgecal.calibrate.trained import VerifierJudge
from judgecal.data.split import SplitSpec, split_by_group
from tests.helpers import RELEVANCE, recorded_rows


def test_a_judge_saved_with_save_model_loads_with_load_model_and_gives_the_same_verdicts(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    split = split_by_group(recorded_rows(), SplitSpec(dev=0.25, test=0.25, seed=1))
    judge = VerifierJudge(task=RELEVANCE, name="relevance").fit(split.train.rows, split.dev.rows)
    capfd.readouterr()
    folder = judgecal.save_model(judge, tmp_path / "model")
    assert "Downloading artifacts" not in capfd.readouterr().err  # MLflow copies files in as "downloads"
    assert (folder / "MLmodel").exists()
    loaded = judgecal.load_model(folder)
    assert loaded.kind == "verifier"
    assert loaded.state() == judge.state()
    assert loaded.predict(split.test.rows) == judge.predict(split.test.rows)
    row = split.test.rows[0]
    assert loaded(**row.inputs) == judge(**row.inputs)

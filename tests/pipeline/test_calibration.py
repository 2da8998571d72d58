"""A calibration end to end on the embedded model, recorded in MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest

from judgecal.data.rows import DataError
from judgecal.pipeline.calibration import run_calibration
from judgecal.pipeline.config import load_config
from judgecal.workspace import Workspace


def write_config(folder: Path, data: Path, **calibration: object) -> Path:
    settings = "\n".join(f"{key} = {value!r}".replace("'", '"') for key, value in calibration.items())
    path = folder / "experiment.toml"
    path.write_text(
        f"""
[judge]
name = "relevance-slice"
task = "relevance"
data = "{data}"

[lm]
max_tokens = 32

[split]
dev = 0.25
test = 0.25
seed = 1

[calibration]
{settings}
"""
    )
    return path


def test_config_errors_name_the_file_and_field(tmp_path: Path) -> None:
    bad_toml = tmp_path / "broken.toml"
    bad_toml.write_text('[judge]\nname = "x"\ntask = \n')
    with pytest.raises(DataError, match=r"broken.toml:3: invalid TOML"):
        load_config(bad_toml)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[judge]\nname = "x"\ntask = "relevance"\ndata = "d.jsonl"\n[lm]\ntemprature = 0.5\n')
    with pytest.raises(DataError, match=r"unknown.toml: field 'lm.temprature': Extra inputs are not permitted"):
        load_config(unknown)


def test_relative_data_path_is_read_from_the_config_folder_and_flags_override(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    config_path = tmp_path / "sub" / "exp.toml"
    config_path.write_text('[judge]\nname = "x"\ntask = "relevance"\ndata = "rows.jsonl"\n')
    config = load_config(config_path)
    assert config.judge.data == (tmp_path / "sub" / "rows.jsonl").resolve()
    overridden = load_config(config_path, {"lm.model": "openai/gpt-4o-mini", "calibration.seed": 7})
    assert overridden.lm.model == "openai/gpt-4o-mini"
    assert overridden.calibration.seed == 7


@pytest.mark.slow
def test_calibration_on_shared_relevance_slice_writes_a_complete_mlflow_run(
    relevance_slice: Path, tmp_path: Path, dspy_cache: Path, isolated_workspace: Path, workspace
) -> None:
    import mlflow

    from judgecal.export.flavor import load_judge

    config = load_config(
        write_config(
            tmp_path,
            relevance_slice,
            optimizer="labeled_few_shot",  # a program with demos; the optimizers have tests of their own
            max_labeled_demos=2,
        )
    )
    report = run_calibration(config, workspace=workspace, log=lambda message: None)

    assert report.tracked is not None
    run_id = report.tracked.run_id
    run = mlflow.get_run(run_id)
    experiment = mlflow.get_experiment(run.info.experiment_id)
    assert experiment.name == "judgecal/relevance-slice"
    store = isolated_workspace / "mlruns"
    assert mlflow.get_tracking_uri() == f"sqlite:///{store / 'mlflow.db'}"
    assert run.info.artifact_uri.startswith((store / "artifacts").as_uri())
    metrics = run.data.metrics
    for name in ("kappa", "f1", "selected_rate"):
        assert f"raw.{name}" in metrics and f"calibrated.{name}" in metrics
        assert metrics[f"delta.{name}"] == pytest.approx(metrics[f"calibrated.{name}"] - metrics[f"raw.{name}"])
    assert metrics["delta.kappa.low"] <= metrics["delta.kappa"] <= metrics["delta.kappa.high"]
    mlflow.set_experiment(experiment_id=run.info.experiment_id)
    table = mlflow.load_table("metrics.json", run_ids=[run_id])
    assert "reference:gpt-5.4" in set(table["judge"])  # recorded judges scored on the same test rows
    assert run.data.tags["judgecal.outcome"] in {"improved", "inconclusive", "worse"}
    params = run.data.params
    assert params["judge.model"] == "embedded"
    assert params["strategy"] == "labeled_few_shot"
    assert params["data.fingerprint"] == report.split.data_fingerprint
    assert int(params["split.test_rows"]) == report.split.sizes["test"]
    artifacts = {item.path for item in mlflow.artifacts.list_artifacts(run_id=run_id)}
    assert {"program.json", "bundle", "card", "evaluation.json", "report.json", "metrics.json"} <= artifacts
    card = {item.path for item in mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path="card")}
    assert {
        "card/judge_card.md",
        "card/judge_card.html",
        "card/confusion_matrices.png",
        "card/reliability.png",
        "card/per_group_agreement.png",
        "card/metric_intervals.png",
    } <= card
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}'",
        output_format="list",
    )
    assert [model.name for model in models] == ["judge"]

    # The logged model loads back and judges, and agrees with the judge that was logged.
    test_rows = list(report.split.test.rows[:3])
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/judge")
    import pandas as pd

    frame = pd.DataFrame([row.inputs for row in test_rows])
    predicted = pyfunc.predict(frame)
    expected = [v.label for v in report.calibrated.verdicts[:3]]
    assert [label == "true" for label in predicted["label"]] == expected
    judge = load_judge(f"runs:/{run_id}/judge", workspace=workspace)
    assert [judge(**row.inputs).label for row in test_rows] == expected


def test_calibration_sends_a_remote_judge_num_threads_rows_at_once(tmp_path: Path, chat_server) -> None:
    """``[calibration] num_threads`` reaches the raw judge a calibration builds."""
    import json

    from judgecal.pipeline.calibration import prepare

    data = tmp_path / "rows.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {"id": f"r{i}", "group": f"g{i % 8}", "prompt": f"row {i}", "attribute": "a", "label": i % 3 == 0}
            )
            + "\n"
            for i in range(24)
        )
    )
    chat_server.hold_until = 4
    chat_server.respond = lambda text, attempt: "ok"
    path = write_config(tmp_path, data, num_threads=4)
    path.write_text(
        path.read_text().replace(
            "[lm]\n", f'[lm]\nmodel = "openai/judge"\napi_base = "{chat_server.url}"\ncache = false\n'
        )
    )
    prepared = prepare(load_config(path), Workspace(tmp_path), log=lambda message: None)
    verdicts = prepared.raw.predict(list(prepared.split.train.rows)[:8])
    assert [v.error for v in verdicts] == [None] * 8
    assert chat_server.most_at_once == 4

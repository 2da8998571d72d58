"""judgecal plan on the pilots a person has: labelled rows with recorded verdicts, a
verdicts file joined to them, a calibration's MLflow run (logged to a child run, the
pilot's own metrics untouched), or expected rates; and bad input refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from judgecal.cli import main
from judgecal.data.split import SplitSpec
from judgecal.pipeline.plan import read_pilot
from tests.conftest import write_jsonl
from tests.helpers import recorded_rows

QUICK = ["--simulations", "40", "--resamples", "80"]


@pytest.fixture
def rows_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "pilot.jsonl", [row.to_record() for row in recorded_rows(n_groups=12).rows])


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_rows_file_with_recorded_verdicts_plans_the_interval_and_the_comparison(
    rows_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["plan", str(rows_file), "--task", "relevance", "--judge", "strict", "--versus", "loose", "--out", str(out)]
    assert main([*argv, *QUICK]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "like the pilot's 12 (120 rows, 10.0 per group" in printed
    plan = json.loads((out / "plan.json").read_text())
    assert [(p["goal"], p["quantity"]) for p in plan["plans"]] == [
        ("width", "kappa"),
        ("power", "kappa of strict minus loose"),
    ]
    assert plan["plans"][0]["rows"] == plan["plans"][0]["groups"] * 10
    assert (out / "plan.png").stat().st_size > 0


def test_a_verdicts_file_is_joined_by_id_and_abstentions_are_left_out(rows_file: Path, tmp_path: Path) -> None:
    rows = recorded_rows(n_groups=12).rows
    lines = [{"id": r.id, "verdict": r.reference_judges["strict"]} for r in rows[:-5]]
    lines += [{"id": r.id, "verdict": None, "abstained": True} for r in rows[-5:]]
    verdicts = write_jsonl(tmp_path / "verdicts.jsonl", lines)
    pilot = read_pilot(str(rows_file), [None, None], task="relevance", verdicts=verdicts)
    assert pilot.judges == ("verdicts",) and pilot.left_out == 5 and pilot.n_rows == 115


def test_a_verdict_for_a_row_not_in_the_pilot_is_refused_at_its_line(
    rows_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    verdicts = write_jsonl(tmp_path / "v.jsonl", [{"id": "g0-0", "verdict": True}, {"id": "nope", "verdict": True}])
    code = main(["plan", str(rows_file), "--task", "relevance", "--verdicts", str(verdicts), *QUICK])
    assert code == 2
    assert f"{verdicts}:2: field 'id': id 'nope' is not a row of {rows_file}" in one_line_error(capsys)


def test_a_bad_label_in_the_pilot_names_file_line_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = [row.to_record() for row in recorded_rows(n_groups=4).rows]
    records[2]["label"] = "maybe"
    path = write_jsonl(tmp_path / "pilot.jsonl", records)
    assert main(["plan", str(path), "--task", "relevance", "--judge", "strict", *QUICK]) == 2
    assert f"{path}:3: field 'label'" in one_line_error(capsys)


def test_a_judge_not_in_the_pilot_is_refused_with_the_judges_there(
    rows_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", str(rows_file), "--task", "relevance", "--judge", "gpt-4o", *QUICK]) == 2
    assert "no judge 'gpt-4o' (judges: loose, strict)" in one_line_error(capsys)
    assert main(["plan", str(rows_file), "--task", "relevance", *QUICK]) == 2
    assert "several judges (loose, strict); name one with --judge" in one_line_error(capsys)
    bare = [{**record, "reference_judges": {}} for record in (row.to_record() for row in recorded_rows(4).rows)]
    path = write_jsonl(rows_file.with_name("bare.jsonl"), bare)
    assert main(["plan", str(path), "--task", "relevance", *QUICK]) == 2
    assert "no judge's verdicts on these rows: give a judge's verdicts with --verdicts FILE" in one_line_error(capsys)


def test_without_a_pilot_it_needs_the_rates_and_with_one_refuses_them(
    rows_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", str(rows_file), "--task", "relevance", "--judge", "strict", "--kappa", "0.4"]) == 2
    assert "--kappa describes a judge without a pilot; leave it out with one" in one_line_error(capsys)
    assert main(["plan", "--prevalence", "0.3"]) == 2
    assert "or --kappa and --prevalence" in one_line_error(capsys)
    with pytest.raises(SystemExit) as refused:
        main(["plan", "--kappa", "0.4", "--prevalence", "1.3"])
    assert refused.value.code == 2
    assert "--prevalence" in one_line_error(capsys)


def test_a_plan_sized_for_the_pilots_uncertainty_asks_for_more_groups_and_says_why(
    rows_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """12 groups estimate their spread on 11 degrees of freedom: ``mean`` sizes the width
    1.075 times narrower, about 1.16 times the groups; ``upper`` at 80%, 1.255 times."""
    argv = ["plan", str(rows_file), "--task", "relevance", "--judge", "strict", "--half-width", "0.1", *QUICK]
    groups = {}
    for how in ("ignore", "mean", "upper"):
        assert main([*argv, "--pilot-uncertainty", how, "--out", str(tmp_path / how)]) == 0
        groups[how] = json.loads((tmp_path / how / "plan.json").read_text())["plans"][0]["groups"]
        printed = " ".join(capsys.readouterr().out.split())
        assert f"(--pilot-uncertainty {how})" in printed
    assert "sized 1.255 times narrower than asked" in printed  # √(11 / χ²₀.₂,₁₁)
    print(groups)
    assert groups["ignore"] < groups["mean"] < groups["upper"]
    assert groups["mean"] == pytest.approx(1.075**2 * groups["ignore"], rel=0.15)


def test_the_pilots_uncertainty_is_refused_without_a_pilot_and_its_confidence_without_upper(
    rows_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", "--kappa", "0.4", "--prevalence", "0.3", "--pilot-uncertainty", "mean"]) == 2
    assert "--pilot-uncertainty describes a pilot; planning from rates has none" in one_line_error(capsys)
    argv = ["plan", str(rows_file), "--task", "relevance", "--judge", "strict", "--pilot-confidence", "0.9"]
    assert main([*argv, "--pilot-uncertainty", "mean", *QUICK]) == 2
    assert "--pilot-confidence is the confidence of --pilot-uncertainty upper, not mean" in one_line_error(capsys)


def test_from_rates_with_groups_of_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--kappa", "0.4", "--prevalence", "0.3", "--rows-per-group", "5", "--icc", "0.1"]
    assert main([*argv, "--above", "0.2", "--out", str(tmp_path), *QUICK]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "5 rows per group (intraclass correlation 0.1 of the label within a group)" in printed
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert [(p["goal"], p["null"], p["alternative"]) for p in plan["plans"]] == [
        ("width", 0.0, "two-sided"),
        ("power", 0.2, "two-sided"),
    ]
    assert plan["plans"][1]["value"] == pytest.approx(0.4)
    assert all(p["rows"] == p["groups"] * 5 for p in plan["plans"])


def test_a_run_as_pilot_is_planned_and_logged_to_a_child_run(
    workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import mlflow

    from judgecal.calibrate.optimizers import CalibrationConfig
    from judgecal.pipeline.calibration import run_calibration
    from judgecal.pipeline.config import ExperimentConfig, JudgeSection

    data = write_jsonl(tmp_path / "rows.jsonl", [row.to_record() for row in recorded_rows(n_groups=16).rows])
    config = ExperimentConfig(
        judge=JudgeSection(name="planned", task="relevance", data=data, recorded="loose"),
        split=SplitSpec(dev=0.25, test=0.4, seed=1),
        calibration=CalibrationConfig(strategy="verifier"),
    )
    run_id = run_calibration(config, workspace=workspace, log=lambda m: None).tracked.run_id
    client = mlflow.MlflowClient(tracking_uri=workspace.tracking_uri)
    before = client.get_run(run_id).data.metrics

    assert main(["plan", f"runs:/{run_id}", "--out", str(tmp_path / "plan"), *QUICK]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "kappa of calibrated minus raw" in printed and f"a child of runs:/{run_id}" in printed
    children = client.search_runs(
        [client.get_run(run_id).info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
    )
    assert len(children) == 1
    child = children[0]
    assert {a.path for a in client.list_artifacts(child.info.run_id)} == {"plan.json", "plan.png"}
    assert "plan_width_kappa_groups" in child.data.metrics
    assert client.get_run(run_id).data.metrics == before


def test_precision_of_a_verdict_and_agreement_are_planned_from_their_pilot_values(
    rows_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = recorded_rows(n_groups=12).rows
    said_true = [row for row in rows if row.reference_judges["strict"] is True]
    precision = sum(row.label is True for row in said_true) / len(said_true)
    agreement = sum(row.label == row.reference_judges["strict"] for row in rows) / len(rows)
    for metric, extra, name, value in (
        ("precision", ["--verdict", "TRUE"], "precision of TRUE", precision),
        ("agreement", [], "agreement", agreement),
    ):
        out = tmp_path / metric
        argv = ["plan", str(rows_file), "--task", "relevance", "--judge", "strict", "--metric", metric, *extra]
        assert main([*argv, "--out", str(out), *QUICK]) == 0
        (plan,) = json.loads((out / "plan.json").read_text())["plans"]
        assert (plan["quantity"], plan["value"]) == (name, pytest.approx(value))
    assert (
        main(
            [
                "plan",
                str(rows_file),
                "--task",
                "relevance",
                "--judge",
                "strict",
                "--verdict",
                "maybe",
                "--metric",
                "precision",
                *QUICK,
            ]
        )
        == 2
    )
    assert "--verdict: 'maybe' is not one of the labels True, False" in one_line_error(capsys)


def test_a_verdict_always_right_on_the_pilot_is_planned_at_the_least_size(rows_file: Path, tmp_path: Path) -> None:
    """'strict' says false only where people did: its precision of false is 1 in every
    study, a point interval at any size."""
    argv = ["plan", str(rows_file), "--task", "relevance", "--judge", "strict", "--metric", "precision"]
    assert main([*argv, "--verdict", "false", "--out", str(tmp_path), *QUICK]) == 0
    (plan,) = json.loads((tmp_path / "plan.json").read_text())["plans"]
    assert (plan["value"], plan["groups"], plan["width"], plan["least"]) == (1.0, 10, 0.0, True)


def test_a_selective_run_plans_its_calibration_groups_and_a_run_without_a_band_is_refused(
    workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--coverage reads the run's test rows as its calibrated judge scored them and its
    band's rule (selective.json), from the run or from the downloaded files side by side."""
    import mlflow

    from judgecal.calibrate.optimizers import CalibrationConfig
    from judgecal.pipeline.calibration import run_calibration
    from judgecal.pipeline.config import ExperimentConfig, JudgeSection, SelectiveConfig

    data = write_jsonl(tmp_path / "rows.jsonl", [r.to_record() for r in recorded_rows(n_groups=30, per_group=20).rows])
    config = ExperimentConfig(
        judge=JudgeSection(name="banded", task="relevance", data=data, recorded="strict"),
        split=SplitSpec(dev=0.2, test=0.3, calibration=0.2, seed=0),
        calibration=CalibrationConfig(strategy="stacking", params={"verifiers": []}),
        selective=SelectiveConfig(precision={"true": 0.9, "false": 0.9}, groups="independent", allow_never=True),
    )
    run_id = run_calibration(config, workspace=workspace, log=lambda m: None).tracked.run_id
    argv = ["--coverage", "0.3", "--simulations", "30", "--most-groups", "400"]
    assert main(["plan", f"runs:/{run_id}", *argv, "--out", str(tmp_path / "run")]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "like the pilot's 9 test groups (180 rows, 20.0 per group)" in printed
    (plan,) = json.loads((tmp_path / "run" / "plan.json").read_text())["plans"]
    assert plan["quantity"] == "band: true ≥ 0.9, false ≥ 0.9 (delta 0.1), answering ≥ 30%"
    assert (plan["goal"], plan["targets"], plan["allow_never"]) == ("selective", {"true": 0.9, "false": 0.9}, True)
    assert plan["reached"] and plan["rows"] == plan["groups"] * 20 and plan["power"] >= 0.7
    client = mlflow.MlflowClient(tracking_uri=workspace.tracking_uri)
    experiment_id = client.get_run(run_id).info.experiment_id
    (child,) = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    assert child.data.metrics["plan_selective_groups"] == plan["groups"]

    folder = tmp_path / "files"
    for name in ("evaluation.json", "selective.json"):
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name, dst_path=str(folder))
    assert main(["plan", str(folder), *argv, "--out", str(tmp_path / "files-plan")]) == 0
    (again,) = json.loads((tmp_path / "files-plan" / "plan.json").read_text())["plans"]
    assert again == plan
    saved = (folder / "selective.json").read_text()
    for damaged in ('{"test": null}', "{not json", '{"band": {"found": "perhaps"}}'):
        (folder / "selective.json").write_text(damaged)
        capsys.readouterr()
        assert main(["plan", str(folder), *argv]) == 2
        assert f"{folder / 'selective.json'}" in one_line_error(capsys)
    (folder / "selective.json").write_text(saved)
    record = json.loads((folder / "evaluation.json").read_text())
    record["judges"]["calibrated"]["probability"] = None
    (folder / "evaluation.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert main(["plan", str(folder), *argv]) == 2
    assert "the calibrated judge's probabilities are not in evaluation.json" in one_line_error(capsys)
    (folder / "selective.json").unlink()
    capsys.readouterr()
    assert main(["plan", str(folder), *argv]) == 2
    assert f"{folder}: no selective.json beside it: the run was calibrated without [selective]" in one_line_error(
        capsys
    )
    unbanded = run_calibration(config.model_copy(update={"selective": None}), workspace=workspace, log=lambda m: None)
    assert main(["plan", f"runs:/{unbanded.tracked.run_id}", *argv]) == 2
    assert "no selective.json in the run: it was calibrated without [selective]" in one_line_error(capsys)
    assert main(["plan", *argv]) == 2
    assert "--coverage plans a selective judge's band" in one_line_error(capsys)
    assert main(["plan", f"runs:/{run_id}", *argv, "--above", "0.2"]) == 2
    assert "--above is not used by a band's plan (--coverage); leave it out" in one_line_error(capsys)


def test_a_band_of_a_task_without_yes_and_no_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A pairwise record keeps P(verdict) per row, not every label's probability: its
    bands cannot be chosen again."""
    from judgecal.stats.selective import BandChoice, CalibrationRows, Candidates, Guarantee

    record = {
        "format": "judgecal.evaluation",
        "judge_name": "pairs",
        "task": "pairwise",
        "labels": ["A", "B", "tie"],
        "pairwise": True,
        "ids": ["1", "2"],
        "groups": ["g1", "g2"],
        "human": ["A", "B"],
        "judges": {"calibrated": {"verdicts": ["A", "B"], "confidence": [0.9, 0.8]}},
    }
    guarantee = Guarantee(
        precision={"A": 0.9, "B": 0.9, "tie": 0.6},
        delta=0.1,
        groups="design_effect",
        allow_never=False,
        method="",
        statement="",
    )
    band = BandChoice(
        found=False,
        band=None,
        guarantee=guarantee,
        calibration_rows=CalibrationRows(count=2, groups=2, fingerprint=""),
        candidates=Candidates(thresholds=[0.5], valid={}),
    )
    (tmp_path / "evaluation.json").write_text(json.dumps(record))
    (tmp_path / "selective.json").write_text(json.dumps({"band": band.model_dump(mode="json"), "test": None}))
    assert main(["plan", str(tmp_path), "--coverage", "0.5", "--out", str(tmp_path / "plan")]) == 2
    assert "a band's plan needs P(yes) per row; the task's labels are not yes / no" in one_line_error(capsys)

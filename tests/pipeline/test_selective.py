"""A calibration with [selective], end to end on recorded verdicts: the band is chosen on
calibration rows of its own, the exported judge abstains outside it, and the run, its
card, its bundle and its registered version state the guarantee; when no band meets the
targets the run says which verdict fell short and exports the judge as fitted.

The rows (``recorded_rows``) have two recorded judges that over-select: where both say
"relevant", people agree about 80% of the time; where the strict one says "not
relevant", always. So a target of 0.9 for "relevant" has no band, and with
``allow_never`` the judge never says "relevant", says "not relevant" where it may, and
abstains on the rest.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from judgecal.calibrate.optimizers import CalibrationConfig
from judgecal.data.split import SplitSpec
from judgecal.pipeline.calibration import run_calibration
from judgecal.pipeline.config import ExperimentConfig, JudgeSection, ReportConfig, SelectiveConfig
from judgecal.workspace import Workspace
from tests.conftest import write_jsonl
from tests.helpers import recorded_rows

TARGETS = {"true": 0.9, "false": 0.95}


def experiment(
    data: Path, *, allow_never: bool, register: str | None = None, procedure: str = "holm"
) -> ExperimentConfig:
    return ExperimentConfig(
        judge=JudgeSection(name="selective", task="relevance", data=data, recorded="strict", register_as=register),
        split=SplitSpec(dev=0.2, test=0.2, calibration=0.3, seed=0),
        calibration=CalibrationConfig(strategy="stacking", params={"verifiers": []}),
        report=ReportConfig(n_resamples=200),
        selective=SelectiveConfig(
            precision=TARGETS,
            groups="independent",
            allow_never=allow_never,
            procedure=procedure,  # type: ignore[arg-type]
        ),
    )


@pytest.fixture(scope="module")
def calibrated_runs(tmp_path_factory):
    """One calibration with a band (registered), one without (its candidates tested by a fixed
    sequence), in a workspace of their own."""
    root = tmp_path_factory.mktemp("selective")
    (root / "mlruns").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUDGECAL_HOME", str(root))
        data = write_jsonl(
            root / "rows.jsonl", [row.to_record() for row in recorded_rows(n_groups=30, per_group=20).rows]
        )
        workspace = Workspace(root)
        said: list[str] = []
        banded = run_calibration(
            experiment(data, allow_never=True, register="selective"), workspace=workspace, log=said.append
        )
        unbanded = run_calibration(
            experiment(data, allow_never=False, procedure="fixed-sequence"), workspace=workspace, log=said.append
        )
        yield banded, unbanded, said


@pytest.fixture
def calibrated(calibrated_runs):
    """The module's runs, with MLflow pointed at their store (each test's teardown forgets it)."""
    import mlflow

    mlflow.set_tracking_uri(calibrated_runs[0].tracked.tracking_uri)
    return calibrated_runs


def test_the_band_is_chosen_on_calibration_rows_nothing_else_saw(calibrated) -> None:
    report, _, _ = calibrated
    band, split = report.band, report.split
    assert band is not None and band.found and split.calibration is not None
    calibration = {row.id for row in split.calibration.rows}
    assert band.calibration_rows.count == len(calibration) and band.calibration_rows.groups == 9
    others = {row.id for part in (split.train, split.dev, split.test) for row in part.rows}
    assert not calibration & others
    yes, no = band.band.answers
    assert yes.threshold is None and no.threshold is not None  # never says "true" (allow_never)
    assert 0.5 < band.calibration_rows.coverage < 0.9


def test_the_exported_judge_abstains_outside_its_band_and_its_bundle_holds_the_band(calibrated) -> None:
    from judgecal import load_judge

    report, _, _ = calibrated
    judge = load_judge(f"runs:/{report.tracked.run_id}/judge", tracking_uri=report.tracked.tracking_uri)
    assert judge.kind == "selective" and judge.base_.kind == "stacked"
    verdicts = judge.predict(report.split.test.rows)
    abstained = [v for v in verdicts if v.abstained]
    assert abstained and all(v.label is None and v.error is None and v.probabilities for v in abstained)
    assert {v.label for v in verdicts if not v.abstained} == {False}
    assert len(abstained) == report.selective.rows - sum(report.selective.answered.values())
    state = judge.state()
    assert (
        state["guarantee"]["precision"] == TARGETS
        and state["guarantee"]["statement"] == report.band.guarantee.statement
    )
    assert state["calibration_rows"]["fingerprint"].startswith("sha256:")
    assert (
        state["guarantee"]["procedure"] == "holm"
        and "Holm within each verdict's family" in state["guarantee"]["method"]
    )


def test_the_run_reports_coverage_precision_and_the_guarantee(calibrated) -> None:
    import mlflow

    report, _, _ = calibrated
    selective = report.selective
    assert selective is not None and selective.rows == len(report.split.test.rows)
    assert 0 < selective.coverage.value < 1 and selective.coverage.low <= selective.coverage.value
    checks = {check.verdict: check.status for check in selective.targets}
    assert checks["true"] == "never given" and checks["false"] in ("held", "not settled", "missed")
    run = mlflow.MlflowClient().get_run(report.tracked.run_id)
    assert run.data.metrics["selective.coverage"] == pytest.approx(selective.coverage.value)
    assert run.data.metrics["selective.precision.false"] == pytest.approx(selective.precision["false"].value)
    assert "selective.precision.true" not in run.data.metrics  # never said on test rows
    note = run.data.tags["mlflow.note.content"]
    assert report.band.guarantee.statement in note and "it answers" in note
    assert run.data.params["selective.groups"] == "independent"
    # The usual metrics stay those of the judge before its band, on every test row.
    assert report.calibrated.metrics["invalid_rate"] == 0
    saved = json.loads(
        Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="selective.json")).read_text()
    )
    assert saved["band"]["found"] and saved["test"]["coverage"]["value"] == pytest.approx(selective.coverage.value)


def test_the_registered_version_states_the_guarantee(calibrated) -> None:
    import mlflow

    report, _, _ = calibrated
    version = mlflow.MlflowClient().get_model_version("selective", report.registry.version)
    assert report.band.guarantee.statement in version.description


def test_the_card_has_a_selective_section_with_its_risk_coverage_plot(calibrated) -> None:
    import mlflow

    report, _, _ = calibrated
    card = Path(mlflow.artifacts.download_artifacts(run_id=report.tracked.run_id, artifact_path="card"))
    text = (card / "judge_card.md").read_text()
    assert "## Selective judging" in text and "![Risk–coverage](risk_coverage.png)" in text
    assert "never given (holds vacuously)" in text
    assert (card / "risk_coverage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (card / "judge_card.html").read_text()
    embedded = base64.b64encode((card / "risk_coverage.png").read_bytes()).decode("ascii")
    assert embedded in page


def test_no_band_is_said_plainly_and_the_judge_stays_as_fitted(calibrated) -> None:
    import mlflow

    from judgecal import load_judge

    _, report, said = calibrated
    assert report.band is not None and not report.band.found and report.selective is None
    [short] = report.band.shortfalls
    assert short.verdict == "true" and short.target == 0.9 and 0.6 < short.precision < 0.9
    statement = report.band.guarantee.statement
    assert statement.startswith("No band met the targets") and "for 'true'" in statement
    assert any(statement in line for line in said)
    run = mlflow.MlflowClient().get_run(report.tracked.run_id)
    assert "**Selective judging: no band.**" in run.data.tags["mlflow.note.content"]
    assert report.band.guarantee.procedure == "fixed-sequence" and "a fixed sequence" in report.band.guarantee.method
    assert run.data.params["selective.procedure"] == "fixed-sequence"
    assert (
        load_judge(f"runs:/{report.tracked.run_id}/judge", tracking_uri=report.tracked.tracking_uri).kind == "stacked"
    )
    assert not [name for name in run.data.metrics if name.startswith("selective.")]


def test_a_searchs_winner_is_wrapped_in_its_band_after_its_refit(tmp_path: Path, workspace: Workspace) -> None:
    from judgecal.calibrate.search import SearchConfig
    from judgecal.pipeline.search import run_search

    data = write_jsonl(
        tmp_path / "rows.jsonl", [row.to_record() for row in recorded_rows(n_groups=30, per_group=20).rows]
    )
    config = experiment(data, allow_never=False).model_copy(
        update={
            "selective": SelectiveConfig(precision={"true": 0.8, "false": 0.95}, groups="independent"),
            "search": SearchConfig(strategies=["verifier"], trials=1, storage=f"sqlite:///{tmp_path / 'optuna.db'}"),
        }
    )
    said: list[str] = []
    report = run_search(config, config.search, workspace=workspace, track=False, log=said.append)
    calibration = report.calibration
    assert calibration is not None and calibration.band is not None and calibration.band.found
    assert calibration.calibrated_judge.kind == "selective" and calibration.calibrated_judge.base_.kind == "verifier"
    assert calibration.selective is not None and calibration.selective.rows == len(calibration.split.test.rows)
    assert any("selective judging: With probability at least 90%" in line for line in said)


def test_verdicts_without_probabilities_are_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from judgecal.cli import main

    data = write_jsonl(tmp_path / "rows.jsonl", [row.to_record() for row in recorded_rows(n_groups=12).rows])
    config = tmp_path / "exp.toml"
    config.write_text(f'[judge]\nname = "t"\ntask = "relevance"\ndata = "{data}"\nrecorded = "loose"\n')
    flags = ["--strategy", "threshold", "--precision", "true=0.7,false=0.95", "--no-track"]
    assert main(["calibrate", str(config), *flags]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "error: selective judging needs probabilities; 'loose' gives 0/1 verdicts only: stack it "
        "(--strategy stacking) or give a probability per row"
    ]
    assert "calibrating" not in captured.out


def test_a_cross_fitted_band_is_chosen_on_out_of_fold_verdicts_of_train_and_dev(
    tmp_path: Path, workspace: Workspace
) -> None:
    """No rows held back: each train + dev row is scored by the stack fitted without its
    group, the band is chosen on those scores, and the judge exported (the stack fitted on
    all of them) carries it; the run's description and card say so."""
    import mlflow

    from judgecal import load_judge
    from judgecal.calibrate.strategies import STRATEGIES, FitResult, fit_judge
    from judgecal.judges.fitted import positive_probability
    from judgecal.judges.verifiers import grouped_folds
    from judgecal.pipeline.calibration import cross_fit_verdicts, prepare

    data = write_jsonl(
        tmp_path / "rows.jsonl", [row.to_record() for row in recorded_rows(n_groups=30, per_group=20).rows]
    )
    selective = SelectiveConfig(precision=TARGETS, groups="independent", allow_never=True, rows="cross-fit", folds=4)
    config = experiment(data, allow_never=True).model_copy(
        update={"split": SplitSpec(dev=0.2, test=0.2, seed=0), "selective": selective}
    )
    report = run_calibration(config, workspace=workspace, log=lambda _: None)
    band, split = report.band, report.split
    assert split.calibration is None and band is not None and band.found
    fitting = [*split.train.rows, *split.dev.rows]
    rows = band.calibration_rows
    assert (rows.source, rows.folds, rows.count, rows.groups) == ("cross-fit", 4, len(fitting), 24)
    assert "480 out-of-fold rows (24 groups)" in band.guarantee.statement
    assert "Cross-fitted: each row was scored by the judge fitted on the other 3 of 4 grouped folds" in (
        band.guarantee.statement
    )
    # The verdicts the band was chosen on: each fold's rows from the stack fitted on the other folds.
    prepared = prepare(config, workspace, log=lambda _: None)
    result = FitResult(report.calibrated_judge.base_, "stacking", {"verifiers": []}, seconds=0.0, lm_calls=0)
    out_of_fold = positive_probability(cross_fit_verdicts(prepared, result, 4, log=lambda _: None), prepared.task)
    held = grouped_folds(fitting, 4, seed=0)[0]
    left_out = {fitting[i].group for i in held}
    fold = fit_judge(
        STRATEGIES["stacking"],
        prepared.env(lambda _: None),
        {"verifiers": []},
        [row for row in fitting if row.group not in left_out],
        None,
        prepared.guard,
    ).judge
    expected = positive_probability(fold.predict([fitting[i] for i in held]), prepared.task)
    assert out_of_fold[held] == pytest.approx(expected)
    in_sample = positive_probability(report.calibrated_judge.base_.predict(fitting), prepared.task)
    assert not np.allclose(out_of_fold, in_sample)  # not the exported judge's own scores
    # The exported judge is the stack fitted on all of train + dev, in the band; the run says how it was chosen.
    mlflow.set_tracking_uri(report.tracked.tracking_uri)
    judge = load_judge(f"runs:/{report.tracked.run_id}/judge", tracking_uri=report.tracked.tracking_uri)
    assert judge.kind == "selective" and judge.state()["calibration_rows"]["source"] == "cross-fit"
    assert judge.base_.state() == report.calibrated_judge.base_.state()
    run = mlflow.MlflowClient().get_run(report.tracked.run_id)
    assert "Cross-fitted" in run.data.tags["mlflow.note.content"] and run.data.params["selective.rows"] == "cross-fit"
    card = Path(mlflow.artifacts.download_artifacts(run_id=report.tracked.run_id, artifact_path="card"))
    assert "The band was chosen by cross-fitting on 480 rows in 24 groups" in (card / "judge_card.md").read_text()


def test_the_report_command_rebuilds_the_cards_selective_section_from_the_run_or_its_files(
    calibrated, tmp_path: Path
) -> None:
    import mlflow

    from judgecal.artifacts import EVALUATION_FILE, SELECTIVE_FILE
    from judgecal.cli import main

    report, unbanded, _ = calibrated
    uri, run_id = report.tracked.tracking_uri, report.tracked.run_id
    assert main(["report", run_id, "--tracking-uri", uri, "--resamples", "200", "--out", str(tmp_path / "run")]) == 0
    text = (tmp_path / "run" / "judge_card.md").read_text()
    assert "## Selective judging" in text and report.band.guarantee.statement in text
    assert (tmp_path / "run" / "risk_coverage.png").exists()
    files = tmp_path / "files"
    for name in (EVALUATION_FILE, SELECTIVE_FILE):
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name, dst_path=str(files))
    assert main(["report", str(files / EVALUATION_FILE), "--resamples", "200", "--out", str(tmp_path / "out")]) == 0
    assert "## Selective judging" in (tmp_path / "out" / "judge_card.md").read_text()
    # A run without a band says so; a run without [selective] has no such section.
    out = tmp_path / "unbanded"
    assert (
        main(["report", unbanded.tracked.run_id, "--tracking-uri", uri, "--resamples", "200", "--out", str(out)]) == 0
    )
    assert "The judge exported answers every row." in (out / "judge_card.md").read_text()
    (files / SELECTIVE_FILE).unlink()
    assert main(["report", str(files), "--resamples", "200", "--out", str(tmp_path / "plain")]) == 0
    assert "## Selective judging" not in (tmp_path / "plain" / "judge_card.md").read_text()

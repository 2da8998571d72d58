"""``judgecal monitor``: batch after batch into one MLflow run and a state file it resumes
from, a batch counted once (refused when seen again, counted once after a crash), an
alarm (exit code 3) when the judge got worse, the registered version tagged with the last
check, and a selective judge's coverage and precision, each verdict's followed with a
sequence of its own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from judgecal.calibrate.trained import VerifierJudge
from judgecal.cli import main
from judgecal.data.rows import LabeledRow, load_rows
from judgecal.export.bundle import bundle_from_judge, save_bundle
from judgecal.export.flavor import open_judge
from judgecal.export.reference import reference_sketch
from judgecal.pipeline import monitor
from judgecal.pipeline.monitor import check_batch
from judgecal.pipeline.monitor_state import read_state
from judgecal.tasks.registry import resolve_task
from judgecal.workspace import Workspace
from tests.conftest import write_jsonl
from tests.helpers import recorded_rows

REPO = Path(__file__).resolve().parents[2]
PANDALM = REPO / "experiments" / "data" / "pandalm" / "pandalm_test.jsonl"
GOLDEN = REPO / "tests" / "export" / "golden"
SAVED = Path(__file__).resolve().parent / "saved"
PAIRWISE = resolve_task("pairwise")


@pytest.fixture(scope="module")
def pandalm_rows() -> list[LabeledRow]:
    return list(load_rows(PANDALM, PAIRWISE.spec).rows)


@pytest.fixture(scope="module")
def judge_folder(tmp_path_factory: pytest.TempPathFactory, pandalm_rows: list[LabeledRow]) -> Path:
    """A words verifier fitted on the PandaLM rows the batches are drawn from (so that it
    agrees with people there and a change shows), with its agreement on 100 of them as its
    evaluation and those rows as its reference sample. Fitted once for the module: the
    monitor only reads its bundle."""
    tmp_path = tmp_path_factory.mktemp("monitored")
    fit, held = pandalm_rows, pandalm_rows[300:400]
    judge = VerifierJudge(task=PAIRWISE, name="pandalm").fit(fit)
    verdicts = judge.predict(held)
    agreement = sum(v.label == r.label for v, r in zip(verdicts, held, strict=True)) / len(held)
    from judgecal.backends.settings import LMConfig

    bundle = bundle_from_judge(
        judge,
        LMConfig(),
        metrics={"test.agreement": agreement},
        evaluation={"metrics": {"agreement": {"value": agreement, "low": agreement - 0.1, "high": agreement + 0.1}}},
        reference=reference_sketch(held, verdicts, PAIRWISE.spec, source="held-out rows"),
    )
    save_bundle(bundle, tmp_path / "judge")
    return tmp_path / "judge"


def batches(tmp_path: Path, rows: list[LabeledRow], *, count: int, size: int = 50, swap_from: int | None = None):
    """Batch files of later PandaLM rows; from ``swap_from`` on, people's labels turned
    around (A and B swapped, a tie made A), so the judge disagrees with them."""
    out = []
    for b in range(count):
        part = [row.to_record() for row in rows[400 + b * size : 400 + (b + 1) * size]]
        if swap_from is not None and b + 1 >= swap_from:
            part = [{**r, "label": {"A": "B", "B": "A", "tie": "A"}[r["label"]]} for r in part]
        out.append(write_jsonl(tmp_path / f"batch{b + 1}.jsonl", part))
    return out


def run(judge: Path | str, batch: Path, state: Path, *extra: str) -> int:
    return main(["monitor", "--judge", str(judge), "--batch", str(batch), "--state", str(state), *extra])


def test_batches_go_into_one_run_and_a_state_file_and_a_seen_batch_is_refused(
    tmp_path: Path, judge_folder: Path, pandalm_rows, capsys
) -> None:
    import mlflow

    state = tmp_path / "monitor.json"
    files = batches(tmp_path, pandalm_rows, count=3)
    assert [run(judge_folder, f, state) for f in files] == [0, 0, 0]
    saved = read_state(state)
    assert [b.index for b in saved.batches] == [1, 2, 3]
    assert saved.level_source.startswith("the low end of the 95% interval of its agreement")
    assert saved.alarm_batch is None and all(b.shift is not None for b in saved.batches)
    client = mlflow.MlflowClient()
    history = client.get_metric_history(saved.run_id, "batch.agreement")
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert client.get_run(saved.run_id).data.tags["judgecal.monitor.alarm"] == "none"
    assert {a.path for a in client.list_artifacts(saved.run_id)} >= {"monitor.png", "monitor_state.json"}
    capsys.readouterr()

    copy = write_jsonl(tmp_path / "again.jsonl", [json.loads(line) for line in files[1].read_text().splitlines()])
    assert run(judge_folder, copy, state) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(copy) in error and "already checked as batch 2" in error
    assert len(read_state(state).batches) == 3


def test_a_judge_that_got_worse_raises_the_alarm_with_exit_code_3(
    tmp_path: Path, judge_folder: Path, pandalm_rows, capsys
) -> None:
    import mlflow

    state = tmp_path / "monitor.json"
    codes = [run(judge_folder, f, state) for f in batches(tmp_path, pandalm_rows, count=8, swap_from=3)]
    saved = read_state(state)
    print(codes, [(round(b.agreement.value, 2), round(b.upper, 3)) for b in saved.batches], saved.level)
    assert codes[:2] == [0, 0] and codes[-1] == 3
    first = codes.index(3) + 1
    assert saved.alarm_batch == first and set(codes[first - 1 :]) == {3}
    assert saved.batches[first - 1].upper < saved.level <= saved.batches[first - 2].upper
    recorded = mlflow.MlflowClient().get_run(saved.run_id)
    assert recorded.data.tags["judgecal.monitor.alarm"] == f"since batch {first}"
    assert recorded.info.run_name == f"monitor: ALARM since batch {first}" and recorded.info.status == "FINISHED"
    assert "ALARM" in capsys.readouterr().err


def test_a_monitor_stopped_mid_batch_resumes_without_counting_it_twice(
    tmp_path: Path, judge_folder: Path, pandalm_rows, workspace: Workspace, monkeypatch
) -> None:
    """A crash after the batch's MLflow step was logged and before the state was written:
    checking the batch again counts it once."""
    state = tmp_path / "monitor.json"
    first, second = batches(tmp_path, pandalm_rows, count=2)
    loaded = open_judge(judge_folder, workspace=workspace)
    check_batch(loaded, first, state, workspace=workspace)
    logged = monitor.log_batch

    def log_then_crash(after):
        logged(after)
        raise KeyboardInterrupt("stopped")

    monkeypatch.setattr(monitor, "log_batch", log_then_crash)
    with pytest.raises(KeyboardInterrupt):
        check_batch(loaded, second, state, workspace=workspace)
    before = read_state(state)
    assert len(before.batches) == 1
    monkeypatch.setattr(monitor, "log_batch", logged)
    after = check_batch(loaded, second, state, workspace=workspace).state
    assert [b.index for b in after.batches] == [1, 2] and after.run_id == before.run_id
    groups = [len({r.group for r in load_rows(f, PAIRWISE.spec).rows}) for f in (first, second)]
    assert len(after.observations) == sum(groups)


def test_the_registered_version_is_tagged_with_the_last_check(
    tmp_path: Path, judge_folder: Path, pandalm_rows, workspace: Workspace
) -> None:
    import mlflow

    from judgecal.export.flavor import log_model
    from judgecal.pipeline.tracking import ensure_experiment

    ensure_experiment(workspace, "pandalm")
    with mlflow.start_run():
        uri = log_model(judge_folder).model_uri
    version = mlflow.register_model(uri, "pandalm-judge").version
    mlflow.MlflowClient().set_registered_model_alias("pandalm-judge", "champion", version)
    state = tmp_path / "monitor.json"
    assert run("models:/pandalm-judge@champion", batches(tmp_path, pandalm_rows, count=1)[0], state) == 0
    tags = mlflow.MlflowClient().get_model_version("pandalm-judge", str(version)).tags
    assert tags["judgecal.monitor.alarm"] == "none"
    assert (
        "1 batches" in tags["judgecal.monitor.last_check"]
        and read_state(state).run_id in tags["judgecal.monitor.last_check"]
    )


def test_a_logged_models_own_uri_has_no_registered_version_and_an_old_state_is_read_so(
    tmp_path: Path, judge_folder: Path, pandalm_rows, workspace: Workspace
) -> None:
    """``models:/m-<id>`` names a logged model, not a registered one: nothing to tag, and a
    state file that once recorded its id as a model name with version "" still resumes."""
    import mlflow

    from judgecal.export.flavor import log_model
    from judgecal.pipeline.tracking import ensure_experiment

    ensure_experiment(workspace, "pandalm")
    with mlflow.start_run():
        uri = log_model(judge_folder).model_uri
    assert uri.startswith("models:/m-")
    state = tmp_path / "monitor.json"
    first, second = batches(tmp_path, pandalm_rows, count=2)
    assert run(uri, first, state) == 0
    assert read_state(state).registered is None
    written = json.loads(state.read_text(encoding="utf-8"))
    state.write_text(json.dumps({**written, "registered": [uri.removeprefix("models:/"), ""]}), encoding="utf-8")
    assert read_state(state).registered is None
    assert run(uri, second, state) == 0


def test_a_selective_judge_reports_coverage_and_precision_and_an_old_bundle_no_shift(tmp_path: Path, capsys) -> None:
    data = write_jsonl(tmp_path / "batch.jsonl", [r.to_record() for r in recorded_rows(n_groups=10, seed=7).rows])
    state = tmp_path / "monitor.json"
    assert run(GOLDEN / "recorded-stacking-selective", data, state, "--threshold", "0.6") in (0, 3)
    out = capsys.readouterr()
    batch = read_state(state).batches[0]
    assert batch.coverage is not None and 0 < batch.coverage < 1
    assert batch.precision["false"] is not None and batch.answered == round(batch.coverage * batch.rows)
    assert "coverage" in out.out and "not checked" in out.err
    assert batch.shift is None
    # Its band never says 'true': κ on the rows it answers is 0 whatever they are, and it says so.
    assert batch.only_verdict == "false" and "κ – (its only verdict is 'false'" in " ".join(out.out.split())


def test_a_judge_without_a_reference_sample_says_so_on_the_first_batch_only(tmp_path: Path, capsys) -> None:
    from judgecal.export.reference import NO_REFERENCE

    state, said = tmp_path / "monitor.json", []
    for seed in (7, 8):
        rows = recorded_rows(n_groups=10, seed=seed).rows
        data = write_jsonl(tmp_path / f"batch{seed}.jsonl", [r.to_record() for r in rows])
        assert run(GOLDEN / "recorded-stacking-selective", data, state, "--threshold", "0.6") in (0, 3)
        said.append(" ".join(capsys.readouterr().err.split()))
    assert len(read_state(state).batches) == 2
    assert NO_REFERENCE in said[0] and NO_REFERENCE not in said[1]


def test_the_level_and_alpha_are_fixed_when_a_monitor_starts(tmp_path: Path, judge_folder: Path, pandalm_rows) -> None:
    state = tmp_path / "monitor.json"
    first, second = batches(tmp_path, pandalm_rows, count=2)
    assert run(judge_folder, first, state, "--threshold", "0.5") == 0
    assert run(judge_folder, second, state, "--threshold", "0.6") == 2
    assert run(judge_folder, second, state, "--alpha", "0.1") == 2
    assert run(judge_folder, second, state) == 0


def test_a_calibrated_judge_carries_its_test_rows_sketch_and_its_level(tmp_path: Path, workspace: Workspace) -> None:
    """A calibration's bundle holds a sketch of its test rows, and the monitor of its
    ``runs:/`` judge takes the low end of its test agreement interval as the level."""
    from judgecal.calibrate.optimizers import CalibrationConfig
    from judgecal.data.split import SplitSpec
    from judgecal.pipeline.calibration import run_calibration
    from judgecal.pipeline.config import ExperimentConfig, JudgeSection, ReportConfig

    data = write_jsonl(tmp_path / "rows.jsonl", [r.to_record() for r in recorded_rows(n_groups=20, per_group=10).rows])
    config = ExperimentConfig(
        judge=JudgeSection(name="sketched", task="relevance", data=data, recorded="strict"),
        split=SplitSpec(dev=0.2, test=0.3, seed=0),
        calibration=CalibrationConfig(strategy="verifier"),
        report=ReportConfig(n_resamples=200),
    )
    report = run_calibration(config, workspace=workspace, log=lambda _: None)
    loaded = open_judge(f"runs:/{report.tracked.run_id}/judge", workspace=workspace)
    sketch = loaded.bundle.reference
    assert sketch is not None and len(sketch["features"]) == len(report.split.test.rows)
    assert "prompt" not in json.dumps(sketch["features"]) and sketch["source"] == "test rows of the calibration"
    batch = write_jsonl(tmp_path / "batch.jsonl", [r.to_record() for r in recorded_rows(n_groups=6, seed=9).rows])
    outcome = check_batch(loaded, batch, tmp_path / "monitor.json", workspace=workspace)
    record = report.record
    verdicts = record.judges["calibrated"].verdicts
    shares = {}
    for verdict, human, group in zip(verdicts, record.human, record.groups, strict=True):
        shares.setdefault(group, []).append(verdict == human)
    share = loaded.bundle.evaluation["group_share"]
    assert share["value"] == pytest.approx(sum(sum(s) / len(s) for s in shares.values()) / len(shares))
    assert share["low"] < share["value"] and outcome.state.level == pytest.approx(share["low"])
    assert "mean over its test groups" in outcome.state.level_source
    assert outcome.batch.shift is not None


def test_a_selective_judges_level_leaves_out_the_target_of_a_verdict_its_band_never_gives() -> None:
    """The band never says 'true' (its target 0.70 held vacuously): the level is the 0.97
    of 'false', the verdict whose precision the observations measure."""
    from judgecal.export.bundle import read_bundle

    bundle = read_bundle(GOLDEN / "recorded-stacking-selective")
    targets = [
        {"verdict": "true", "target": 0.70, "precision": None, "status": "never given"},
        {"verdict": "false", "target": 0.97, "precision": None, "status": "held"},
    ]
    bundle = bundle.model_copy(update={"evaluation": {"selective": {"targets": targets}}})
    level, source = monitor.reference_level(bundle, None)
    assert level == 0.97 and "'false'" in source


@pytest.fixture(scope="module")
def two_verdict_judge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A selective stack over two recorded judges that says 'true' where both say true,
    'false' where both say false and abstains where they differ; its band guarantees 'true'
    0.7 and 'false' 0.9, and it answered 0.8 [0.7, 0.9] of its test rows."""
    from judgecal.export.bundle import read_bundle

    bundle = read_bundle(GOLDEN / "recorded-stacking-selective")
    state = json.loads(json.dumps(bundle.judge))
    state["base"]["head"] |= {"coef": [[-1.0, -1.0]], "intercept": [1.0]}  # P(true): 1.00, 0.27 or 0.00
    state["band"]["answers"] = [
        {"verdict": "true", "when": ">=", "threshold": 0.9, "of": "P(true)"},
        {"verdict": "false", "when": "<", "threshold": 0.1, "of": "P(true)"},
    ]
    state["guarantee"]["precision"] = {"true": 0.7, "false": 0.9}
    targets = [
        {"verdict": v, "target": t, "precision": None, "status": "held"} for v, t in (("true", 0.7), ("false", 0.9))
    ]
    evaluation = {"selective": {"coverage": {"value": 0.8, "low": 0.7, "high": 0.9}, "targets": targets}}
    folder = tmp_path_factory.mktemp("two-verdicts") / "judge"
    save_bundle(bundle.model_copy(update={"name": "two-verdicts", "judge": state, "evaluation": evaluation}), folder)
    return folder


def two_verdict_batch(path: Path, rng, true_right: float, *, groups: int = 20) -> Path:
    """Groups of 12 rows: 2 the judge says 'true' on (people agree with chance
    ``true_right``), 8 it says 'false' on (0.95), 2 it abstains on."""
    rows = []
    for g in range(groups):
        kinds = [(True, True, true_right)] * 2 + [(False, False, 0.95)] * 8 + [(True, False, 0.5)] * 2
        for i, (strict, loose, right) in enumerate(kinds):
            agrees = bool(rng.random() < right)
            rows.append(
                {
                    "id": f"{path.stem}-{g}-{i}",
                    "group": f"{path.stem}-{g}",
                    "prompt": f"Help me with topic {g} of {path.stem}.",
                    "attribute": f"The user cares about thing {i}.",
                    "label": strict if agrees else not strict,
                    "reference_judges": {"strict": strict, "loose": loose},
                }
            )
    return write_jsonl(path, rows)


def test_a_selective_judge_whose_rare_verdict_got_worse_raises_the_alarm_naming_it(
    tmp_path: Path, two_verdict_judge: Path, workspace: Workspace, capsys, monkeypatch, request
) -> None:
    """'true' is right 0.8 of the time for two batches, then 0.5 (its target 0.7), while
    'false', most answers, stays at 0.95: pooled agreement moves from about 0.92 to 0.86,
    far above its level 0.7, and today's pooled sequence alone never alarms; the sequence
    of 'true' does, and the alarm names it."""
    import mlflow

    from judgecal.stats.sequential import first_alarm

    monkeypatch.setattr(monitor, "BATCH_RESAMPLES", 100)  # each batch's own interval is not what is tested
    rng = np.random.default_rng(0)
    state = tmp_path / "monitor.json"
    files = [two_verdict_batch(tmp_path / f"b{b}.jsonl", rng, 0.8 if b <= 2 else 0.5) for b in range(1, 8)]
    loaded = open_judge(two_verdict_judge, workspace=workspace)
    for file in files[:-1]:
        check_batch(loaded, file, state, workspace=workspace, track=False)
    assert run(two_verdict_judge, files[-1], state) == 3
    saved = read_state(state)
    out = capsys.readouterr()
    # docs/planning-and-monitoring.md shows it: pytest -s -k rare_verdict
    if request.config.getoption("capture") == "no":
        with capsys.disabled():
            print(out.out + out.err)
    assert [q.name for q in saved.followed] == ["precision.true", "precision.false", "coverage"]
    assert saved.sequence_alpha == 0.05 / 4 and saved.level == 0.7
    assert saved.alarm_batch is not None and saved.alarm_batch > 2
    assert saved.fallen() == ["the precision of its 'true' verdicts"]
    assert "ALARM" in out.err and "'true'" in out.err and "'false'" not in out.err
    assert [round(b.precision["false"], 2) for b in saved.batches[2:]] == pytest.approx([0.95] * 5, abs=0.05)
    assert first_alarm(saved.observations, saved.level, alpha=saved.alpha) == 0  # pooled, as before: no alarm
    run_data = mlflow.MlflowClient().get_run(saved.run_id).data
    assert run_data.tags["judgecal.monitor.fallen"] == "the precision of its 'true' verdicts"
    assert mlflow.MlflowClient().get_run(saved.run_id).info.end_time is not None  # the UI shows its duration
    description = run_data.tags["mlflow.note.content"]
    assert description.startswith(
        f"**ALARM since batch {saved.alarm_batch}**: below its level: the precision of its 'true'"
    )
    assert ", or its coverage below" in description
    assert run_data.metrics["sequence.precision.true.upper"] < 0.7 <= run_data.metrics["sequence.coverage.upper"]


def test_a_state_written_before_verdicts_were_followed_resumes_as_it_started(tmp_path: Path, capsys) -> None:
    """``saved/monitor-state-v1-selective.json`` was written by ``check_batch`` before a
    selective judge's verdicts and coverage were followed (commit 9fca49a; the golden
    selective judge, ``--threshold 0.6``, ``recorded_rows(n_groups=10, seed=7)``, untracked).
    It resumes: the next batch is counted into its agreement sequence at its whole alpha,
    nothing else is followed (its alpha was spent on that sequence alone), and the user is
    told to start a new state file to follow each verdict."""
    from judgecal.pipeline.monitor import FOLLOWED_LATER

    state = tmp_path / "monitor.json"
    state.write_text((SAVED / "monitor-state-v1-selective.json").read_text(encoding="utf-8"), encoding="utf-8")
    rows = recorded_rows(n_groups=10, seed=8).rows
    data = write_jsonl(tmp_path / "batch8.jsonl", [r.to_record() for r in rows])
    assert run(GOLDEN / "recorded-stacking-selective", data, state) in (0, 3)
    resumed = read_state(state)
    assert resumed.schema_version == 1 and resumed.followed == [] and resumed.sequence_alpha == 0.05
    assert [b.index for b in resumed.batches] == [1, 2] and resumed.level == 0.6
    assert resumed.batches[1].sequences == {} and len(resumed.observations) == 20
    assert " ".join(FOLLOWED_LATER.split()) in " ".join(capsys.readouterr().err.split())


def test_coverage_is_followed_only_against_a_real_interval_from_the_test_rows() -> None:
    """A band that answered every test row has coverage 1.0 [1.0, 1.0] there: a level of
    1.0 would make any abstention an alarm sooner or later, so coverage is reported, not
    followed; with an interval its low end is the level."""
    from judgecal.export.bundle import read_bundle
    from judgecal.pipeline.selective_monitor import followed_quantities

    bundle = read_bundle(GOLDEN / "recorded-stacking-selective")
    followed = {}
    for value, low, high in ((1.0, 1.0, 1.0), (0.6, 0.45, 0.72)):
        evaluation = {"selective": {"coverage": {"value": value, "low": low, "high": high}}}
        quantities = followed_quantities(bundle.model_copy(update={"evaluation": evaluation}))
        followed[value] = {q.name: q.level for q in quantities}
    assert followed == {1.0: {"precision.false": 0.95}, 0.6: {"precision.false": 0.95, "coverage": 0.45}}


def test_a_band_that_gives_one_verdict_follows_its_precision_once_as_the_agreement_of_the_rows_answered(
    workspace: Workspace,
) -> None:
    """The band says only 'false': its precision is the agreement of the rows answered,
    observation for observation, at the same level, so it is not a second sequence taking
    a share of alpha; against another level (--threshold) it is one."""
    loaded = open_judge(GOLDEN / "recorded-stacking-selective", workspace=workspace)
    alone = monitor.new_state(loaded, None, 0.05)
    assert alone.level == 0.95 and alone.followed == [] and alone.sequence_alpha == 0.05
    other_level = monitor.new_state(loaded, 0.6, 0.05)
    assert [q.name for q in other_level.followed] == ["precision.false"] and other_level.sequence_alpha == 0.025

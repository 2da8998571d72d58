"""Reports: intervals, paired comparisons in words, the human ceiling, biases, the card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from judgecal.cli import main
from judgecal.data.rows import load_rows
from judgecal.report.agreement import evaluate_record
from judgecal.report.card import CARD_FILE, write_card
from judgecal.report.records import EvaluationRecord, JudgeRecord, build_record, read_record
from judgecal.tasks.registry import resolve_task
from tests.conftest import PANDALM_DEV, RELEVANCE_DEV, needs


def synthetic_record(candidate_skill: float, baseline_skill: float = 0.6, seed: int = 0) -> EvaluationRecord:
    rng = np.random.default_rng(seed)
    n_groups, per_group = 24, 15
    groups = [f"g{g}" for g in range(n_groups) for _ in range(per_group)]
    human = list(rng.uniform(size=len(groups)) < 0.3)

    def judge(skill: float) -> list[bool]:
        right = rng.uniform(size=len(groups)) < skill
        return [bool(h) if r else not h for h, r in zip(human, right, strict=True)]

    raw = judge(baseline_skill)
    calibrated = judge(candidate_skill)
    return EvaluationRecord(
        judge_name="synthetic",
        task="relevance",
        labels=[True, False],
        positive=True,
        ids=[f"r{i}" for i in range(len(groups))],
        groups=groups,
        human=[bool(h) for h in human],
        judges={
            "raw": JudgeRecord(verdicts=raw, probability=[0.8 if v else 0.3 for v in raw]),
            "calibrated": JudgeRecord(verdicts=calibrated, probability=[0.7 if v else 0.2 for v in calibrated]),
        },
    )


@pytest.mark.parametrize(
    ("skill", "outcome", "words"),
    [
        (0.95, "improved", "improved agreement with humans"),
        (0.20, "worse", "made agreement with humans worse"),
    ],
)
def test_comparison_says_in_words_whether_the_interval_clears_zero(skill: float, outcome: str, words: str) -> None:
    report = evaluate_record(synthetic_record(skill), n_resamples=500)
    comparison = report.comparison
    assert comparison is not None
    assert comparison.outcome == outcome
    assert words in comparison.statement
    delta = comparison.deltas["kappa"]
    assert (delta.low > 0) if outcome == "improved" else (delta.high < 0)
    assert comparison.mcnemar is not None


def test_same_judge_twice_is_inconclusive() -> None:
    record = synthetic_record(0.6)
    record.judges["calibrated"] = record.judges["raw"]
    comparison = evaluate_record(record, n_resamples=300).comparison
    assert comparison is not None and comparison.outcome == "inconclusive"
    assert "includes 0" in comparison.statement
    assert comparison.deltas["kappa"].value == 0.0


def test_an_inconclusive_interval_beside_a_small_mcnemar_p_value_says_which_speaks_for_new_groups() -> None:
    """'No' to every row is right on the 70% of rows people say no to, far more often than a
    raw judge right half the time, yet both have κ 0: McNemar's p is tiny while Δκ's interval
    spans 0, and the statement says why they differ instead of leaving two verdicts."""
    record = synthetic_record(0.5, baseline_skill=0.5)
    record.judges["calibrated"] = JudgeRecord(verdicts=[False] * len(record.ids), probability=[0.1] * len(record.ids))
    comparison = evaluate_record(record, n_resamples=300).comparison
    assert comparison is not None and comparison.outcome == "inconclusive"
    assert comparison.mcnemar is not None and comparison.mcnemar.p_value < 0.05
    assert "counts rows as independent" in comparison.statement
    same = synthetic_record(0.6)
    same.judges["calibrated"] = same.judges["raw"]
    assert "counts rows as independent" not in evaluate_record(same, n_resamples=300).comparison.statement


def test_every_metric_has_an_interval_around_its_estimate() -> None:
    report = evaluate_record(synthetic_record(0.8), n_resamples=300)
    for score in report.judges:
        for name, estimate in score.metrics.items():
            assert estimate.low <= estimate.value + 1e-9 and estimate.value <= estimate.high + 1e-9, name
        assert {"brier", "ece", "roc_auc"} <= set(score.confidence_metrics)
    assert [b.name for b in report.judge("raw").bias] == ["selected_rate", "selected_ratio"]


def test_card_has_its_tables_and_plots(tmp_path: Path) -> None:
    import matplotlib.image

    record = synthetic_record(0.9)
    report = evaluate_record(record, n_resamples=300)
    card = write_card(report, record, tmp_path / "card")
    text = card.read_text()
    assert card.name == CARD_FILE
    assert report.comparison is not None and report.comparison.statement in text
    assert "| kappa |" in text and "## Confidence" in text and "## Biases" in text
    for image in ("confusion_matrices.png", "reliability.png", "per_group_agreement.png", "metric_intervals.png"):
        assert f"]({image})" in text
        pixels = matplotlib.image.imread(tmp_path / "card" / image)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 300


def test_report_command_rebuilds_the_card_from_a_saved_record(tmp_path: Path) -> None:
    record = synthetic_record(0.9)
    (tmp_path / "evaluation.json").write_text(record.model_dump_json())
    assert main(["report", str(tmp_path), "--resamples", "200", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / CARD_FILE).exists()


def pair_record(*, pairwise: bool) -> EvaluationRecord:
    human = ["A", "B", "tie", "A", "B", "A"] * 4
    verdicts = ["A", "A", "tie", "A", "B", "A"] * 4
    return EvaluationRecord(
        judge_name="pairs",
        task="pairwise",
        labels=["A", "B", "tie"],
        pairwise=pairwise,
        ids=[f"p{i}" for i in range(len(human))],
        groups=[f"g{i % 6}" for i in range(len(human))],
        human=human,
        judges={"raw": JudgeRecord(verdicts=verdicts)},
    )


def test_position_measures_follow_the_records_pairwise_flag_not_its_labels() -> None:
    pairs = evaluate_record(pair_record(pairwise=True), n_resamples=100).judge("raw")
    assert pairs.metrics["first_position_rate"].value == pytest.approx(4 / 6)
    assert "first_position_rate" in {b.name for b in pairs.bias}
    letters = evaluate_record(pair_record(pairwise=False), n_resamples=100).judge("raw")
    assert "first_position_rate" not in letters.metrics and letters.bias == []


def test_a_record_saved_before_it_said_whether_it_is_pairwise_reads_as_it_was_reported(tmp_path: Path) -> None:
    for record, pairwise in ((pair_record(pairwise=True), True), (synthetic_record(0.8), False)):
        earlier = record.model_dump(mode="json", exclude={"pairwise"}) | {"schema_version": 1}
        (tmp_path / "evaluation.json").write_text(json.dumps(earlier))
        read = read_record(tmp_path)
        assert read.pairwise is pairwise and read.schema_version == 2


def test_a_record_built_for_a_task_says_whether_it_is_pairwise() -> None:
    from tests.helpers import pair_rows, recorded_rows

    pairs = resolve_task("pairwise")
    assert build_record("p", "pairwise", pairs.spec, pair_rows().rows, {}).pairwise
    relevance = resolve_task("relevance")
    assert not build_record("r", "relevance", relevance.spec, recorded_rows().rows, {}).pairwise


def test_foreign_json_is_not_read_as_a_record(tmp_path: Path) -> None:
    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="not an evaluation record"):
        read_record(path)


@needs(RELEVANCE_DEV)
def test_reference_judges_on_shared_relevance_data_are_reproduced_with_intervals() -> None:
    task = resolve_task("relevance")
    dataset = load_rows(RELEVANCE_DEV, task.spec)
    record = build_record("relevance", "relevance", task.spec, dataset.rows, {})
    report = evaluate_record(record, n_resamples=1000)
    gpt = report.judge("reference:gpt-5.4").metrics["kappa"]
    gemma = report.judge("reference:gemma-4-31b-it").metrics["kappa"]
    assert gpt.value == pytest.approx(0.280, abs=0.0015)
    assert gemma.value == pytest.approx(0.315, abs=0.0015)
    for estimate in (gpt, gemma):
        assert 0 < estimate.low < estimate.value < estimate.high < 0.5
    selected = report.judge("reference:gpt-5.4").metrics["selected_ratio"]
    assert selected.value > 2.0  # the paper's over-selection: 2-3x the human rate


@needs(PANDALM_DEV)
def test_pandalm_human_ceiling_from_three_annotators_is_in_the_card(tmp_path: Path) -> None:
    task = resolve_task("pairwise")
    dataset = load_rows(PANDALM_DEV, task.spec)
    record = build_record("pandalm", "pairwise", task.spec, dataset.rows, {})
    report = evaluate_record(record, n_resamples=300)
    ceiling = report.ceiling
    assert ceiling is not None and ceiling.rows == 999 and ceiling.annotators_per_row == 3.0
    assert 0.5 < ceiling.alpha.value < 1.0
    assert ceiling.fleiss_kappa is not None and abs(ceiling.fleiss_kappa - ceiling.alpha.value) < 0.01
    gpt = report.judge("reference:gpt-3.5-turbo")
    assert gpt.rows == 936
    assert gpt.metrics["agreement"].value == pytest.approx(0.739, abs=0.001)
    assert gpt.fraction_of_ceiling is not None and 0 < gpt.fraction_of_ceiling.value < 1
    text = write_card(report, record, tmp_path).read_text()
    assert "## Human ceiling" in text and "Krippendorff's α" in text


def test_soft_labels_give_a_soft_agreement(tmp_path: Path) -> None:
    from judgecal.data.rows import LabeledRow

    task = resolve_task("relevance")
    rows = [
        LabeledRow(
            id=f"r{i}",
            group=f"g{i % 3}",
            inputs={"prompt": "p", "attribute": "a"},
            label=share > 0.5,
            meta={"human_yes_rate": share},
        )
        for i, share in enumerate([0.75, 0.25, 1.0, 0.0, 0.5, 0.25])
    ]
    verdicts = [True, True, True, False, False, False]
    record = build_record("soft", "relevance", task.spec, rows, {"raw": JudgeRecord(verdicts=verdicts)})
    assert record.soft_labels == [0.75, 0.25, 1.0, 0.0, 0.5, 0.25]
    report = evaluate_record(record, baseline=None, candidate=None, n_resamples=100)
    expected = np.mean([0.75, 0.25, 1.0, 1.0, 0.5, 0.75])
    assert report.judge("raw").soft_agreement == pytest.approx(expected)
    assert "## Agreement with soft labels" in write_card(report, record, tmp_path).read_text()


def test_report_computes_ece_at_the_cut_a_thresholded_judge_decided_at() -> None:
    from judgecal.stats.metrics import expected_calibration_error

    human = [True, True, False, False] * 6
    probability = [0.69, 0.39, 0.14, 0.72] * 6
    record = EvaluationRecord(
        judge_name="cut",
        task="relevance",
        labels=[True, False],
        positive=True,
        ids=[f"r{i}" for i in range(24)],
        groups=[f"g{i % 6}" for i in range(24)],
        human=human,
        judges={"calibrated": JudgeRecord(verdicts=[p >= 0.25 for p in probability], probability=probability)},
    )
    ece = evaluate_record(record, n_resamples=100).judge("calibrated").confidence_metrics["ece"].value
    p, y = np.array(probability), np.array(human)
    at_cut, at_half = p >= 0.25, p >= 0.5
    assert ece == pytest.approx(expected_calibration_error(np.where(at_cut, p, 1 - p), at_cut == y))
    assert ece != pytest.approx(expected_calibration_error(np.where(at_half, p, 1 - p), at_half == y))


def test_rows_a_judge_abstained_on_are_left_out_of_its_measures_not_counted_invalid() -> None:
    """The record says which rows the calibrated judge abstained on (judge_record reads
    Verdict.abstained); the report scores it on the rows it answered, as on a record
    holding only those rows, and its invalid rate stays that of its failures."""
    from judgecal.judges.program import score_verdicts
    from judgecal.pipeline.calibration import judge_record
    from judgecal.pipeline.results import SideResult
    from tests.helpers import RELEVANCE, AbstainingJudge, recorded_rows

    rows = list(recorded_rows().rows)
    verdicts = AbstainingJudge().predict(rows)
    side = SideResult(verdicts, None, score_verdicts(RELEVANCE, rows, verdicts), 0.0)
    record = build_record(
        "abstaining", "relevance", RELEVANCE.spec, rows, {"calibrated": judge_record(RELEVANCE, side)}
    )
    assert record.judges["calibrated"].abstained == [v.abstained for v in verdicts]
    score = evaluate_record(record, n_resamples=200).judge("calibrated")
    answered = [i for i, v in enumerate(verdicts) if not v.abstained]
    assert score.rows == len(answered) < len(rows)
    assert score.metrics["invalid_rate"].value == 0.0
    only_answered = build_record(
        "abstaining",
        "relevance",
        RELEVANCE.spec,
        [rows[i] for i in answered],
        {"calibrated": JudgeRecord(verdicts=[verdicts[i].label for i in answered])},
    )
    expected = evaluate_record(only_answered, n_resamples=200).judge("calibrated")
    assert score.metrics["kappa"].value == pytest.approx(expected.metrics["kappa"].value)

"""Corrected estimates: PPI++ covers the human rate where the judge alone does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from judgecal.cli import main
from judgecal.data.rows import DataError
from judgecal.stats.estimate import corrected_rate, estimate_from_files, simulate_coverage
from judgecal.tasks.registry import resolve_task
from tests.conftest import write_jsonl


def test_ppi_interval_has_nominal_coverage_where_the_judge_alone_does_not() -> None:
    """300 simulated sets: 200 human labels, 3,000 judged rows, true rate 0.2, a judge that
    over-selects (yes on 80% of positives and 35% of negatives, so its own rate is 0.44).
    With 300 draws the coverage of a 95% interval is within ±0.03 of 0.95 about 95% of
    the time; the test allows 0.91-0.99."""
    coverage = simulate_coverage(
        simulations=300, n_labelled=200, n_unlabelled=3000, true_rate=0.2, hit=0.8, false_alarm=0.35, seed=7
    )
    print(
        "coverage of 95% intervals, 300 sets: " + ", ".join(f"{name} {value:.1%}" for name, value in coverage.items())
    )
    assert 0.91 <= coverage["prediction_powered"] <= 0.99
    assert 0.91 <= coverage["human_only"] <= 0.99
    assert coverage["judge_only"] < 0.05


def test_ppi_is_narrower_than_human_labels_alone_with_an_informative_judge() -> None:
    rng = np.random.default_rng(0)
    y = rng.uniform(size=5200) < 0.3
    judge = np.where(y, rng.uniform(size=y.size) < 0.9, rng.uniform(size=y.size) < 0.1).astype(float)
    result = corrected_rate(y[:200].astype(float), judge[:200], judge[200:], target="true")
    assert result.prediction_powered.width < result.human_only.width
    assert 0 < result.weight <= 1


def test_estimate_command_joins_verdicts_and_labels_by_id(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(1)
    truth = rng.uniform(size=600) < 0.25
    said = np.where(truth, rng.uniform(size=600) < 0.85, rng.uniform(size=600) < 0.4)
    verdicts = write_jsonl(
        tmp_path / "verdicts.jsonl",
        [{"id": f"r{i}", "verdict": bool(v), "probability": 0.8 if v else 0.3} for i, v in enumerate(said)],
    )
    labels = write_jsonl(
        tmp_path / "labels.jsonl",
        [
            {"id": f"r{i}", "group": f"g{i % 9}", "prompt": "p", "attribute": "a", "label": bool(truth[i])}
            for i in range(120)
        ],
    )
    result = estimate_from_files(resolve_task("relevance").spec, verdicts, labels)
    assert result.human_only.rows == 120 and result.judge_only.rows == 480
    assert result.judge_signal == "probability"
    assert main(["estimate", "--task", "relevance", "--verdicts", str(verdicts), "--labels", str(labels)]) == 0
    assert "prediction-powered" in capsys.readouterr().out


def test_labelled_rows_without_a_verdict_are_refused(tmp_path: Path) -> None:
    verdicts = write_jsonl(tmp_path / "verdicts.jsonl", [{"id": "a", "verdict": True}, {"id": "b", "verdict": False}])
    labels = write_jsonl(
        tmp_path / "labels.jsonl", [{"id": "c", "group": "g", "prompt": "p", "attribute": "x", "label": True}]
    )
    with pytest.raises(Exception, match="have no judge verdict"):
        estimate_from_files(resolve_task("relevance").spec, verdicts, labels)


def _selective_verdicts(tmp_path: Path, abstain: bool) -> tuple[Path, Path]:
    """600 judged rows, 120 of them labelled; with ``abstain`` the judge abstains where
    0.3 <= P(true) < 0.6, as a selective judge does, instead of giving its verdict."""
    rng = np.random.default_rng(2)
    truth = rng.uniform(size=600) < 0.25
    probability = np.clip(np.where(truth, 0.7, 0.3) + rng.normal(scale=0.2, size=600), 0, 1)
    lines = []
    for i, p in enumerate(probability):
        if abstain and 0.3 <= p < 0.6:
            lines.append({"id": f"r{i}", "verdict": None, "abstained": True, "probability": float(p)})
        else:
            lines.append({"id": f"r{i}", "verdict": bool(p >= 0.5), "probability": float(p)})
    verdicts = write_jsonl(tmp_path / f"verdicts-{abstain}.jsonl", lines)
    labels = write_jsonl(
        tmp_path / "labels.jsonl",
        [
            {"id": f"r{i}", "group": f"g{i % 9}", "prompt": "p", "attribute": "a", "label": bool(truth[i])}
            for i in range(120)
        ],
    )
    return verdicts, labels


def test_a_selective_judges_abstentions_count_through_their_probability(tmp_path: Path) -> None:
    """The signal is P(true) on every row, so abstaining changes nothing in the estimate."""
    spec = resolve_task("relevance").spec
    selective, labels = _selective_verdicts(tmp_path, abstain=True)
    plain, _ = _selective_verdicts(tmp_path, abstain=False)
    assert '"abstained": true' in selective.read_text()
    result = estimate_from_files(spec, selective, labels)
    assert result.judge_signal == "probability"
    assert result == estimate_from_files(spec, plain, labels)


def test_abstentions_without_the_probability_are_refused_naming_the_line(tmp_path: Path) -> None:
    selective, labels = _selective_verdicts(tmp_path, abstain=True)
    first = next(i for i, line in enumerate(selective.read_text().splitlines(), start=1) if "abstained" in line)
    with pytest.raises(DataError, match=rf"{selective.name}:{first}: field 'verdict': the judge abstained on this row"):
        estimate_from_files(resolve_task("relevance").spec, selective, labels, use_probability=False)

"""An abstention is an answer: kept like a verdict, counted apart from failures."""

from __future__ import annotations

import pytest

from judgecal.judges.fitted import MemoJudge
from judgecal.judges.program import score_verdicts
from judgecal.judges.verdict import Verdict
from judgecal.stats.metrics import LabelSpace, label_metrics
from tests.helpers import RELEVANCE, AbstainingJudge, recorded_rows


class CountingJudge(AbstainingJudge):
    """The abstaining judge, counting the rows it is asked about."""

    def predict(self, rows, *, progress=None, description=""):
        self.__dict__.setdefault("asked", []).extend(row.id for row in rows)
        return super().predict(rows)


def test_a_memo_keeps_abstentions_and_asks_its_judge_once_per_row() -> None:
    rows = list(recorded_rows().rows[:40])
    base = CountingJudge()
    memo = MemoJudge(base)
    first = memo.predict(rows)
    assert any(v.abstained for v in first) and any(v.label is not None for v in first)
    again = memo.predict(rows)
    assert again == first
    assert base.asked == [row.id for row in rows]


def test_abstentions_are_not_counted_as_invalid_verdicts() -> None:
    rows = list(recorded_rows().rows)
    verdicts = AbstainingJudge().predict(rows)
    abstained = [v.abstained for v in verdicts]
    metrics = score_verdicts(RELEVANCE, rows, verdicts)
    assert metrics["invalid_rate"] == 0.0
    assert metrics["abstention_rate"] == pytest.approx(sum(abstained) / len(rows))
    space = LabelSpace(labels=RELEVANCE.spec.labels, positive=True)
    answered = [i for i, a in enumerate(abstained) if not a]
    expected = label_metrics(space, [rows[i].label for i in answered], [verdicts[i].label for i in answered])
    assert metrics["kappa"] == pytest.approx(expected["kappa"])
    failed = [Verdict(label=None, error="no answer") if a else v for v, a in zip(verdicts, abstained, strict=True)]
    assert score_verdicts(RELEVANCE, rows, failed)["invalid_rate"] == pytest.approx(sum(abstained) / len(rows))
    assert "abstention_rate" not in score_verdicts(RELEVANCE, rows, failed)


def test_a_verdicts_file_read_back_gives_its_abstentions_as_abstentions(tmp_path) -> None:
    """Calibrating from a verdicts file a selective judge wrote: its abstained lines are
    abstentions with their probability, a row it has no line for is still an error."""
    from judgecal.data.rows import load_verdicts
    from judgecal.judges.fitted import RecordedJudge
    from tests.conftest import write_jsonl

    rows = list(recorded_rows().rows[:3])
    lines = [
        {"id": rows[0].id, "verdict": True, "abstained": False, "probability": 0.8},
        {"id": rows[1].id, "verdict": None, "abstained": True, "probability": 0.4},
    ]
    verdicts = load_verdicts(write_jsonl(tmp_path / "verdicts.jsonl", lines), RELEVANCE.spec)
    first, second, third = RecordedJudge(RELEVANCE, "verdicts.jsonl", "file", verdicts).predict(rows)
    assert first.label is True and not first.abstained
    assert second == Verdict(label=None, abstained=True, probabilities={"true": 0.4, "false": 0.6})
    assert third.label is None and not third.abstained and "no recorded verdict" in (third.error or "")

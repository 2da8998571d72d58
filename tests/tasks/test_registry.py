"""Tasks: a signature and the shape of its rows, resolved by name or reference, and
rebuilt from a plain-JSON description without importing anything."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import pytest

from judgecal.tasks.registry import (
    UntrustedTaskError,
    resolve_task,
    signature_from_spec,
    signature_spec,
    task_from_spec,
)

RATING = '''
from typing import Literal

import dspy


class RateHelpfulness(dspy.Signature):
    """Rate how helpful the answer is."""

    question: str = dspy.InputField()
    answer: str = dspy.InputField()
    rating: Literal[5, 1, 3, 2, 4] = dspy.OutputField()


class TwoDecisions(dspy.Signature):
    """Not a judge: two outputs."""

    question: str = dspy.InputField()
    first: bool = dspy.OutputField()
    second: bool = dspy.OutputField()
'''


def test_built_in_tasks_read_their_rows_shape_off_the_signature() -> None:
    relevance = resolve_task("relevance")
    assert relevance.spec.input_names == ("prompt", "attribute")
    assert relevance.decision_field == "relevant"
    assert relevance.spec.labels == (True, False) and relevance.spec.positive is True
    pairwise = resolve_task("pairwise").spec
    assert pairwise.labels == ("A", "B", "tie") and pairwise.positive is None


def test_a_task_is_pairwise_when_it_compares_response_a_with_response_b_by_labels_a_and_b() -> None:
    import dspy

    from judgecal.tasks.spec import TaskSpec

    class AIsBetter(dspy.Signature):
        """Is response A better?"""

        response_a: str = dspy.InputField()
        response_b: str = dspy.InputField()
        a_is_better: bool = dspy.OutputField()

    class Letter(dspy.Signature):
        """Which letter fits?"""

        question: str = dspy.InputField()
        letter: Literal["A", "B", "C"] = dspy.OutputField()

    assert resolve_task("pairwise").spec.is_pairwise
    assert not resolve_task("relevance").spec.is_pairwise
    assert not TaskSpec.from_signature("a", AIsBetter).is_pairwise  # swapping the responses flips no label
    assert not TaskSpec.from_signature("l", Letter).is_pairwise  # no responses to swap
    assert resolve_task("relevance").spec.negative is False and resolve_task("pairwise").spec.negative is None


def test_labels_are_read_as_people_write_them() -> None:
    relevance, pairwise = resolve_task("relevance").spec, resolve_task("pairwise").spec
    assert [relevance.parse_label(v) for v in ("yes", "No", 1, 0, "relevant")] == [True, False, True, False, True]
    assert [pairwise.parse_label(v) for v in ("a", " B ", "Tie")] == ["A", "B", "tie"]
    with pytest.raises(ValueError, match=r"expected one of 'A', 'B', 'tie', got 'C'"):
        pairwise.parse_label("C")


def test_a_file_reference_resolves_a_rating_task_with_its_labels_in_order(tmp_path: Path) -> None:
    (tmp_path / "judges.py").write_text(RATING)
    task = resolve_task(f"{tmp_path / 'judges.py'}:RateHelpfulness")
    assert task.name == "RateHelpfulness"
    assert task.spec.labels == (1, 2, 3, 4, 5) and task.spec.is_ordinal
    assert task.spec.parse_label("4") == 4


def test_a_signature_that_is_not_a_judge_or_not_there_is_refused(tmp_path: Path) -> None:
    (tmp_path / "judges.py").write_text(RATING)
    with pytest.raises(TypeError, match="exactly one output field"):
        resolve_task(f"{tmp_path / 'judges.py'}:TwoDecisions")
    with pytest.raises(ImportError, match="no attribute 'Missing'"):
        resolve_task(f"{tmp_path / 'judges.py'}:Missing")
    with pytest.raises(ValueError, match="unknown task 'sentiment'"):
        resolve_task("sentiment")


def test_a_module_not_on_the_import_path_is_refused_saying_how_to_make_it_importable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "local_judges.py").write_text(RATING)
    monkeypatch.chdir(tmp_path)  # the judgecal command does not import from the working directory
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry not in ("", ".", str(tmp_path))])
    with pytest.raises(ImportError) as refused:
        resolve_task("local_judges:RateHelpfulness")
    message = str(refused.value)
    assert "task 'local_judges:RateHelpfulness'" in message and "PYTHONPATH" in message and "pip install -e" in message


def test_a_task_rebuilt_from_its_description_has_the_same_rows_and_labels(tmp_path: Path) -> None:
    (tmp_path / "judges.py").write_text(RATING)
    reference = f"{tmp_path / 'judges.py'}:RateHelpfulness"
    original = resolve_task(reference)
    rebuilt = task_from_spec(reference, signature_spec(original.signature))
    assert rebuilt.spec.input_names == original.spec.input_names
    assert rebuilt.spec.labels == original.spec.labels
    assert rebuilt.signature.instructions == "Rate how helpful the answer is."
    assert signature_from_spec(signature_spec(rebuilt.signature)).instructions == rebuilt.signature.instructions


def test_a_custom_task_without_a_description_is_refused_without_importing_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    with pytest.raises(UntrustedTaskError, match="never imports the code it names"):
        task_from_spec(f"{tmp_path / 'evil.py'}:Evil", None)
    assert not marker.exists()
    assert task_from_spec("relevance", None).spec.labels == (True, False)

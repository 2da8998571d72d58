"""Judge bundles: plain JSON that rebuilds the same judge, and refuses what it cannot read."""

from __future__ import annotations

import json
from pathlib import Path

import dspy
import pytest

from judgecal.export import BUNDLE_FILE, bundle_from_judge, load_judge, read_bundle, save_bundle
from judgecal.judges import JudgeProgram
from judgecal.lm import LMConfig
from judgecal.strategies import ProgramJudge
from judgecal.tasks import resolve_task


def calibrated_judge(lm=None) -> ProgramJudge:
    task = resolve_task("relevance")
    judge = ProgramJudge(task, JudgeProgram(task.signature), lm, "relevance-test")
    judge.program.predict.demos = [
        dspy.Example(prompt="Plan a picnic.", attribute="The user is vegan.", relevant=True, row_id="t1"),
        dspy.Example(prompt="Fix my CSS.", attribute="The user is vegan.", relevant=False, row_id="t2"),
    ]
    judge.program.predict.signature = judge.program.predict.signature.with_instructions("Tuned instructions.")
    return judge


def test_bundle_round_trips_instructions_demos_and_settings(tmp_path: Path) -> None:
    judge = calibrated_judge()
    bundle = bundle_from_judge(judge, LMConfig(max_tokens=16), metrics={"test.kappa": 0.3}, data_fingerprint="abc")
    path = save_bundle(bundle, tmp_path / "judge")
    document = json.loads(path.read_text())
    assert document["format"] == "judgecal.judge"
    assert document["lm"]["max_tokens"] == 16
    assert "api_key" not in json.dumps(document)
    loaded = load_judge(tmp_path / "judge", lm=object())
    assert loaded.program.predict.signature.instructions == "Tuned instructions."
    assert [dict(d) for d in loaded.program.predict.demos] == [d.toDict() for d in judge.program.predict.demos]
    assert read_bundle(path).metrics == {"test.kappa": 0.3}


def test_loaded_bundle_gives_the_same_verdicts(tmp_path: Path, embedded_lm) -> None:
    judge = calibrated_judge(embedded_lm)
    save_bundle(bundle_from_judge(judge, LMConfig(max_tokens=48)), tmp_path / "judge")
    loaded = load_judge(tmp_path / "judge", lm=embedded_lm)
    inputs = {"prompt": "Suggest a dinner recipe.", "attribute": "The user is vegan."}
    assert loaded(**inputs) == judge(**inputs)


def test_newer_bundle_schema_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = save_bundle(bundle_from_judge(calibrated_judge(), LMConfig()), tmp_path / "judge")
    document = json.loads(path.read_text())
    document["schema_version"] = 99
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="schema version 99 is newer than this judgecal reads"):
        read_bundle(path)


def test_pickled_or_foreign_files_are_refused(tmp_path: Path) -> None:
    import pickle

    folder = tmp_path / "judge"
    folder.mkdir()
    (folder / BUNDLE_FILE).write_bytes(pickle.dumps({"format": "judgecal.judge"}))
    with pytest.raises(ValueError, match="not a judge bundle"):
        read_bundle(folder)
    (folder / BUNDLE_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a judge bundle"):
        read_bundle(folder)


def test_custom_signature_bundle_loads_without_its_module(tmp_path: Path) -> None:
    from judgecal.tasks import resolve_task as resolve

    module = tmp_path / "my_judges.py"
    module.write_text(
        "import dspy\nfrom typing import Literal\n\n"
        "class JudgeTone(dspy.Signature):\n"
        '    """Is the reply polite?"""\n'
        "    reply: str = dspy.InputField(desc='A reply.')\n"
        "    tone: Literal['polite', 'rude'] = dspy.OutputField(desc='polite or rude')\n"
    )
    task = resolve(f"{module}:JudgeTone")
    judge = ProgramJudge(task, JudgeProgram(task.signature), None, "tone")
    save_bundle(bundle_from_judge(judge, LMConfig()), tmp_path / "bundle")
    module.unlink()  # the bundle must not need (or run) the author's code
    loaded = load_judge(tmp_path / "bundle", lm=object())
    assert loaded.task.spec.labels == ("polite", "rude")
    assert loaded.task.spec.input_names == ("reply",)
    assert loaded.program.predict.signature.instructions == "Is the reply polite?"


def test_lm_state_smuggled_into_a_bundle_is_not_loaded(tmp_path: Path) -> None:
    path = save_bundle(bundle_from_judge(calibrated_judge(), LMConfig()), tmp_path / "judge")
    document = json.loads(path.read_text())
    document["judge"]["program"]["predict"]["lm"] = {
        "model": "x",
        "engine": {"class": "os:system", "state": {}},
    }
    path.write_text(json.dumps(document))
    loaded = load_judge(tmp_path / "judge", lm=object())
    assert loaded.program.predict.lm is None


def test_bundle_without_a_valid_schema_version_is_refused(tmp_path: Path) -> None:
    path = save_bundle(bundle_from_judge(calibrated_judge(), LMConfig()), tmp_path / "judge")
    document = json.loads(path.read_text())
    document["schema_version"] = 0
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="not a judge bundle"):
        read_bundle(path)

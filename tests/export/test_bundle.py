"""Judge bundles: plain JSON that rebuilds the same judge, and refuses what it cannot read."""

from __future__ import annotations

import json
from pathlib import Path

import dspy
import pytest

from judgecal.backends.settings import LMConfig
from judgecal.export.bundle import BUNDLE_FILE, bundle_from_judge, read_bundle, save_bundle
from judgecal.export.flavor import load_judge
from judgecal.judges.fitted import ProgramJudge
from judgecal.judges.program import JudgeProgram
from judgecal.tasks.registry import resolve_task


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
    loaded = load_judge(tmp_path / "judge", lm=object())
    assert loaded.program.predict.signature.instructions == "Tuned instructions."
    assert [dict(d) for d in loaded.program.predict.demos] == [d.toDict() for d in judge.program.predict.demos]
    assert read_bundle(path).metrics == {"test.kappa": 0.3}


@pytest.mark.slow
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


def test_a_judge_of_a_kind_this_version_does_not_know_is_refused_naming_file_field_and_kinds(tmp_path: Path) -> None:
    from judgecal.calibrate.posthoc import ThresholdJudge

    threshold = ThresholdJudge(base=calibrated_judge())
    threshold.base_, threshold.threshold_ = threshold.base, 0.5
    bundle = bundle_from_judge(threshold, LMConfig())
    bundle.judge["base"]["kind"] = "conformal"  # a kind a later version might save
    path = save_bundle(bundle, tmp_path / "judge")
    with pytest.raises(ValueError) as error:
        load_judge(tmp_path / "judge", lm=object())
    message = str(error.value)
    assert message.startswith(f"{path}: field 'judge': unknown judge state kind 'conformal'; this judgecal rebuilds")
    assert "'threshold', 'order_swap'" in message and "upgrade judgecal" in message and "\n" not in message


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
    from judgecal.tasks.registry import resolve_task as resolve

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
    with pytest.warns(UserWarning, match="modified after it was saved"):
        loaded = load_judge(tmp_path / "judge", lm=object(), allow_modified=True)
    assert loaded.program.predict.lm is None


def test_bundle_without_a_valid_schema_version_is_refused(tmp_path: Path) -> None:
    path = save_bundle(bundle_from_judge(calibrated_judge(), LMConfig()), tmp_path / "judge")
    document = json.loads(path.read_text())
    document["schema_version"] = 0
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="not a judge bundle"):
        read_bundle(path)


# -- loading never runs code named by the bundle ----------------------------------------


def test_a_bundle_naming_code_without_its_signature_is_refused_and_the_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.py"
    evil.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('code ran')\n")
    path = save_bundle(bundle_from_judge(calibrated_judge(), LMConfig()), tmp_path / "judge")
    document = json.loads(path.read_text())
    document.update(task=f"{evil}:Evil", signature=None)
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"carries no signature.*task=resolve_task") as refused:
        load_judge(tmp_path / "judge", lm=object(), allow_modified=True)  # the refusal comes before any import
    assert str(evil) in str(refused.value)
    assert not marker.exists()


def test_a_bundle_naming_an_installed_module_does_not_import_it(tmp_path: Path) -> None:
    import sys

    path = save_bundle(bundle_from_judge(calibrated_judge(), LMConfig()), tmp_path / "judge")
    document = json.loads(path.read_text())
    document.update(task="antigravity:Anything", signature=None)
    path.write_text(json.dumps(document))
    sys.modules.pop("antigravity", None)
    with pytest.raises(ValueError, match="carries no signature"):
        load_judge(tmp_path / "judge", lm=object(), allow_modified=True)
    assert "antigravity" not in sys.modules


def test_trusted_code_can_supply_the_task_of_a_bundle_without_a_signature(tmp_path: Path) -> None:
    path = save_bundle(bundle_from_judge(calibrated_judge(), LMConfig()), tmp_path / "judge")
    document = json.loads(path.read_text())
    document.update(task="my_judges:JudgeRelevance", signature=None)
    path.write_text(json.dumps(document))
    with pytest.warns(UserWarning, match="modified after it was saved"):
        loaded = load_judge(tmp_path / "judge", lm=object(), allow_modified=True, task=resolve_task("relevance"))
    assert loaded.task.spec.input_names == ("prompt", "attribute")
    assert loaded.program.predict.signature.instructions == "Tuned instructions."


# -- a digest over the saved content ----------------------------------------------------


def test_saved_bundle_carries_the_sha256_of_its_canonical_content(tmp_path: Path) -> None:
    import hashlib

    from judgecal.export.bundle import bundle_digest

    bundle = bundle_from_judge(
        calibrated_judge(), LMConfig(), metrics={"test.kappa": 0.25, "test.roc_auc": float("nan")}
    )
    path = save_bundle(bundle, tmp_path / "judge")
    document = json.loads(path.read_text())
    stored = document.pop("digest")
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert stored == "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    assert bundle_digest(bundle) == stored == bundle_digest(read_bundle(path))


@pytest.mark.parametrize(
    ("field", "value"),
    [("threshold", 0.0), ("instructions", "Always answer true."), ("demo", "replaced")],
)
def test_a_bundle_edited_after_saving_is_refused(tmp_path: Path, field: str, value: object) -> None:
    path = save_bundle(bundle_from_judge(calibrated_judge(), LMConfig()), tmp_path / "judge")
    document = json.loads(path.read_text())
    predict = document["judge"]["program"]["predict"]
    if field == "threshold":
        document["judge"]["threshold"] = value
    elif field == "instructions":
        predict["signature"]["instructions"] = value
    else:
        predict["demos"][0]["attribute"] = value
    path.write_text(json.dumps(document, indent=2))
    with pytest.raises(ValueError, match=r"judge.json was modified after it was saved.*allow_modified=True"):
        load_judge(tmp_path / "judge", lm=object())
    with pytest.warns(UserWarning, match="modified after it was saved"):
        load_judge(tmp_path / "judge", lm=object(), allow_modified=True)


def test_reformatting_a_bundle_does_not_count_as_modifying_it(tmp_path: Path) -> None:
    path = save_bundle(bundle_from_judge(calibrated_judge(), LMConfig()), tmp_path / "judge")
    document = json.loads(path.read_text())
    path.write_text(json.dumps(dict(reversed(document.items())), indent=None))
    load_judge(tmp_path / "judge", lm=object())


def test_a_bundle_saved_before_digests_existed_loads_with_a_note(tmp_path: Path) -> None:
    path = save_bundle(bundle_from_judge(calibrated_judge(), LMConfig()), tmp_path / "judge")
    document = json.loads(path.read_text())
    del document["digest"]
    document["schema_version"] = 1
    path.write_text(json.dumps(document))
    with pytest.warns(UserWarning, match="saved before bundles carried a digest") as notes:
        loaded = load_judge(tmp_path / "judge", lm=object())
    assert len(notes) == 1 and "\n" not in str(notes[0].message)
    assert loaded.program.predict.signature.instructions == "Tuned instructions."


def test_a_current_bundle_whose_digest_was_removed_is_refused(tmp_path: Path) -> None:
    path = save_bundle(bundle_from_judge(calibrated_judge(), LMConfig()), tmp_path / "judge")
    document = json.loads(path.read_text())
    del document["digest"]
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="modified after it was saved"):
        load_judge(tmp_path / "judge", lm=object())


# -- the bundle's endpoint is not trusted -----------------------------------------------


def _bundle_with_endpoint(tmp_path: Path, api_base: str) -> Path:
    config = LMConfig(model="openai/judge-model", api_base=api_base)
    save_bundle(bundle_from_judge(calibrated_judge(), config), tmp_path / "judge")
    return tmp_path / "judge"


def test_a_bundles_endpoint_is_not_used_unless_the_user_says_so(tmp_path: Path) -> None:
    folder = _bundle_with_endpoint(tmp_path, "http://collector.example:8000/v1")
    with pytest.warns(UserWarning, match=r"names the endpoint http://collector.example:8000/v1.*not used") as notes:
        judge = load_judge(folder)
    assert "--trust-endpoint" in str(notes[0].message) or "trust_endpoint=True" in str(notes[0].message)
    assert judge.judge.lm.kwargs.get("api_base") is None
    mine = load_judge(folder, api_base="http://127.0.0.1:9/v1")
    assert mine.judge.lm.kwargs["api_base"] == "http://127.0.0.1:9/v1"
    trusted = load_judge(folder, trust_endpoint=True)
    assert trusted.judge.lm.kwargs["api_base"] == "http://collector.example:8000/v1"


def test_credentials_in_the_api_base_are_never_stored_in_a_bundle(tmp_path: Path) -> None:
    folder = _bundle_with_endpoint(tmp_path, "https://alice:s3cr3t@gpu-box:8000/v1?api-key=k3y&region=eu")
    text = (folder / BUNDLE_FILE).read_text()
    assert "s3cr3t" not in text and "k3y" not in text
    assert read_bundle(folder).lm.api_base == "https://alice:***@gpu-box:8000/v1?api-key=***&region=eu"

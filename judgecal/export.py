"""A calibrated judge as a file others can load: the judge bundle and its MLflow model.

A bundle is a folder holding ``judge.json``: the task, the optimized instructions and
demos (DSPy's JSON state), the LM settings without secrets, the calibration settings,
the test metrics and the data fingerprint. It is plain JSON; loading one runs no code
from it. The MLflow model wraps the same bundle as a pyfunc defined from code (not a
pickle), so ``mlflow.pyfunc.load_model`` and :func:`load_judge` read the same file.
"""

from __future__ import annotations

import json
import platform
import tempfile
import warnings
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from judgecal.lm import LMConfig, build_lm
from judgecal.strategies import FittedJudge, judge_from_state
from judgecal.tasks import signature_spec, task_from_spec

BUNDLE_FILE = "judge.json"
BUNDLE_SCHEMA_VERSION = 1
MODEL_ARTIFACT = "judge"


class JudgeBundle(BaseModel):
    """Everything needed to rebuild a calibrated judge, and what it was measured to do."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["judgecal.judge"] = "judgecal.judge"
    schema_version: int = BUNDLE_SCHEMA_VERSION
    name: str
    task: str = Field(description="Built-in task name or 'module:Signature' reference.")
    signature: dict[str, Any] | None = Field(
        default=None, description="The task signature as plain JSON; a custom task is rebuilt from it, not imported."
    )
    decision_field: str
    labels: list[bool | int | str]
    judge: dict[str, Any] = Field(
        description="The calibrated judge's plain-JSON state: DSPy program (instructions and demos), "
        "decision threshold, verifier weights, stacking coefficients."
    )
    lm: LMConfig
    calibration: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict, description="Test-split point estimates.")
    evaluation: dict[str, Any] | None = Field(
        default=None,
        description="Test-split metrics with 95% group-bootstrap intervals, the comparison with the raw judge, "
        "and the human ceiling when rows had several annotators.",
    )
    data_fingerprint: str | None = None
    split_fingerprint: str | None = None
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    versions: dict[str, str] = Field(default_factory=dict)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("judgecal", "dspy", "mlflow", "llama-cpp-python", "pydantic"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def bundle_from_judge(
    judge: FittedJudge,
    lm_config: LMConfig,
    *,
    calibration: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    evaluation: dict[str, Any] | None = None,
    data_fingerprint: str | None = None,
    split_fingerprint: str | None = None,
) -> JudgeBundle:
    return JudgeBundle(
        name=judge.name,
        task=judge.task.reference,
        signature=signature_spec(judge.task.signature),
        evaluation=evaluation,
        decision_field=judge.task.decision_field,
        labels=list(judge.task.spec.labels),
        judge=judge.state(),
        lm=lm_config,
        calibration=calibration or {},
        metrics=metrics or {},
        data_fingerprint=data_fingerprint,
        split_fingerprint=split_fingerprint,
        versions=package_versions(),
    )


def save_bundle(bundle: JudgeBundle, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / BUNDLE_FILE
    path.write_text(bundle.model_dump_json(indent=2), encoding="utf-8")
    return path


def read_bundle(path: str | Path) -> JudgeBundle:
    """Read ``judge.json`` (or a folder holding it), refusing anything but plain JSON."""
    path = Path(path)
    if path.is_dir():
        path = path / BUNDLE_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no judge bundle here (expected {BUNDLE_FILE})")
    raw = path.read_bytes()
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a judge bundle (not JSON: {error})") from None
    if not isinstance(document, dict) or document.get("format") != "judgecal.judge":
        raise ValueError(f'{path}: not a judge bundle (missing "format": "judgecal.judge")')
    version = document.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"{path}: not a judge bundle (schema_version {version!r})")
    if version > BUNDLE_SCHEMA_VERSION:
        raise ValueError(
            f"{path}: bundle schema version {version!r} is newer than this judgecal reads "
            f"(up to {BUNDLE_SCHEMA_VERSION}); upgrade judgecal to load it"
        )
    document = migrate_bundle(document)
    try:
        return JudgeBundle.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{path}: field '{where}': {first['msg']}") from None


# Upgrades of older bundle documents, one step per schema version: {from_version: function}.
# A later judgecal adds an entry here whenever it changes the bundle, so every older bundle
# still loads.
MIGRATIONS: dict[int, Any] = {}


def migrate_bundle(document: dict[str, Any]) -> dict[str, Any]:
    version = document["schema_version"]
    while version < BUNDLE_SCHEMA_VERSION:
        document = MIGRATIONS[version](document)
        version = document["schema_version"]
    return document


def judge_from_bundle(bundle: JudgeBundle, *, lm: Any = None, lm_config: LMConfig | None = None) -> FittedJudge:
    """Rebuild the judge; its LM (if it uses one) is built from the bundle's settings unless given.
    Only built-in task signatures are imported; any other is rebuilt from the bundle's JSON."""
    task = task_from_spec(bundle.task, bundle.signature)
    if task.decision_field != bundle.decision_field:
        raise ValueError(
            f"bundle '{bundle.name}' decides '{bundle.decision_field}' but task {bundle.task!r} "
            f"now decides '{task.decision_field}'"
        )
    if lm is None and _uses_lm(bundle.judge):
        lm = build_lm(lm_config or bundle.lm)
    return judge_from_state(bundle.judge, task, lm, bundle.name)


def _uses_lm(state: dict[str, Any]) -> bool:
    if state.get("kind") == "program":
        return True
    children = [state.get("base"), *list(state.get("components") or [])]
    return any(_uses_lm(child) for child in children if isinstance(child, dict))


def load_judge(reference: str | Path, *, lm: Any = None, model: str | None = None) -> FittedJudge:
    """Load a judge from a bundle folder or file, or an MLflow ``runs:/`` or ``models:/`` URI.

    ``model`` swaps the judge model (e.g. to a served copy) while keeping the calibration.
    """
    bundle = read_bundle(_local_bundle_path(reference))
    config = bundle.lm.model_copy(update={"model": model}) if model else bundle.lm
    return judge_from_bundle(bundle, lm=lm, lm_config=config)


def _local_bundle_path(reference: str | Path) -> Path:
    text = str(reference)
    if text.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        import mlflow

        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=text, dst_path=tempfile.mkdtemp()))
        candidates = [local / BUNDLE_FILE, *local.glob(f"**/{BUNDLE_FILE}")]
        for candidate in candidates:
            if candidate.exists():
                return candidate
        raise FileNotFoundError(f"{text}: the MLflow model holds no {BUNDLE_FILE}")
    return Path(text)


def log_judge_model(bundle_folder: Path, *, input_names: list[str]) -> Any:
    """Log the bundle as an MLflow pyfunc model named ``judge`` in the active run."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    code = Path(__file__).with_name("mlflow_model.py")
    example = pd.DataFrame([dict.fromkeys(input_names, "")])
    output = pd.DataFrame([{"label": "", "confidence": 0.0, "error": ""}])
    with warnings.catch_warnings():
        # An input example would make MLflow run the judge (and its LM) while logging.
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        return mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(code),
            artifacts={"bundle": str(bundle_folder / BUNDLE_FILE)},
            signature=infer_signature(example, output),
            pip_requirements=[f"judgecal=={package_versions().get('judgecal', '0')}"],
        )


def mlflow_scorer(judge: FittedJudge, *, name: str | None = None) -> Any:
    """A calibrated judge as an MLflow GenAI scorer. Each judge input is looked up by name
    in the evaluation row's ``outputs`` (when a dict), then ``inputs``, then
    ``expectations``; an ``outputs`` string fills the single input still missing. The
    feedback value is the verdict (a bool for yes/no judges, so MLflow averages it), with
    the confidence as metadata."""
    from mlflow.entities import Feedback
    from mlflow.genai.scorers import scorer

    names = judge.task.spec.input_names

    def judge_row(inputs: Any = None, outputs: Any = None, expectations: Any = None) -> Feedback:
        fields: dict[str, Any] = {}
        for source in (outputs, inputs, expectations):
            if isinstance(source, dict):
                for key in names:
                    if key not in fields and key in source:
                        fields[key] = source[key]
        missing = [key for key in names if key not in fields]
        if isinstance(outputs, str) and len(missing) == 1:
            fields[missing[0]] = outputs
        verdict = judge(**fields)
        if verdict.label is None:
            return Feedback(value=None, error=verdict.error or "no verdict")
        return Feedback(
            value=verdict.label,
            rationale=verdict.rationale,
            metadata={"confidence": verdict.confidence, "judge": judge.name},
        )

    return scorer(judge_row, name=name or judge.name.replace("/", "_"))


def judge_file(
    judge: FittedJudge,
    source: Path,
    output: Path,
    *,
    num_threads: int = 1,
    chunk: int = 16,
    progress: Any = None,
) -> tuple[int, int]:
    """Judge every row of ``source`` into ``output`` (JSONL), resuming where an earlier run
    stopped. Each verdict is one ``write`` of one whole line, flushed per chunk; a line cut
    short by a crash is dropped on resume. Lines read back as a verdicts file
    (``{"id", "verdict", "probability"}``), so they can be calibrated in turn.
    Returns (rows judged now, rows already done)."""
    import os

    from judgecal.data import load_rows

    rows = load_rows(source, judge.task.spec, labelled=False).rows
    done = _completed_ids(output)
    todo = [row for row in rows if row.id not in done]
    positive = judge.task.spec.positive
    tracker = progress(len(todo), f"{judge.name}: judging") if progress and todo else None
    output.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            verdicts = judge.batch(part, num_threads=num_threads, progress=False)
            for row, verdict in zip(part, verdicts, strict=True):
                record = {
                    "id": row.id,
                    "verdict": None if verdict.label is None else verdict.label,
                    "probability": verdict.probability_of(positive) if positive is not None else None,
                    "confidence": verdict.confidence,
                    "probabilities": verdict.probabilities,
                    "error": verdict.error,
                    "judge": judge.name,
                }
                line = json.dumps(record, ensure_ascii=False) + "\n"
                os.write(descriptor, line.encode("utf-8"))
            os.fsync(descriptor)
            if tracker is not None:
                tracker.advance(len(part))
    finally:
        os.close(descriptor)
        if tracker is not None:
            tracker.close()
    return len(todo), len(done)


def _completed_ids(output: Path) -> set[str]:
    """Ids already judged in ``output``; a trailing partial line (a crash mid-write) is cut."""
    if not output.exists():
        return set()
    data = output.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with output.open("r+b") as handle:
            handle.truncate(cut)
        data = data[:cut]
    done = set()
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            done.add(str(json.loads(line)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{output}:{number}: not a verdict line; refusing to append to it") from None
    return done

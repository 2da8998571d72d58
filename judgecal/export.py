"""A calibrated judge as a file others can load: the judge bundle and its MLflow model.

A bundle is a folder holding ``judge.json``: the task, the optimized instructions and
demos (DSPy's JSON state), the LM settings without secrets, the calibration settings,
the test metrics and the data fingerprint, sealed by a SHA-256 digest of that content.
Loading one runs no code from it and imports nothing it names, refuses content edited
after saving, and does not send rows to an endpoint the bundle names unless the user
asks for it. The MLflow model wraps the same bundle as a pyfunc defined from code (not a
pickle), so ``mlflow.pyfunc.load_model`` and :func:`load_judge` read the same file.
"""

from __future__ import annotations

import hashlib
import json
import platform
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from judgecal.lm import LMConfig, build_lm
from judgecal.redact import redact_url
from judgecal.strategies import FittedJudge, judge_from_state
from judgecal.tasks import Task, signature_spec, task_from_spec, task_of

BUNDLE_FILE = "judge.json"
# 2: bundles carry a digest of their content.
BUNDLE_SCHEMA_VERSION = 2
FIRST_SCHEMA_WITH_DIGEST = 2
MODEL_ARTIFACT = "judge"


class BundleNote(UserWarning):
    """Something the user should know about a bundle that still loads (an ignored
    endpoint, an unchecked or modified content)."""


class ModifiedBundleError(ValueError):
    """The bundle's content no longer matches the digest written when it was saved."""


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
    metrics: dict[str, float | None] = Field(
        default_factory=dict, description="Test-split point estimates (null where a metric is undefined)."
    )
    evaluation: dict[str, Any] | None = Field(
        default=None,
        description="Test-split metrics with 95% group-bootstrap intervals, the comparison with the raw judge, "
        "and the human ceiling when rows had several annotators.",
    )
    data_fingerprint: str | None = None
    split_fingerprint: str | None = None
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    versions: dict[str, str] = Field(default_factory=dict)
    digest: str | None = Field(
        default=None,
        description="'sha256:<hex>' of the canonical JSON of every other field, written at save time; "
        "a bundle whose content no longer matches it is refused.",
    )


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
        lm=_without_credentials(lm_config),
        calibration=calibration or {},
        metrics=metrics or {},
        data_fingerprint=data_fingerprint,
        split_fingerprint=split_fingerprint,
        versions=package_versions(),
    )


def _without_credentials(config: LMConfig) -> LMConfig:
    """LM settings as a bundle stores them: a password or key in ``api_base`` is hidden."""
    if config.api_base is None:
        return config
    return config.model_copy(update={"api_base": redact_url(config.api_base)})


def _canonical_digest(document: dict[str, Any]) -> str:
    """SHA-256 of the document without its ``digest``, as JSON with sorted keys and no
    whitespace: formatting and key order do not change it, any value does."""
    content = {key: value for key, value in document.items() if key != "digest"}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _document(bundle: JudgeBundle) -> dict[str, Any]:
    """The bundle as the JSON document it is saved as (NaN metrics become null)."""
    return json.loads(bundle.model_dump_json(exclude={"digest"}))


def bundle_digest(bundle: JudgeBundle) -> str:
    """The digest of a bundle's content (``sha256:<hex>``), as :func:`save_bundle` writes it:
    the identity of a calibrated judge, e.g. for an MLflow tag."""
    return _canonical_digest(_document(bundle))


def save_bundle(bundle: JudgeBundle, folder: str | Path) -> Path:
    """Write ``judge.json`` with the digest of its content."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / BUNDLE_FILE
    document = _document(bundle)
    document["digest"] = _canonical_digest(document)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


@dataclass
class OpenedBundle:
    """A bundle read from disk: its content, its digest and what the user should be told."""

    bundle: JudgeBundle
    path: Path
    digest: str
    notes: list[str] = field(default_factory=list)


def read_bundle(path: str | Path, *, allow_modified: bool = False) -> JudgeBundle:
    """Read ``judge.json`` (or a folder holding it), refusing anything but plain JSON and
    content edited after it was saved (unless ``allow_modified``). Notes are warnings."""
    opened = open_bundle(path, allow_modified=allow_modified)
    for note in opened.notes:
        warnings.warn(note, BundleNote, stacklevel=2)
    return opened.bundle


def open_bundle(path: str | Path, *, allow_modified: bool = False) -> OpenedBundle:
    """:func:`read_bundle`, returning the notes instead of warning them."""
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
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{path}: not a judge bundle (schema_version {version!r})")
    if version > BUNDLE_SCHEMA_VERSION:
        raise ValueError(
            f"{path}: bundle schema version {version!r} is newer than this judgecal reads "
            f"(up to {BUNDLE_SCHEMA_VERSION}); upgrade judgecal to load it"
        )
    notes = _check_digest(path, document, version, allow_modified=allow_modified)
    document = migrate_bundle(document)
    try:
        bundle = JudgeBundle.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{path}: field '{where}': {first['msg']}") from None
    return OpenedBundle(bundle=bundle, path=path, digest=bundle_digest(bundle), notes=notes)


def _check_digest(path: Path, document: dict[str, Any], version: int, *, allow_modified: bool) -> list[str]:
    stored = document.get("digest")
    if stored is None and version < FIRST_SCHEMA_WITH_DIGEST:
        return [f"{path}: saved before bundles carried a digest (schema {version}); its content cannot be checked"]
    try:
        actual = _canonical_digest(document)
    except ValueError:  # NaN or infinity: not something save_bundle writes
        actual = "sha256:<not canonical JSON>"
    if stored == actual:
        return []
    found = (
        "it carries no digest"
        if stored is None
        else f"its digest {str(stored)[:19]}… does not match its content {actual[:19]}…"
    )
    message = f"{path}: judge.json was modified after it was saved ({found}), so its test metrics no longer describe it"
    if allow_modified:
        return [message + "; loading it anyway, as asked"]
    raise ModifiedBundleError(
        message + ". If you edited it yourself, load it with --allow-modified (Python: allow_modified=True)"
    )


# Upgrades of older bundle documents, one step per schema version: {from_version: function}.
# A later judgecal adds an entry here whenever it changes the bundle, so every older bundle
# still loads.
def _add_digest_field(document: dict[str, Any]) -> dict[str, Any]:
    """1 → 2: bundles gained ``digest``; an older one has none."""
    return {**document, "schema_version": 2, "digest": None}


MIGRATIONS: dict[int, Any] = {1: _add_digest_field}


def migrate_bundle(document: dict[str, Any]) -> dict[str, Any]:
    version = document["schema_version"]
    while version < BUNDLE_SCHEMA_VERSION:
        document = MIGRATIONS[version](document)
        version = document["schema_version"]
    return document


def judge_from_bundle(
    bundle: JudgeBundle,
    *,
    lm: Any = None,
    lm_config: LMConfig | None = None,
    task: Task | Any = None,
) -> FittedJudge:
    """Rebuild the judge. Its LM (if it uses one) is ``lm``, else built from ``lm_config``,
    else from the bundle's settings without its endpoint (see :func:`lm_settings`).
    Built-in task signatures are imported from judgecal; any other is rebuilt from the
    bundle's JSON, or taken from ``task`` (a :class:`Task` or signature class) given by
    the caller's own code. Nothing the bundle names is imported."""
    resolved = task_of(task, bundle.task) if task is not None else task_from_spec(bundle.task, bundle.signature)
    if resolved.decision_field != bundle.decision_field:
        raise ValueError(
            f"bundle '{bundle.name}' decides '{bundle.decision_field}' but task {bundle.task!r} "
            f"now decides '{resolved.decision_field}'"
        )
    if lm is None and _uses_lm(bundle.judge):
        if lm_config is None:
            lm_config, notes = lm_settings(bundle)
            for note in notes:
                warnings.warn(note, BundleNote, stacklevel=2)
        lm = build_lm(lm_config)
    return judge_from_state(bundle.judge, resolved, lm, bundle.name)


def lm_settings(
    bundle: JudgeBundle, *, model: str | None = None, api_base: str | None = None, trust_endpoint: bool = False
) -> tuple[LMConfig, list[str]]:
    """The LM settings a loaded judge runs with, and a note when the bundle's endpoint is
    set aside. A bundle's ``api_base`` would receive every row judged (and the provider
    key's header), so it is used only with ``trust_endpoint``; ``api_base`` given by the
    user always wins."""
    config = bundle.lm.model_copy(update={"model": model}) if model else bundle.lm
    notes: list[str] = []
    if api_base:
        config = config.model_copy(update={"api_base": api_base})
    elif bundle.lm.api_base and not trust_endpoint:
        config = config.model_copy(update={"api_base": None})
        notes.append(
            f"the bundle names the endpoint {redact_url(bundle.lm.api_base)}; it is not used: the judge runs on "
            f"{config.model!r} with your own provider settings. Pass --api-base URL (api_base=) to choose a server, "
            "or --trust-endpoint (trust_endpoint=True) to send rows to the bundle's"
        )
    return config, notes


def _uses_lm(state: dict[str, Any]) -> bool:
    if state.get("kind") == "program":
        return True
    children = [state.get("base"), *list(state.get("components") or [])]
    return any(_uses_lm(child) for child in children if isinstance(child, dict))


@dataclass
class LoadedJudge:
    """A judge loaded from a bundle, with the bundle's identity and the notes for the user."""

    judge: FittedJudge
    bundle: JudgeBundle
    digest: str
    source: str
    notes: list[str] = field(default_factory=list)


def open_judge(
    reference: str | Path,
    *,
    lm: Any = None,
    model: str | None = None,
    api_base: str | None = None,
    trust_endpoint: bool = False,
    allow_modified: bool = False,
    task: Task | Any = None,
) -> LoadedJudge:
    """:func:`load_judge`, returning the bundle, its digest and the notes instead of warning them."""
    opened = open_bundle(_local_bundle_path(reference), allow_modified=allow_modified)
    config, notes = lm_settings(opened.bundle, model=model, api_base=api_base, trust_endpoint=trust_endpoint)
    if lm is not None or not _uses_lm(opened.bundle.judge):
        notes = []  # the bundle's LM settings are not used at all
    judge = judge_from_bundle(opened.bundle, lm=lm, lm_config=config, task=task)
    return LoadedJudge(
        judge=judge, bundle=opened.bundle, digest=opened.digest, source=str(reference), notes=opened.notes + notes
    )


def load_judge(
    reference: str | Path,
    *,
    lm: Any = None,
    model: str | None = None,
    api_base: str | None = None,
    trust_endpoint: bool = False,
    allow_modified: bool = False,
    task: Task | Any = None,
) -> FittedJudge:
    """Load a judge from a bundle folder or file, or an MLflow ``runs:/`` or ``models:/`` URI.

    ``model`` swaps the judge model (e.g. to a served copy) while keeping the calibration;
    ``api_base`` sets its server. The bundle's own endpoint is used only with
    ``trust_endpoint=True``; a bundle edited after saving loads only with
    ``allow_modified=True``; a custom task the bundle does not describe must come from
    the caller as ``task=``. Notes (an ignored endpoint, an unchecked old bundle) are
    :class:`BundleNote` warnings.
    """
    loaded = open_judge(
        reference,
        lm=lm,
        model=model,
        api_base=api_base,
        trust_endpoint=trust_endpoint,
        allow_modified=allow_modified,
        task=task,
    )
    for note in loaded.notes:
        warnings.warn(note, BundleNote, stacklevel=2)
    return loaded.judge


def _local_bundle_path(reference: str | Path) -> Path:
    text = str(reference)
    if text.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=text, dst_path=tempfile.mkdtemp()))
        except (MlflowException, OSError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise FileNotFoundError(
                f"{text}: no such judge in the MLflow store {redact_url(mlflow.get_tracking_uri())} ({reason}); "
                "check the run id or model name and alias (judgecal ui lists them), or pass --tracking-uri"
            ) from None
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
            # Declared so that load_model(uri, model_config={...}) may set them (MLflow
            # ignores keys a model did not declare when it was logged).
            model_config={"model": None, "api_base": None, "trust_endpoint": False, "allow_modified": False},
        )


def mlflow_scorer(judge: FittedJudge, *, name: str | None = None) -> Any:
    """A calibrated judge as an MLflow GenAI scorer. Each judge input is looked up by name
    in the evaluation row's ``outputs`` (when a dict), then ``inputs``, then
    ``expectations``; an ``outputs`` string fills the single input still missing. The
    feedback value is the verdict (a bool for yes/no judges, so MLflow averages it), with
    the confidence as metadata."""
    from mlflow.entities import Feedback
    from mlflow.genai.scorers import scorer

    from judgecal.judges import RowFailedError

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
        try:
            verdict = judge(**fields)
        except RowFailedError as error:
            return Feedback(value=None, error=error.reason)
        if verdict.label is None:
            return Feedback(value=None, error=verdict.error or "no verdict")
        return Feedback(
            value=verdict.label,
            rationale=verdict.rationale,
            metadata={"confidence": verdict.confidence, "judge": judge.name},
        )

    return scorer(judge_row, name=name or judge.name.replace("/", "_"))


class JudgeFileResult(BaseModel):
    """What one run of :func:`judge_file` did."""

    judged: int = Field(description="Rows judged and written in this run.")
    already_done: int = Field(description="Rows found in the output from earlier runs.")
    failed: int = Field(default=0, description="Rows without a verdict this run, listed in the errors file.")
    errors_file: Path | None = Field(default=None, description="Where the failed rows are listed, if any failed.")


def errors_file_of(output: Path) -> Path:
    """``verdicts.jsonl`` → ``verdicts.errors.jsonl``: the rows the last run could not judge."""
    return output.with_name(f"{output.stem if output.suffix else output.name}.errors.jsonl")


def judge_file(
    judge: FittedJudge,
    source: Path,
    output: Path,
    *,
    num_threads: int = 1,
    chunk: int = 16,
    progress: Any = None,
) -> JudgeFileResult:
    """Judge every row of ``source`` into ``output`` (JSONL), resuming where an earlier run
    stopped. Each verdict is one ``write`` of one whole line, synced per chunk; a line cut
    short by a crash is dropped on resume. Lines read back as a verdicts file
    (``{"id", "verdict", "probability"}``), so they can be calibrated in turn.

    Only verdicts are written there. A row the judge gave none for (its call kept
    failing, its answer could not be read, it is longer than the model's context) goes to
    :func:`errors_file_of` instead, with its id, input line and the error, so the next run
    judges it again. The errors file lists the failures of the latest run only."""
    import os

    from judgecal.data import LabeledRow, load_rows
    from judgecal.judges import FAILING_START, JudgeFailedError, RowFailedError, Verdict

    rows = load_rows(source, judge.task.spec, labelled=False).rows
    done = _completed_ids(output)
    todo = [row for row in rows if row.id not in done]
    positive = judge.task.spec.positive
    errors_path = errors_file_of(output)
    errors_path.unlink(missing_ok=True)
    tracker = progress(len(todo), f"{judge.name}: judging") if progress and todo else None

    def judge_rows(part: list[LabeledRow]) -> Iterator[tuple[Verdict | None, str | None]]:
        """(verdict, None) or (None, why) per row, in order. An LM judge is called row by
        row, so that one failed row costs only itself; other judges make no calls and run
        as a batch."""
        if not judge.uses_lm:
            yield from ((v, None) for v in judge.batch(part, num_threads=num_threads, progress=False))
            return

        def one(row: LabeledRow) -> tuple[Verdict | None, str | None]:
            try:
                return judge.predict([row])[0], None
            except RowFailedError as error:
                return None, error.reason

        if num_threads <= 1:
            yield from (one(row) for row in part)
            return
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=num_threads)
        try:
            yield from pool.map(one, part)
        finally:  # a stop (a misconfigured judge, Ctrl-C) cancels the rows not started
            pool.shutdown(wait=True, cancel_futures=True)

    judged = failed = 0
    output.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    errors_descriptor: int | None = None
    try:
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            for row, (verdict, why) in zip(part, judge_rows(part), strict=True):
                if verdict is not None and verdict.label is None:
                    why = f"no valid verdict: {verdict.error or 'the answer could not be read'}"
                if why is None and verdict is not None:
                    record = {
                        "id": row.id,
                        "verdict": verdict.label,
                        "probability": verdict.probability_of(positive) if positive is not None else None,
                        "confidence": verdict.confidence,
                        "probabilities": verdict.probabilities,
                        "judge": judge.name,
                    }
                    os.write(descriptor, (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
                    judged += 1
                else:
                    failed += 1
                    if errors_descriptor is None:
                        errors_descriptor = os.open(errors_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                    line = json.dumps({"id": row.id, "line": row.line, "error": why}, ensure_ascii=False)
                    os.write(errors_descriptor, (line + "\n").encode("utf-8"))
                    if judged == 0 and failed >= FAILING_START:
                        raise JudgeFailedError(
                            f"judge '{judge.name}' failed on its first {failed} rows (listed in {errors_path}); "
                            f"the last error: {why}"
                        )
                if tracker is not None:
                    tracker.advance()
            os.fsync(descriptor)
            if errors_descriptor is not None:
                os.fsync(errors_descriptor)
    finally:
        os.close(descriptor)
        if errors_descriptor is not None:
            os.close(errors_descriptor)
        if tracker is not None:
            tracker.close()
    return JudgeFileResult(
        judged=judged, already_done=len(done), failed=failed, errors_file=errors_path if failed else None
    )


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

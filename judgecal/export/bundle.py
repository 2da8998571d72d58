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
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from judgecal.backends.models import build_lm
from judgecal.backends.settings import LMConfig
from judgecal.calibrate.strategies import judge_from_state
from judgecal.export.environment import uses_lm
from judgecal.judges.embeddings import SentenceEncoder
from judgecal.judges.fitted import FittedJudge
from judgecal.redact import redact_url
from judgecal.tasks.registry import Task, signature_spec, task_from_spec, task_of
from judgecal.workspace import LoadedModels

BUNDLE_FILE = "judge.json"


# 2: bundles carry a digest of their content.
BUNDLE_SCHEMA_VERSION = 2


FIRST_SCHEMA_WITH_DIGEST = 2


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
        "decision threshold, verifier weights (TF-IDF, logistic coefficients, gradient-boosted trees), stacking "
        "heads; an embedding verifier names its encoder's package and weights' SHA-256, not the weights."
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
    reference: dict[str, Any] | None = Field(
        default=None,
        description="A sketch of held-out calibration rows to compare new rows with (judgecal.stats.shift."
        "ReferenceSketch): hashed word n-gram indices, input lengths and the judge's probabilities, no text. "
        "Absent from bundles saved before it existed (their content and digest are unchanged).",
    )
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
    reference: dict[str, Any] | None = None,
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
        reference=reference,
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
    """The bundle as the JSON document it is saved as (NaN metrics become null). A bundle
    without a reference sketch is written without the key, as before it existed, so the
    digest of every bundle saved earlier stays what it was."""
    exclude = {"digest"} if bundle.reference is not None else {"digest", "reference"}
    return json.loads(bundle.model_dump_json(exclude=exclude))


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
    # A current bundle whose digest checked out is identified by that digest; working it out
    # again from the parsed bundle costs as much as the check (a second pass over its state).
    verified = version == BUNDLE_SCHEMA_VERSION and not notes and isinstance(document.get("digest"), str)
    stored = str(document["digest"]) if verified else None
    document = migrate_bundle(document)
    try:
        bundle = JudgeBundle.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{path}: field '{where}': {first['msg']}") from None
    return OpenedBundle(bundle=bundle, path=path, digest=stored or bundle_digest(bundle), notes=notes)


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
    models: LoadedModels | None = None,
) -> FittedJudge:
    """Rebuild the judge. Its LM (if it uses one) is ``lm``, else built from ``lm_config``,
    else from the bundle's settings without its endpoint (see :func:`lm_settings`).
    Built-in task signatures are imported from judgecal; any other is rebuilt from the
    bundle's JSON, or taken from ``task`` (a :class:`Task` or signature class) given by
    the caller's own code. Nothing the bundle names is imported. An in-process model and
    the sentence encoder are loaded in ``models`` (the workspace's)."""
    resolved = task_of(task, bundle.task) if task is not None else task_from_spec(bundle.task, bundle.signature)
    if resolved.decision_field != bundle.decision_field:
        raise ValueError(
            f"bundle '{bundle.name}' decides '{bundle.decision_field}' but task {bundle.task!r} "
            f"now decides '{resolved.decision_field}'"
        )
    if lm is None and uses_lm(bundle.judge):
        if lm_config is None:
            lm_config, notes = lm_settings(bundle)
            for note in notes:
                warnings.warn(note, BundleNote, stacklevel=2)
        lm = build_lm(lm_config, models)
    return judge_from_state(bundle.judge, resolved, lm, bundle.name, SentenceEncoder(models))


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

"""A calibrated judge as an MLflow model, with MLflow's flavor verbs: ``save_model``,
``log_model`` and ``load_model`` (``load_judge`` is the friendly name).

The MLflow model is a pyfunc defined from code (``mlflow_model.py``, not a pickle) around
the judge bundle, so ``mlflow.pyfunc.load_model`` and :func:`load_judge` read the same
``judge.json``. :func:`load_judge` reads nothing else and runs no code from the model;
``mlflow.pyfunc.load_model`` executes the model folder's copy of ``mlflow_model.py``, which
the bundle's digest does not cover (SECURITY.md). ``runs:/``, ``models:/`` and local paths are
accepted; ``runs:/`` and ``models:/`` resolve against the project's own store (``mlruns/``
found from the working directory up, or ``JUDGECAL_HOME``) unless ``tracking_uri=`` or
``MLFLOW_TRACKING_URI`` names another, as ``judgecal judge`` does. A loaded judge's models
are kept in its :class:`~judgecal.workspace.Workspace` (``workspace=``; by default the
project's, found as above).
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from judgecal.artifacts import MODEL_NAME
from judgecal.backends.settings import LMConfig
from judgecal.export.adapters import CalibratedJudge
from judgecal.export.bundle import (
    BUNDLE_FILE,
    BundleNote,
    JudgeBundle,
    bundle_from_judge,
    judge_from_bundle,
    lm_settings,
    open_bundle,
    read_bundle,
    save_bundle,
)
from judgecal.export.environment import judge_requirements, package_code, uses_lm
from judgecal.judges.fitted import FittedJudge, UnknownJudgeKindError
from judgecal.redact import error_line, redact_url
from judgecal.tasks.registry import Task
from judgecal.workspace import Workspace, set_process_environment

MODEL_ARTIFACT = MODEL_NAME


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
    tracking_uri: str | None = None,
    workspace: Workspace | None = None,
) -> LoadedJudge:
    """:func:`load_judge`, returning the bundle, its digest and the notes instead of warning them."""
    set_process_environment()
    workspace = workspace or Workspace.find(tracking_uri=tracking_uri)
    opened = open_bundle(_local_bundle_path(reference, workspace, tracking_uri), allow_modified=allow_modified)
    config, notes = lm_settings(opened.bundle, model=model, api_base=api_base, trust_endpoint=trust_endpoint)
    if lm is not None or not uses_lm(opened.bundle.judge):
        notes = []  # the bundle's LM settings are not used at all
    try:
        judge = judge_from_bundle(opened.bundle, lm=lm, lm_config=config, task=task, models=workspace.models)
    except UnknownJudgeKindError as error:
        raise UnknownJudgeKindError(f"{opened.path}: field 'judge': {error}") from None
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
    tracking_uri: str | None = None,
    workspace: Workspace | None = None,
) -> CalibratedJudge:
    """Load a judge from a bundle folder or file, or an MLflow ``runs:/`` or ``models:/`` URI.

    ``runs:/`` and ``models:/`` resolve against ``tracking_uri``, else the store MLflow was
    pointed at (``MLFLOW_TRACKING_URI``, ``mlflow.set_tracking_uri``), else the project's own
    ``mlruns/mlflow.db``, so a plain Python session finds what ``judgecal calibrate`` recorded.
    ``workspace``: where the project is and the models it has loaded (pass one to several
    loads to load an in-process model once); by default the project's.

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
        tracking_uri=tracking_uri,
        workspace=workspace,
    )
    for note in loaded.notes:
        warnings.warn(note, BundleNote, stacklevel=2)
    return CalibratedJudge(loaded.judge, digest=loaded.digest)


def _local_bundle_path(reference: str | Path, workspace: Workspace, tracking_uri: str | None = None) -> Path:
    text = str(reference)
    folder = Path(text)
    if (folder / "artifacts" / BUNDLE_FILE).exists():  # a folder written by save_model
        return folder / "artifacts" / BUNDLE_FILE
    if text.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        import mlflow
        from mlflow.exceptions import MlflowException

        uri = tracking_uri or workspace.tracking_uri
        registry = tracking_uri or os.environ.get("MLFLOW_REGISTRY_URI") or uri
        try:
            location = _artifact_location(text, uri, registry)
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=location, dst_path=tempfile.mkdtemp(), tracking_uri=uri, registry_uri=registry
                )
            )
        except (MlflowException, OSError) as error:
            reason = error_line(error)
            raise FileNotFoundError(
                f"{text}: no such judge in the MLflow store {redact_url(uri)} ({reason}); check the run id or "
                "model name and alias (judgecal ui lists them), or pass --tracking-uri (tracking_uri=)"
            ) from None
        candidates = [local / BUNDLE_FILE, *local.glob(f"**/{BUNDLE_FILE}")]
        for candidate in candidates:
            if candidate.exists():
                return candidate
        raise FileNotFoundError(f"{text}: the MLflow model holds no {BUNDLE_FILE}")
    return Path(text)


def _artifact_location(reference: str, tracking_uri: str, registry_uri: str) -> str:
    """Where a ``models:/`` or ``runs:/`` reference's files are, asked of the given stores:
    MLflow resolves both against its process-wide tracking and registry URIs (a logged
    model behind ``runs:/<id>/<name>`` included) whatever store a download names."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
    if reference.startswith("runs:/"):
        run_id, _, path = reference.removeprefix("runs:/").partition("/")
        name, _, rest = path.partition("/")
        run = client.get_run(run_id)
        logged = client.search_logged_models(experiment_ids=[run.info.experiment_id], filter_string=f"name = '{name}'")
        match = next((model for model in logged if model.source_run_id == run_id), None)
        if match is None:  # a plain run artifact
            return f"{run.info.artifact_uri.rstrip('/')}/{path}" if path else run.info.artifact_uri
        return f"{match.artifact_location.rstrip('/')}/{rest}" if rest else match.artifact_location
    if not reference.startswith("models:/"):
        return reference
    body, _, path = reference.removeprefix("models:/").partition("/")
    if re.fullmatch(r"m-[0-9a-f]{32}", body):  # a logged model's own URI, as the MLflow UI lists it
        location = client.get_logged_model(body).artifact_location
        return f"{location.rstrip('/')}/{path}" if path else location
    if "@" in body:
        name, alias = body.split("@", 1)
        version = client.get_model_version_by_alias(name, alias).version
    else:
        name, version = body, path.split("/", 1)[0]
        path = path.partition("/")[2]
    location = client.get_model_version_download_uri(name, str(version))
    if location.startswith("models:/m-"):  # a logged model: its own artifact location
        location = client.get_logged_model(location.removeprefix("models:/").split("/", 1)[0]).artifact_location
    return f"{location.rstrip('/')}/{path}" if path else location


def _pyfunc_settings(bundle: JudgeBundle, bundle_file: Path, code: Path) -> dict[str, Any]:
    """The model's files: the bundle, the code file that loads it, this project's package
    (``code/judgecal``) and the requirements by name; see :mod:`judgecal.export.environment`."""
    import pandas as pd
    from mlflow.models import infer_signature

    from judgecal.tasks.registry import task_from_spec

    names = list(task_from_spec(bundle.task, bundle.signature).spec.input_names)
    example = pd.DataFrame([dict.fromkeys(names, "")])
    output = pd.DataFrame([{"label": "", "confidence": 0.0, "error": "", "abstained": False}])
    return {
        "python_model": str(Path(__file__).with_name("mlflow_model.py")),
        "artifacts": {"bundle": str(bundle_file)},
        "code_paths": [str(code)],
        "signature": infer_signature(example, output),
        "pip_requirements": judge_requirements(bundle.judge, bundle.lm.model),
        # Declared so that load_model(uri, model_config={...}) may set them (MLflow ignores
        # keys a model did not declare when it was saved).
        "model_config": {"model": None, "api_base": None, "trust_endpoint": False, "allow_modified": False},
    }


Savable = FittedJudge | CalibratedJudge | JudgeBundle | Path


@contextmanager
def _bundle_file(judge: Savable, lm_config: LMConfig | None) -> Iterator[tuple[JudgeBundle, Path]]:
    """The bundle to save and a ``judge.json`` holding it: a bundle file given as a path
    is used as it is (digest and all); anything else is written to a temporary folder."""
    if isinstance(judge, Path):
        file = judge / BUNDLE_FILE if judge.is_dir() else judge
        yield read_bundle(file, allow_modified=True), file
        return
    if isinstance(judge, JudgeBundle):
        bundle = judge
    else:
        fitted = judge.fitted if isinstance(judge, CalibratedJudge) else judge
        bundle = bundle_from_judge(fitted, lm_config or LMConfig())
    with tempfile.TemporaryDirectory() as scratch:
        yield bundle, save_bundle(bundle, scratch)


def save_model(judge: Savable, path: str | Path, *, lm_config: LMConfig | None = None) -> Path:
    """Save a judge (a fitted judge, a bundle, or a bundle file) as an MLflow pyfunc model
    folder at ``path``: the bundle and the code file that loads it, nothing pickled.
    ``lm_config``: the judge model's settings, saved without secrets (default: the
    embedded model)."""
    import mlflow

    set_process_environment()
    with _bundle_file(judge, lm_config) as (bundle, file), package_code() as code, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        mlflow.pyfunc.save_model(str(path), **_pyfunc_settings(bundle, file, code))
    return Path(path)


def log_model(judge: Savable, name: str = MODEL_ARTIFACT, *, lm_config: LMConfig | None = None) -> Any:
    """Log a judge (as :func:`save_model` takes it) as an MLflow pyfunc model named
    ``name`` in the active run. Returns MLflow's ``ModelInfo``."""
    import mlflow

    set_process_environment()  # MLflow copies the bundle in by "downloading" it, with a progress bar
    with _bundle_file(judge, lm_config) as (bundle, file), package_code() as code, warnings.catch_warnings():
        # An input example would make MLflow run the judge (and its LM) while logging.
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        return mlflow.pyfunc.log_model(name=name, **_pyfunc_settings(bundle, file, code))


def load_model(reference: str | Path, **options: Any) -> CalibratedJudge:
    """The flavor's third verb: :func:`load_judge` (a model folder, a bundle, ``runs:/`` or
    ``models:/``); only its ``judge.json`` is read, and no code from the model runs."""
    return load_judge(reference, **options)

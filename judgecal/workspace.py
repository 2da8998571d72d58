"""Where a project's local state lives, and pointing MLflow at it.

The workspace is the nearest folder, from the working directory up, that holds an
``mlruns/`` folder (``JUDGECAL_HOME`` overrides); with none, the working directory. It
holds ``mlruns/mlflow.db`` (runs and the model registry), ``mlruns/artifacts/``,
``mlruns/optuna.db`` (studies) and ``.cache/`` (LM responses, sentence embeddings). Any
layer may use it: it imports nothing else of judgecal but ``redact``.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def default_tracking_uri(root: Path | None = None) -> str:
    store = store_dir(root)
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def tracking_uri(explicit: str | None = None, root: Path | None = None) -> str:
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)


def configure_tracking(explicit: str | None = None, root: Path | None = None) -> str:
    """Point MLflow at the store; quiet the SQLite schema migration it logs on first use."""
    import logging

    import mlflow

    uri = tracking_uri(explicit, root)
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.store.tracking.sqlalchemy_store"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    elif is_database_url(uri):
        check_database(uri, "the MLflow tracking store", "start it, or pass another --tracking-uri, or --no-track")
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:"):
        mlflow.set_registry_uri(uri)
        with store_lock(root):
            mlflow.search_experiments(max_results=1)  # creates or migrates the schema, one process at a time
    return uri


class StoreUnavailableError(ValueError):
    """A store a run writes to (the MLflow tracking store, an Optuna storage) cannot be
    reached: found before any model is called."""


class TrackingUnavailableError(StoreUnavailableError):
    """The MLflow tracking server does not answer: found before any model is called."""


@contextmanager
def quiet_artifact_downloads() -> Iterator[None]:
    """MLflow prints a progress bar for every artifact download, even of a few kilobytes;
    loading a judge or reading a record back should print nothing. The caller's own
    ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` wins."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if name in os.environ:
        yield
        return
    os.environ[name] = "false"
    try:
        yield
    finally:
        os.environ.pop(name, None)


def check_server(uri: str, timeout: float = 5.0) -> None:
    """One request to the server's health endpoint: an unreachable server is reported in
    seconds, not after the work and MLflow's retries."""
    import urllib.error
    import urllib.request

    from judgecal.redact import redact_url

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        problem = f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        problem = str(getattr(error, "reason", error))
    raise TrackingUnavailableError(
        f"the MLflow tracking server at {redact_url(uri)} does not answer ({problem}); start it, or pass "
        "another --tracking-uri, or --no-track"
    )


DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def _scheme(url: str) -> str:
    """``postgresql`` for ``postgresql+psycopg://...``: the database, without the driver."""
    return url.partition("://")[0].partition("+")[0].lower()


def is_database_url(url: str) -> bool:
    """A SQLAlchemy database URL (``postgresql://``, ``mysql+pymysql://``, ``sqlite:///``, ...)."""
    return "://" in url and _scheme(url) in DATABASE_SCHEMES


def check_database(url: str, what: str, remedy: str, timeout: int = 5) -> None:
    """Connect once to a database URL with SQLAlchemy: a store that cannot be reached is
    reported in seconds, in one line without its password, not as a traceback after the
    work. ``what`` names the store in the message, ``remedy`` says what to do. A SQLite
    file is local and needs no probe."""
    scheme = _scheme(url)
    if scheme == "sqlite":
        return
    import sqlalchemy
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError
    from sqlalchemy.pool import NullPool

    from judgecal.redact import error_line, redact_url

    connect_args = {"connect_timeout": timeout} if scheme in ("postgresql", "mysql") else {}
    shown = redact_url(url)
    try:
        engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args=connect_args)
    except ImportError as error:
        raise StoreUnavailableError(
            f"{what} at {shown} needs a database driver that is not installed ({error}); install it "
            "(e.g. pip install psycopg for postgresql://, pymysql for mysql+pymysql://)"
        ) from None
    except ArgumentError as error:
        raise StoreUnavailableError(f"{what}: {shown} is not a database URL ({error})") from None
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as error:
        problem = error_line(getattr(error, "orig", None) or error)
        raise StoreUnavailableError(f"{what} at {shown} cannot be reached ({problem}); {remedy}") from None
    finally:
        engine.dispose()


STORE_DIR = "mlruns"


def workspace_root(start: Path | None = None) -> Path:
    override = os.environ.get("JUDGECAL_HOME")
    if override:
        return Path(override).expanduser().resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / STORE_DIR).is_dir():
            return folder
    return here


def store_dir(root: Path | None = None) -> Path:
    """``mlruns/``: the SQLite tracking database, artifacts and Optuna studies."""
    return (root or workspace_root()) / STORE_DIR


def dspy_cache_dir(root: Path | None = None) -> Path:
    """DSPy's disk cache of LM responses; a repeated run is served from it."""
    return (root or workspace_root()) / ".cache" / "dspy"


def embedding_cache_dir(root: Path | None = None) -> Path:
    """Sentence embeddings of the texts verifiers have seen; a repeated run loads no encoder."""
    return (root or workspace_root()) / ".cache" / "embeddings"


@contextmanager
def store_lock(root: Path | None = None) -> Iterator[None]:
    """Serialise first-time set-up of the local stores (SQLite schema migrations) between
    processes: two search workers starting together would otherwise both migrate."""
    folder = store_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".setup.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

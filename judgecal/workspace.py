"""Where a project's local state lives, and the one object a run carries it in.

The workspace is the nearest folder, from the working directory up, that holds an
``mlruns/`` folder (``JUDGECAL_HOME`` overrides); with none, the working directory. It
holds ``mlruns/mlflow.db`` (runs and the model registry), ``mlruns/artifacts/``,
``mlruns/optuna.db`` (studies) and ``.cache/`` (LM responses, sentence embeddings).

A :class:`Workspace` is built where a run starts (the ``judgecal`` command,
``run_calibration`` / ``run_search`` called from Python, ``load_judge``) and passed down:
it says where the store, the caches and the model files are, points MLflow at the store
once per run, and holds the models a run loads (:class:`LoadedModels`). Any layer may use
this module: it imports nothing else of judgecal but ``redact``.
"""

from __future__ import annotations

import fcntl
import os
import threading
import weakref
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


# Settings that the libraries read only from the environment. They are set once, where a
# run starts and before judgecal starts any thread, and never changed afterwards; a value
# the caller set wins.
PROCESS_ENVIRONMENT = {
    # MLflow draws a progress bar for every artifact it moves, even of a few kilobytes;
    # judgecal draws its own bars, and loading a judge should print nothing.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # Spin-waiting OpenMP threads make llama.cpp erratic when another process is busy;
    # the OpenMP runtime reads this once, when llama.cpp is first loaded.
    "OMP_WAIT_POLICY": "PASSIVE",
}


def set_process_environment() -> None:
    """Set :data:`PROCESS_ENVIRONMENT` where the caller has not: called where a run starts,
    before any thread, so that nothing changes ``os.environ`` while threads read it."""
    for name, value in PROCESS_ENVIRONMENT.items():
        if name not in os.environ:
            os.environ[name] = value


class LoadedModels:
    """Models loaded into memory (a llama.cpp model, the sentence encoder and the vectors it
    made, a model file's hash), each kept under its file's identity. A value is made once
    from its key and depends on nothing else, so whoever shares this object shares loading
    time and memory, never a result. A workspace holds one; workspaces given the same one
    (several runs in one session, the tests of one pytest worker) load each model once. A
    copy of it is the same object, and it does not cross processes: pickled, it arrives
    empty. Values with ``close()`` are closed when it is dropped or the process exits."""

    def __init__(self) -> None:
        self._values: dict[Hashable, Any] = {}
        self._lock = threading.RLock()  # a load may look up another value
        # Closes the values at exit, or when this object is collected; freed during the
        # interpreter's teardown instead, llama.cpp models print an ignored exception.
        weakref.finalize(self, _close_values, self._values)

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        """The value under ``key``, made by ``load()`` the first time (one load at a time)."""
        with self._lock:
            if key not in self._values:
                self._values[key] = load()
            return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __deepcopy__(self, memo: dict[int, Any]) -> LoadedModels:
        return self

    def __copy__(self) -> LoadedModels:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (LoadedModels, ())


def _close_values(values: dict[Hashable, Any]) -> None:
    for value in values.values():
        close = getattr(value, "close", None)
        if callable(close):
            close()
    values.clear()


class Workspace:
    """A project's local state for one run: where the store, the caches and the model
    files are, MLflow pointed at the store once, and the models the run loads.

    ``tracking_uri``: the MLflow store (default: ``MLFLOW_TRACKING_URI``, else the
    workspace's ``mlruns/mlflow.db``). ``models``: pass the same :class:`LoadedModels` to
    several workspaces to load each model once."""

    def __init__(self, root: Path, *, tracking_uri: str | None = None, models: LoadedModels | None = None) -> None:
        self.root = Path(root).resolve()
        self.tracking_uri = (
            tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store_dir(self.root) / 'mlflow.db'}"
        )
        self.models = models if models is not None else LoadedModels()
        self._tracking_open = False
        self._embedding_cache: Any = None

    @classmethod
    def find(
        cls, *, tracking_uri: str | None = None, models: LoadedModels | None = None, start: Path | None = None
    ) -> Workspace:
        """The workspace of the working directory (or ``start``): see :func:`workspace_root`."""
        return cls(workspace_root(start), tracking_uri=tracking_uri, models=models)

    def __repr__(self) -> str:
        from judgecal.redact import redact_url

        return f"Workspace({str(self.root)!r}, tracking_uri={redact_url(self.tracking_uri)!r})"

    @property
    def store_dir(self) -> Path:
        """``mlruns/``: the SQLite tracking database, artifacts and Optuna studies."""
        return store_dir(self.root)

    @property
    def artifacts_dir(self) -> Path:
        """Where a local store keeps run artifacts: ``mlruns/artifacts/``."""
        return self.store_dir / "artifacts"

    @property
    def dspy_cache_dir(self) -> Path:
        """DSPy's disk cache of LM responses; a repeated run is served from it."""
        return self.root / ".cache" / "dspy"

    @property
    def embedding_cache_dir(self) -> Path:
        """Sentence embeddings of the texts verifiers have seen; a repeated run loads no encoder."""
        return self.root / ".cache" / "embeddings"

    def project_path(self, path: str | Path) -> str:
        """A path as the project sees it: relative to the workspace when inside it, else only
        the file's name (the data fingerprint identifies the content)."""
        resolved = Path(path).resolve()
        try:
            return str(resolved.relative_to(self.root))
        except ValueError:
            return resolved.name

    @contextmanager
    def store_lock(self) -> Iterator[None]:
        """See :func:`store_lock`."""
        with store_lock(self.root):
            yield

    def open_tracking(self) -> str:
        """Point MLflow at the store, once per workspace (MLflow keeps its tracking and
        registry URIs process-wide): an unreachable server or database fails here, a new
        SQLite store gets its schema, one process at a time. Returns the store's URI."""
        if not self._tracking_open:
            _configure_tracking(self.tracking_uri, self.root)
            self._tracking_open = True
        return self.tracking_uri

    def use_dspy_cache(self) -> None:
        """Keep DSPy's response cache in the workspace rather than the user's home. The
        cache is DSPy's own process-wide setting; this is the one place judgecal sets it."""
        import dspy

        folder = self.dspy_cache_dir
        folder.mkdir(parents=True, exist_ok=True)
        dspy.configure_cache(enable_disk_cache=True, enable_memory_cache=True, disk_cache_dir=str(folder))

    def embedding_cache(self) -> Any:
        """The sentence embeddings kept on disk (keyed by the text's SHA-256 and the pinned
        weights), opened once per workspace: a repeated run loads no encoder at all."""
        if self._embedding_cache is None:
            import diskcache

            self._embedding_cache = diskcache.Cache(str(self.embedding_cache_dir), size_limit=2**30)
        return self._embedding_cache


def _configure_tracking(uri: str, root: Path) -> None:
    """Point MLflow at the store; quiet the SQLite schema migration it logs on first use.
    Called through :meth:`Workspace.open_tracking`, once per run."""
    import logging

    import mlflow

    if uri.startswith("sqlite:"):
        store_dir(root).mkdir(parents=True, exist_ok=True)
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


class StoreUnavailableError(ValueError):
    """A store a run writes to (the MLflow tracking store, an Optuna storage) cannot be
    reached: found before any model is called."""


class TrackingUnavailableError(StoreUnavailableError):
    """The MLflow tracking server does not answer: found before any model is called."""


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
    """``JUDGECAL_HOME``, else the nearest folder from ``start`` (the working directory) up
    that holds ``mlruns/``, else ``start`` itself."""
    override = os.environ.get("JUDGECAL_HOME")
    if override:
        return Path(override).expanduser().resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / STORE_DIR).is_dir():
            return folder
    return here


def store_dir(root: Path) -> Path:
    """``mlruns/``: the SQLite tracking database, artifacts and Optuna studies."""
    return root / STORE_DIR


@contextmanager
def store_lock(root: Path) -> Iterator[None]:
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

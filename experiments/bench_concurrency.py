"""Benchmark of judging with a remote model, several rows at once.

    .venv/bin/python experiments/bench_concurrency.py [--rows 160] [--latency 0.2] [--rate-limited 0.1]

A tiny OpenAI-compatible server on 127.0.0.1 (the standard library's ``http.server``)
answers every chat completion after a fixed latency, and answers a seeded share of the
requests with HTTP 429 (``Retry-After: 0.2``) instead. A zero-shot relevance judge on that
server judges the same rows file as ``judgecal judge --num-threads N`` does
(:func:`judgecal.export.adapters.judge_file`, no response cache, LiteLLM's own retries off
so that every 429 reaches the judge's retry policy: backoff from 0.2 s, up to 6 calls per
row). Printed: rows/s at 1, 4 and 16 threads and the 429s retried.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from rich.console import Console
from rich.table import Table


class SlowServer:
    """An OpenAI-compatible chat server with a fixed latency and some HTTP 429s."""

    def __init__(self, latency: float, rate_limited: float, seed: int = 0) -> None:
        self.latency = latency
        self.rate_limited = rate_limited
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.requests = 0
        self.refused = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                with server.lock:
                    server.requests += 1
                    refuse = server.random.random() < server.rate_limited
                    server.refused += refuse
                time.sleep(server.latency)
                if refuse:
                    body = {"error": {"message": "rate limit reached", "type": "rate_limit_error"}}
                    self.send(429, body, {"Retry-After": "0.2"})
                    return
                message = {"role": "assistant", "content": json.dumps({"relevant": True})}
                self.send(
                    200,
                    {
                        "id": "c",
                        "object": "chat.completion",
                        "created": 0,
                        "model": "judge",
                        "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    },
                )

            def send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server takes per request")
    parser.add_argument("--rate-limited", type=float, default=0.1, help="share of requests answered with HTTP 429")
    parser.add_argument("--threads", default="1,4,16")
    args = parser.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-benchmark-not-a-real-key")
    # As the judgecal command does: LiteLLM and DSPy read their model tables from the
    # installed package, not the network (set before either is imported).
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from judgecal.backends.settings import LMConfig
    from judgecal.export.adapters import judge_file
    from judgecal.export.bundle import bundle_from_judge, save_bundle
    from judgecal.export.flavor import load_judge
    from judgecal.judges.fitted import ProgramJudge
    from judgecal.judges.program import JudgeProgram, RetryPolicy
    from judgecal.tasks.registry import resolve_task

    console = Console()
    task = resolve_task("relevance")
    server = SlowServer(args.latency, args.rate_limited)
    table = Table(
        title=f"judgecal judge on a remote model: {args.rows} rows, {args.latency * 1000:.0f} ms per request, "
        f"{args.rate_limited:.0%} of requests answered HTTP 429",
        title_justify="left",
    )
    for column in ("threads", "seconds", "rows/s", "speed-up", "429s retried", "rows failed"):
        table.add_column(column, justify="right")
    try:
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            judge = ProgramJudge(task, JudgeProgram(task.signature), None, "remote")
            config = LMConfig(model="openai/judge", cache=False, num_retries=0)
            save_bundle(bundle_from_judge(judge, config), folder / "bundle")
            source = folder / "rows.jsonl"
            source.write_text(
                "".join(
                    json.dumps(
                        {"id": f"r{i}", "prompt": f"Question {i}: plan my week.", "attribute": "The user is vegan."}
                    )
                    + "\n"
                    for i in range(args.rows)
                )
            )
            first = None
            for threads in [int(t) for t in args.threads.split(",")]:
                loaded = load_judge(folder / "bundle", api_base=server.url)
                loaded.fitted.judge.retry = RetryPolicy(attempts=6, first_wait=0.2, max_wait=5)
                output = folder / f"verdicts-{threads}.jsonl"
                started = time.perf_counter()
                result = judge_file(loaded.fitted, source, output, num_threads=threads)
                seconds = time.perf_counter() - started
                rate = result.judged / seconds
                first = first or rate
                table.add_row(
                    str(threads),
                    f"{seconds:.1f}",
                    f"{rate:.1f}",
                    f"{rate / first:.1f}×",
                    str(result.retried.get("HTTP 429", 0)),
                    str(result.failed),
                )
    finally:
        server.close()
    console.print(table)
    console.print(f"server: {server.requests} requests, {server.refused} answered HTTP 429", highlight=False)


if __name__ == "__main__":
    main()

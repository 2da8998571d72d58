"""Browser check of what the MLflow UI shows after ``make demo``.

    .venv/bin/python experiments/check_ui.py [--out docs/images]

Starts ``judgecal ui`` on the project's store, opens in headless Chromium (Debian package
``chromium``) each judge's runs page, the newest run's page and its judge card, saves a
screenshot of each, and checks that:

* the runs page lists each judge's run by a name stating raw → calibrated κ (MLflow shows
  no metric column by default, so the name must carry the answer);
* the run page shows the run's description (the verdict sentence);
* the judge card's plots load: every image of ``card/judge_card.html``, as the artifact view
  fetches it, decodes as a PNG (and a screenshot shows the card in the artifact view).

Exits 0 when every check passes, 1 when one fails, 2 when there is nothing to check (no
runs, no browser).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

from judgecal.artifacts import CARD_DIR, HTML_CARD_FILE

REPO = Path(__file__).resolve().parents[1]
CARD_PAGE = f"{CARD_DIR}/{HTML_CARD_FILE}"
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def browser() -> str | None:
    return next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)


def chromium(binary: str, url: str, *, screenshot: Path | None = None, dom: bool = False, height: int = 1000) -> str:
    """Render ``url`` (its scripts run for a virtual 20 s) and return the DOM or save a PNG."""
    with tempfile.TemporaryDirectory() as profile:
        command = [
            binary,
            *BROWSER_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size=1600,{height}",
            "--virtual-time-budget=20000",
        ]
        command += ["--dump-dom"] if dom else [f"--screenshot={screenshot}"]
        done = subprocess.run([*command, url], capture_output=True, text=True, timeout=180)
    return done.stdout


def wait_for(port: int, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the MLflow UI did not answer on port {port}")


def newest_runs() -> list[tuple[str, str, str, str]]:
    """(experiment name, experiment id, run id, run name) of each judge's newest finished
    top-level run."""
    import mlflow

    from judgecal.workspace import Workspace

    Workspace.find().open_tracking()
    found = []
    for experiment in mlflow.search_experiments(filter_string="name LIKE 'judgecal/%'"):
        runs = mlflow.search_runs(
            [experiment.experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            output_format="list",
        )
        top = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
        if top:
            found.append((experiment.name, experiment.experiment_id, top[0].info.run_id, top[0].info.run_name))
    return found


def card_images(html: str) -> list[tuple[int, int]]:
    """Sizes of the PNG images embedded in a card page; an image that does not decode fails."""
    from PIL import Image

    sizes = []
    for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html):
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            image.load()
            sizes.append(image.size)
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "judgecal-ui")
    args = parser.parse_args()
    binary = browser()
    if binary is None:
        print("no Chromium on this machine (apt-get install chromium); nothing checked")
        return 2
    runs = newest_runs()
    if not runs:
        print("no judgecal runs in the store; run make demo first")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "judgecal.cli", "ui", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    failures: list[str] = []
    try:
        wait_for(port)
        base = f"http://127.0.0.1:{port}"
        for name, experiment_id, run_id, run_name in runs:
            slug = name.split("/", 1)[-1]
            runs_page = f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            chromium(binary, runs_page, screenshot=args.out / f"{slug}-runs.png")
            listed = chromium(binary, runs_page, dom=True)
            if "→" not in run_name or run_name not in listed:
                failures.append(f"{slug}: the runs page does not list {run_name!r}")
            run_page = f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
            chromium(binary, run_page, screenshot=args.out / f"{slug}-run.png")
            shown = chromium(binary, run_page, dom=True)
            if "agreement with humans" not in shown:
                failures.append(f"{slug}: the run page shows no verdict in its description")
            # The artifact view fetches the card from this endpoint and shows it in a frame; the
            # endpoint itself answers as a download, which a browser would not render.
            card = f"{base}/get-artifact?path={quote(CARD_PAGE)}&run_uuid={run_id}"
            with urllib.request.urlopen(card, timeout=30) as response:
                sizes = card_images(response.read().decode("utf-8"))
            if len(sizes) < 3 or min(w * h for w, h in sizes) < 10_000:
                failures.append(f"{slug}: the judge card's plots did not load ({sizes})")
            artifact_view = f"{base}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{CARD_PAGE}"
            chromium(binary, artifact_view, screenshot=args.out / f"{slug}-card.png", height=2600)
            print(f"{slug}: {run_name}; card plots {len(sizes)}; screenshots in {args.out}")
    finally:
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=30)
    for failure in failures:
        print(f"FAILED {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

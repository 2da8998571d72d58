"""Browser check of what the MLflow UI shows after ``make demo``, and the screenshots of
docs/mlflow-ui.md.

    .venv/bin/python experiments/check_ui.py [--out DIR] [--docs docs/images] [--judge relevance]

Starts ``judgecal ui`` on the project's store and drives headless Chromium (Debian package
``chromium``) over its DevTools pipe. For each judge it opens the runs page, the newest
run's page and its judge card, saves a screenshot of each in ``--out``, and checks that:

* the runs page lists each judge's run by a name stating raw → calibrated κ (MLflow shows
  no metric column by default, so the name must carry the answer);
* the run page shows the run's description (the verdict sentence);
* the judge card's plots load: every image of ``card/judge_card.html``, as the artifact view
  fetches it, decodes as a PNG (and a screenshot shows the card in the artifact view).
* the newest ``judgecal monitor`` run of a judge, if it has one: its page shows its
  description, and its ``monitor.png`` decodes (screenshots of the page and the plot).

With ``--docs DIR`` it also saves, for ``--judge``, the screenshots docs/mlflow-ui.md
shows, cropped to what each is about: the experiments list, the runs page with the
search's trials unfolded, the search's run with its description and metrics, its artifacts
with the judge card, its leaderboard, the registered model with its aliases, its newest
version with the champion decision, and the compare view of the judge's two newest
top-level runs. The UI's assistant panel, which MLflow opens on a browser's first visit,
is kept closed.

Exits 0 when every check passes, 1 when one fails, 2 when there is nothing to check (no
runs, no browser).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from judgecal.artifacts import CARD_DIR, HTML_CARD_FILE, LEADERBOARD_FILE

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
# MLflow's UI opens its assistant panel on a browser's first visit, over a third of the page.
CLOSED_ASSISTANT = {"mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true", "mlflow.assistant.panelOpen_v1": "false"}
RUNS_VIEW = "workflowType=machine_learning"  # without it, MLflow 3 shows its GenAI sidebar
SECTION = "Array.from(document.querySelectorAll('[role=button][aria-expanded=true]'))"  # a page's open sections
DOC_IMAGE_BYTES = 250_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def browser() -> str | None:
    return next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)


class Page:
    """One headless Chromium tab driven over ``--remote-debugging-pipe`` (the browser reads
    DevTools commands on descriptor 3 and answers on 4): no client library needed."""

    def __init__(self, binary: str, width: int = 1600, height: int = 1000) -> None:
        self._profile = tempfile.TemporaryDirectory()
        commands, self._write = os.pipe()
        self._read, answers = os.pipe()

        def plumbing() -> None:
            # dup first: a pipe end may already be descriptor 3 or 4, and dup2 onto itself
            # would leave it close-on-exec.
            read, write = os.dup(commands), os.dup(answers)
            os.dup2(read, 3)
            os.dup2(write, 4)

        self._process = subprocess.Popen(
            [binary, *BROWSER_FLAGS, f"--user-data-dir={self._profile.name}", "--remote-debugging-pipe"],
            preexec_fn=plumbing,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(commands)
        os.close(answers)
        self._buffer = b""
        self._id = 0
        self._session: str | None = None
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.resize(width, height)

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if self._session:
            message["sessionId"] = self._session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _receive(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError("the browser closed its DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def resize(self, width: int, height: int) -> None:
        self.size = (width, height)
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.send("Emulation.setDeviceMetricsOverride", metrics)

    def js(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def open(self, url: str, shows: str, timeout: float = 120) -> bool:
        """Go to ``url`` and wait until the page's text contains ``shows`` and has stopped
        changing (the UI fills tables in several steps)."""
        # A fresh load each time: moving between the UI's pages by their fragment alone can
        # leave the previous page's content in place.
        self.send("Page.navigate", {"url": "about:blank"})
        self.send("Page.navigate", {"url": url})
        if not self.until(f"document.body && document.body.innerText.includes({json.dumps(shows)})", timeout):
            return False
        self.settle()
        return True

    def until(self, condition: str, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.js(condition):
                    return True
            except RuntimeError:
                pass
            time.sleep(0.5)
        return False

    def settle(self, quiet: float = 2.0, timeout: float = 30) -> None:
        """Wait until the page's text and loading placeholders stay the same for ``quiet`` s."""
        probe = "document.body.innerText.length + ':' + document.querySelectorAll('[class*=skeleton]').length"
        deadline, last, since = time.monotonic() + timeout, None, time.monotonic()
        while time.monotonic() < deadline:
            now = self.js(probe)
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.25)

    def click(self, finder: str) -> bool:
        """Click the element the JavaScript expression ``finder`` returns (if any)."""
        return bool(self.js(f"(() => {{ const e = {finder}; if (!e) return false; e.click(); return true; }})()"))

    def box(self, finder: str) -> tuple[int, int, int, int] | None:
        """(left, top, right, bottom) in page pixels of the element ``finder`` returns."""
        found = self.js(
            f"(() => {{ const e = {finder}; if (!e) return null; const r = e.getBoundingClientRect();"
            " return [r.left + scrollX, r.top + scrollY, r.right + scrollX, r.bottom + scrollY]; })()"
        )
        return tuple(round(v) for v in found) if found else None  # type: ignore[return-value]

    def screenshot(self) -> bytes:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        return base64.b64decode(data)

    def close(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        os.close(self._write)
        os.close(self._read)
        self._profile.cleanup()


def with_text(selector: str, text: str) -> str:
    """JavaScript: the innermost element matching ``selector`` whose text contains ``text``."""
    return (
        f"Array.from(document.querySelectorAll({json.dumps(selector)}))"
        f".filter(e => e.innerText && e.innerText.includes({json.dumps(text)})).pop()"
    )


def save_png(png: bytes, path: Path, crop: tuple[int, int, int, int] | None = None, *, small: bool = False) -> Path:
    """Save a screenshot, cropped; ``small`` keeps a documentation image under
    ``DOC_IMAGE_BYTES`` with a 256-colour palette (UI screenshots have few colours)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        picture = image.convert("RGB")
    if crop is not None:
        left, top, right, bottom = crop
        picture = picture.crop((max(0, left), max(0, top), min(picture.width, right), min(picture.height, bottom)))
    if small:
        picture = picture.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    picture.save(path, optimize=True)
    if small and path.stat().st_size > DOC_IMAGE_BYTES:
        print(f"note: {path} is {path.stat().st_size // 1000} KB")
    return path


def wait_for(port: int, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the MLflow UI did not answer on port {port}")


@dataclass
class JudgeRuns:
    """A judge's experiment and its newest finished top-level runs, newest first."""

    experiment: str
    experiment_id: str
    runs: list[tuple[str, str]]  # (run id, run name)
    registered: str | None
    search: tuple[str, str] | None  # the newest search's parent run
    newest_version: str | None = None  # of the registered model
    monitors: list[tuple[str, str]] | None = None  # judgecal monitor's runs (run id, run name), newest first

    @property
    def slug(self) -> str:
        return self.experiment.split("/", 1)[-1]


def judges() -> list[JudgeRuns]:
    """Each judge's experiment with its newest finished top-level runs and its registered model."""
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
        top = [
            run for run in runs if "mlflow.parentRunId" not in run.data.tags and "judgecal.monitor" not in run.data.tags
        ]
        monitors = [run for run in runs if "judgecal.monitor" in run.data.tags]
        if top:
            registered = next(
                (r.data.tags["judgecal.registry"] for r in top if "judgecal.registry" in r.data.tags), None
            )
            search = next((r for r in top if r.data.tags.get("judgecal.kind") == "search"), None)
            name = registered.split(" v", 1)[0] if registered else None
            versions = mlflow.MlflowClient().search_model_versions(f"name = '{name}'") if name else []
            found.append(
                JudgeRuns(
                    experiment.name,
                    experiment.experiment_id,
                    [(run.info.run_id, run.info.run_name) for run in top],
                    name,
                    (search.info.run_id, search.info.run_name) if search else None,
                    max((v.version for v in versions), key=int, default=None),
                    [(run.info.run_id, run.info.run_name) for run in monitors],
                )
            )
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


def check_judge(page: Page, base: str, judge: JudgeRuns, out: Path) -> list[str]:
    """The three checks of one judge, with a screenshot of each page."""
    failures = []
    slug, experiment_id = judge.slug, judge.experiment_id
    run_id, run_name = judge.runs[0]
    page.resize(1600, 1000)
    listed = page.open(f"{base}/#/experiments/{experiment_id}/runs?{RUNS_VIEW}", run_name)
    save_png(page.screenshot(), out / f"{slug}-runs.png")
    if "→" not in run_name or not listed:
        failures.append(f"{slug}: the runs page does not list {run_name!r}")
    shown = page.open(f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{RUNS_VIEW}", "agreement with humans")
    save_png(page.screenshot(), out / f"{slug}-run.png")
    if not shown:
        failures.append(f"{slug}: the run page shows no verdict in its description")
    # The artifact view fetches the card from this endpoint and shows it in a frame; the
    # endpoint itself answers as a download, which a browser would not render.
    card = f"{base}/get-artifact?path={quote(CARD_PAGE)}&run_uuid={run_id}"
    with urllib.request.urlopen(card, timeout=30) as response:
        sizes = card_images(response.read().decode("utf-8"))
    if len(sizes) < 3 or min(w * h for w, h in sizes) < 10_000:
        failures.append(f"{slug}: the judge card's plots did not load ({sizes})")
    page.resize(1600, 2600)
    page.open(f"{base}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{CARD_PAGE}?{RUNS_VIEW}", "Path:")
    page.until("document.querySelector('iframe') !== null", 30)
    page.settle()
    save_png(page.screenshot(), out / f"{slug}-card.png")
    print(f"{slug}: {run_name}; card plots {len(sizes)}; screenshots in {out}")
    return failures


def check_monitor(page: Page, base: str, judge: JudgeRuns, out: Path) -> list[str]:
    """The newest ``judgecal monitor`` run of a judge: its page shows its description, and
    its plot decodes as a PNG and is shown in the artifact view."""
    from PIL import Image

    from judgecal.artifacts import MONITOR_PLOT

    run_id, run_name = judge.monitors[0] if judge.monitors else (None, None)
    if run_id is None:
        return []
    slug, failures = judge.slug, []
    page.resize(1600, 1000)
    if not page.open(f"{base}/#/experiments/{judge.experiment_id}/runs/{run_id}?{RUNS_VIEW}", "Re-checks"):
        failures.append(f"{slug}: the monitor's run page shows no description")
    save_png(page.screenshot(), out / f"{slug}-monitor-run.png")
    plot = f"{base}/get-artifact?path={MONITOR_PLOT}&run_uuid={run_id}"
    with urllib.request.urlopen(plot, timeout=30) as response, Image.open(io.BytesIO(response.read())) as image:
        image.load()
        if image.size[0] * image.size[1] < 100_000:
            failures.append(f"{slug}: the monitor's plot is {image.size}")
        height = image.size[1]
    page.resize(1600, max(1000, height + 400))  # a panel per sequence: the whole plot in the shot
    page.open(f"{base}/#/experiments/{judge.experiment_id}/runs/{run_id}/artifacts/{MONITOR_PLOT}?{RUNS_VIEW}", "Path:")
    page.settle()
    save_png(page.screenshot(), out / f"{slug}-monitor-plot.png")
    print(f"{slug}: {run_name}; monitor screenshots in {out}")
    return failures


def main_box(page: Page) -> tuple[int, int, int, int]:
    """The page's main panel (right of MLflow's sidebar)."""
    return page.box("document.querySelector('main') || document.body") or (0, 0, *page.size)


def doc_screenshots(page: Page, base: str, judge: JudgeRuns, out: Path) -> list[str]:
    """The screenshots docs/mlflow-ui.md shows, each cropped to what it is about: the run
    pages are of the judge's newest search, else of its newest run."""
    missing = []
    experiment_id = judge.experiment_id
    run_id, run_name = judge.search or judge.runs[0]
    width = 1600

    page.resize(width, 1000)
    if page.open(f"{base}/#/experiments?{RUNS_VIEW}", judge.experiment):
        table = page.box(with_text("table, [role=table], [role=grid]", judge.experiment))
        bottom = table[3] + 60 if table else 400
        save_png(page.screenshot(), out / "ui-experiments.png", (0, 0, width, bottom), small=True)
    else:
        missing.append("experiments list")

    if page.open(f"{base}/#/experiments/{experiment_id}/runs?{RUNS_VIEW}", run_name):
        # A search's trials are child runs, folded under the parent: unfold the first.
        page.click("document.querySelector('[data-component-id*=runnamecellrenderer]')")
        page.settle()
        rows = page.js("document.querySelectorAll('.ag-center-cols-container [role=row]').length") or 1
        grid = page.box("document.querySelector('.ag-root')")
        bottom = (grid[1] + 40 + 32 * (rows + 1)) if grid else 600
        save_png(page.screenshot(), out / "ui-runs.png", (0, 0, width, min(bottom, 1000)), small=True)
    else:
        missing.append("runs page")

    page.resize(width, 1400)
    if page.open(f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{RUNS_VIEW}", "agreement with humans"):
        page.click(with_text("button, [role=button]", "Show more"))
        page.settle()
        metrics = page.box(with_text("div", "Metrics (") + "?.parentElement")
        parameters = page.box(with_text("h1, h2, h3, h4, h5, span, div", "Parameters ("))
        bottom = parameters[1] - 8 if parameters else 1400
        left = main_box(page)[0]
        save_png(page.screenshot(), out / "ui-run.png", (left, 0, width, bottom), small=True)
        if metrics is None:
            missing.append("the run's metrics")
    else:
        missing.append("run page")

    page.resize(width, 1100)
    artifacts = f"{base}/#/experiments/{experiment_id}/runs/{run_id}/artifacts"
    if page.open(f"{artifacts}/{CARD_PAGE}?{RUNS_VIEW}", "Path:"):
        page.click(with_text("[role=treeitem], li, div", "card") + "?.querySelector('svg, span')")
        page.until("document.querySelector('iframe') !== null", 30)
        page.settle()
        save_png(page.screenshot(), out / "ui-artifacts.png", (main_box(page)[0], 0, width, 1100), small=True)
    else:
        missing.append("artifacts with the card")

    page.resize(width, 1300)
    if page.open(f"{artifacts}/{LEADERBOARD_FILE}?{RUNS_VIEW}", "Selection"):
        last = page.box("Array.from(document.querySelectorAll('li')).pop()")  # the selection's last step
        bottom = last[3] + 30 if last else 1300
        save_png(page.screenshot(), out / "ui-leaderboard.png", (main_box(page)[0], 0, width, bottom), small=True)
    else:
        missing.append("leaderboard (the judge has no search)")

    page.resize(width, 1000)
    if judge.registered and page.open(f"{base}/#/models/{quote(judge.registered)}?{RUNS_VIEW}", "Version"):
        versions = page.box(with_text("table, [role=table], .ant-table", "Version"))
        bottom = versions[3] + 70 if versions else 600
        save_png(page.screenshot(), out / "ui-registry.png", (main_box(page)[0], 0, width, bottom), small=True)
    else:
        missing.append("registered model")
    if judge.registered and page.open(
        f"{base}/#/models/{quote(judge.registered)}/versions/{judge.newest_version}?{RUNS_VIEW}", "Champion decision"
    ):
        tags = page.box(with_text("[role=row], tr", "judgecal.champion"))
        bottom = tags[3] + 16 if tags else 600
        save_png(page.screenshot(), out / "ui-registry-version.png", (main_box(page)[0], 0, width, bottom), small=True)
    else:
        missing.append("registered version's champion decision")

    if len(judge.runs) >= 2:
        ids = [run for run, _ in judge.runs[:2]]
        compare = (
            f"{base}/#/compare-runs?runs={quote(json.dumps(ids))}"
            f"&experiments={quote(json.dumps([experiment_id]))}&{RUNS_VIEW}"
        )
        page.resize(width, 2400)
        if page.open(compare, "calibrated.kappa"):
            # What differs between the runs: fold the plots, the parameters (every setting, most
            # of them equal) and the artifacts; keep only the metrics that differ.
            for section in ("Visualizations", "Parameters", "Artifacts"):
                page.click(f"{SECTION}.find(e => e.innerText.trim() === {json.dumps(section)})")
            page.click(
                f"(() => {{ const h = {SECTION}.find(e => e.innerText.trim() === 'Metrics');"
                " return Array.from(document.querySelectorAll('[role=switch]'))"
                ".find(s => h.compareDocumentPosition(s) & Node.DOCUMENT_POSITION_FOLLOWING); })()"
            )
            page.settle()
            last = page.box(with_text("[role=row], tr", "judgecal.task"))
            bottom = last[3] + 24 if last else 2400
            save_png(page.screenshot(), out / "ui-compare.png", (main_box(page)[0], 0, width, bottom), small=True)
        else:
            missing.append("compare view")
    else:
        missing.append("compare view (the judge has one top-level run)")
    return missing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "judgecal-ui")
    parser.add_argument("--docs", type=Path, help="also save the screenshots of docs/mlflow-ui.md here")
    parser.add_argument("--judge", default="relevance", help="the judge the documentation's screenshots show")
    args = parser.parse_args()
    binary = browser()
    if binary is None:
        print("no Chromium on this machine (apt-get install chromium); nothing checked")
        return 2
    found = judges()
    if not found:
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
    page = None
    try:
        wait_for(port)
        base = f"http://127.0.0.1:{port}"
        page = Page(binary)
        # Close the assistant before the UI's first load: /health is a page of the same origin.
        page.open(f"{base}/health", "OK")
        page.js("".join(f"localStorage.setItem('{key}', '{value}');" for key, value in CLOSED_ASSISTANT.items()))
        for judge in found:
            failures += check_judge(page, base, judge, args.out)
            failures += check_monitor(page, base, judge, args.out)
        if args.docs is not None:
            chosen = next((j for j in found if j.slug == args.judge), None)
            if chosen is None:
                failures.append(f"no judge {args.judge!r} for the documentation's screenshots")
            else:
                args.docs.mkdir(parents=True, exist_ok=True)
                missing = doc_screenshots(page, base, chosen, args.docs)
                failures += [f"{args.judge}: no screenshot of the {what}" for what in missing]
    finally:
        if page is not None:
            page.close()
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=30)
    for failure in failures:
        print(f"FAILED {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

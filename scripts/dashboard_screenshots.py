"""Screenshots of every page of ``cnnlab dashboard`` for docs/dashboard/ (and the README).

Trains what the pages show unless ``--runs`` already holds it: the first tutorial's CNN on Fashion-MNIST
(``fashion_mnist_cnn``), a two-variant ``cnnlab compare`` of the number of first-layer filters, and a
third training that is photographed while it runs (then stopped with Ctrl-C, so the table also shows an
interrupted run). Then drives Debian's Chromium through each page with Playwright.

    PYTHONPATH=src .venv/bin/python scripts/dashboard_screenshots.py [--runs /tmp/dash-runs] [--out docs/dashboard]
        [--dataset fashion-mnist-sample] [--epochs 8]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

from cnnlab.app.dashboard.server import Background

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]
STATIC_HEADER = "header.top { position: static !important; }"  # a sticky header repeats in full-page shots


def cnnlab(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cnnlab", *args, "--no-progress"], stdout=subprocess.DEVNULL)


def prepare(runs: Path, dataset: str, epochs: int) -> None:
    """The finished runs the pages show (kept in ``runs`` for the next call)."""
    if not (runs / "fashion_mnist_cnn" / "results.json").is_file():
        assert cnnlab("train", "--config", "fashion_mnist_cnn", "--dataset", dataset, "--epochs", str(epochs),
                      "--out", str(runs / "fashion_mnist_cnn"), "--overwrite").wait() == 0
    if not (runs / "compare-filters" / "compare.json").is_file():
        assert cnnlab("compare", "fashion_mnist_cnn32", "--vary", "model.layers.0.filters=16,64", "--batch-size", "128",
                      "--dataset", dataset, "--epochs", "4", "--out", str(runs / "compare-filters"),
                      "--overwrite").wait() == 0


def lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


def shot(page: Page, url: str, out: Path, *, wait: str, before=None, full: bool = True) -> None:
    page.goto(url)
    page.add_style_tag(content=STATIC_HEADER)
    page.wait_for_selector(wait, timeout=300_000)
    if before:
        before(page)
    page.wait_for_timeout(800)  # let charts and lazy images settle
    page.screenshot(path=str(out), full_page=full)
    print(f"wrote {out}")


def api(base: str, path: str) -> dict:
    with urllib.request.urlopen(base + path, timeout=300) as r:
        return json.loads(r.read())


def live_shots(page: Page, srv: Background, runs: Path, out: Path, dataset: str) -> None:
    """Starts a training, photographs its page during epoch 2, then stops it with Ctrl-C."""
    live = runs / "fashion_mnist_cnn-live"
    proc = cnnlab("train", "--config", "fashion_mnist_cnn", "--dataset", dataset, "--epochs", "8", "--out", str(live),
                  "--overwrite")
    try:
        while lines(live / "metrics.jsonl") < 3 and proc.poll() is None:
            time.sleep(0.5)
        shot(page, srv.url + "runs/fashion_mnist_cnn-live", out / "live.png", wait="#curves[data-epochs='3']",
             before=lambda pg: pg.wait_for_function(  # some batches into epoch 4: the bar has something to show
                 "parseFloat(document.querySelector('#progress-fill')?.style.width || '0') > 5", timeout=300_000),
             full=False)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)


def explorer(page: Page) -> None:
    page.click("#layer-conv2d_1 .channel[data-channel='5']")
    page.wait_for_selector("#layer-conv2d_1 .detail .math")
    page.click("#attr-go")
    page.wait_for_selector("#attr-canvas[data-state='drawn']")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="/tmp/cnnlab-dashboard-runs", help="RUNS_DIR to fill and show (kept)")
    ap.add_argument("--out", default="docs/dashboard")
    ap.add_argument("--dataset", default="fashion-mnist-sample", help="bundled: no download, quick to train")
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1] / "src"))
    prepare(runs, args.dataset, args.epochs)
    srv = Background(runs, display="runs")
    base = srv.url
    rid = "fashion_mnist_cnn"
    # an image the model gets right whose Grad-CAM has something to show
    image = next(f"t-{i}" for i in range(100) if api(base, f"api/runs/{rid}/attribution?image=t-{i}")["map"]
                 ["degenerate"] is None)
    conf = api(base, f"api/runs/{rid}")["results"]["confusion"]
    t, p = max(((i, j) for i in range(10) for j in range(10) if i != j), key=lambda ij: conf[ij[0]][ij[1]])
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        # bypass_csp: the page's CSP (script-src 'self') forbids the string predicates wait_for_function evaluates
        page = browser.new_page(viewport={"width": 1400, "height": 900}, bypass_csp=True)
        live_shots(page, srv, runs, out, args.dataset)
        shot(page, base, out / "runs.png", wait="table.runs tbody tr", full=False)
        shot(page, base + f"runs/{rid}", out / "run.png", wait="#curves .uplot")
        shot(page, base + f"runs/{rid}/confusion/{t}/{p}", out / "confusion-cell.png", wait="#cell-images img",
             full=False)
        shot(page, base + f"runs/{rid}/explorer?image={image}", out / "explorer.png", wait="#layer-conv2d canvas",
             before=explorer)
        shot(page, base + f"runs/{rid}/units", out / "units.png", wait=".filters canvas", full=False)
        shot(page, base + f"runs/{rid}/layers/conv2d_1/units/5", out / "unit.png", wait="#maximize[src]",
             before=lambda pg: pg.wait_for_function("document.querySelector('#maximize').naturalWidth > 0",
                                                    timeout=300_000), full=False)
        shot(page, base + f"runs/{rid}/architecture", out / "architecture.png", wait=".arch .box")
        ids = [r["id"] for r in api(base, "api/runs?sort=name&desc=false")["rows"] if r["group"] == "compare-filters"]
        shot(page, base + "compare?runs=" + ",".join(ids), out / "compare.png", wait="#same-image canvas")
        browser.close()
    srv.stop()


if __name__ == "__main__":
    main()

"""Speed of ``cnnlab dashboard`` over real HTTP (uvicorn on 127.0.0.1), against the issue's targets.

* runs table at ``--runs`` generated run folders (run.json, the tutorial's full config.yaml, 5 epochs of
  metrics.jsonl each): the first ``GET /api/runs`` of the first server on the folder (every run's files
  read; also for run.json files written before training recorded the model, when config.yaml is
  parsed), of a later server (the index it stored in the cnnlab cache reused: ``stat`` calls only) and
  the next requests (index in memory); target < 1 s;
* explorer first response for the tutorial CNN (``cnn_64x2`` on the Fashion-MNIST test set; its initial
  weights unless ``--train``): every layer's activations plus the probabilities for an image not asked
  for before; measured on a fresh server (model and test set loaded by that request) and with the run
  loaded; target < 1 s;
* Grad-CAM for an image and class not asked for before (Captum), and the same again from the cache;
  target < 2 s;
* SSE latency: from a metrics.jsonl line being written to its ``epoch`` event arriving at a client
  reading ``/api/runs/ID/events``; target < 2 s (the server looks every 0.25 s);
* loading the dataset's test split alone (what the explorer's cold start reads) vs both splits.

The machine is shared and noisy: every figure is the median of ``--repeats`` (the JSON keeps each one).

    PYTHONPATH=src .venv/bin/python benchmarks/dashboard_speed.py [--runs 1000] [--repeats 7]
        [--dataset fashion-mnist] [--train] [--json docs/results/dashboard_speed.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch

from cnnlab.app.dashboard.server import Background
from cnnlab.config import dump_yaml
from cnnlab.data.datasets import load_dataset, load_test_split
from cnnlab.data.prepare import load_test_data
from cnnlab.io import cache_dir
from cnnlab.models.build import build_model
from cnnlab.runs.experiment import save_weights, train
from cnnlab.runs.options import experiment_config
from cnnlab.runs.run_dir import WEIGHTS, RunDir

TARGETS = {"runs_table_first_s": 1.0, "runs_table_first_legacy_s": 1.0, "runs_table_stored_s": 1.0, "runs_table_s": 1.0, "explorer_cold_s": 1.0, "explorer_first_s": 1.0,
           "gradcam_s": 2.0, "gradcam_cached_s": 2.0, "sse_latency_s": 2.0}


def get(url: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as r:
        body = r.read()
    return time.perf_counter() - t0, body


def fake_runs(root: Path, n: int, *, legacy: bool = False) -> None:
    """``n`` run folders as cnnlab train leaves them (minus weights), 5 epochs each, with the full resolved
    config of the tutorial CNN; ``legacy``: run.json from before it recorded the model and min_delta."""
    config = dump_yaml(experiment_config("fashion_mnist_cnn", epochs=5))
    for i in range(n):
        path = root / f"run-{i:04d}"
        path.mkdir(parents=True)
        hist = [{"epoch": e, "train_loss": 1 / e, "train_acc": 0.8 + e / 100, "val_loss": 1.1 / e,
                 "val_acc": 0.79 + e / 100 + i / 1e5, "seconds": 10.0, "lr": 0.001} for e in range(1, 6)]
        meta = {"status": "done", "dataset": "fashion-mnist", "params": 243786, "epochs_planned": 5, "epochs": 5,
                "monitor": "val_loss", "mode": "min", "test_acc": 0.9, "wall_seconds": 55.0,
                "started": f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}"}
        if not legacy:
            meta.update(model="cnn_64x2", model_layers=0, min_delta=0.0)
        (path / "run.json").write_text(json.dumps(meta))
        (path / "config.yaml").write_text(config)
        (path / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in hist))


def _first_listing(root: Path, n: int) -> tuple[float, Background]:
    srv = Background(root)
    t, body = get(srv.url + "api/runs")
    assert len(json.loads(body)["rows"]) == n
    return t, srv


def _forget_indexes() -> None:
    for store in (cache_dir() / "dashboard").glob("index-*.json"):
        store.unlink()  # as for the very first server on a folder: every run's files are read


def bench_table(tmp: Path, n: int, repeats: int) -> dict:
    root, legacy_root = tmp / "many", tmp / "legacy"
    fake_runs(root, n)
    fake_runs(legacy_root, n, legacy=True)
    cold, legacy, stored, warm = [], [], [], []
    for _ in range(repeats):
        _forget_indexes()
        t, srv = _first_listing(root, n)
        cold.append(t)
        srv.stop()
        t, srv = _first_listing(root, n)  # a new server finds the index the first one stored
        stored.append(t)
        warm.append(statistics.median(get(srv.url + "api/runs")[0] for _ in range(5)))  # index in memory
        srv.stop()
        _forget_indexes()
        t, srv = _first_listing(legacy_root, n)
        legacy.append(t)
        srv.stop()
    return {"runs": n, "runs_table_first_s": cold, "runs_table_first_legacy_s": legacy, "runs_table_stored_s": stored,
            "runs_table_s": warm}


def tutorial_run(out: Path, dataset: str, trained: bool) -> None:
    """The tutorial CNN's run folder: trained for one epoch, or (speed does not depend on the weights'
    values) written with its initial weights as a run directory that has not trained yet would have."""
    cfg = experiment_config("fashion_mnist_cnn", epochs=1, dataset=dataset)
    if trained:
        train(cfg, out=out, progress=False, log=lambda s: None)
        return
    test = load_test_data(cfg.data)
    run = RunDir.create(out)
    run.write_config(cfg)
    save_weights(build_model(cfg.model, input_shape=test.shape, num_classes=len(test.classes)), run.file(WEIGHTS))
    run.update_meta(status="done", dataset=dataset, input_shape=list(test.shape), classes=list(test.classes),
                    normalizer={"mean": [0.2860], "std": [0.3530]}, monitor="val_loss", mode="min")


def bench_model(tmp: Path, dataset: str, repeats: int, trained: bool) -> dict:
    root = tmp / "runs"
    tutorial_run(root / "tutorial", dataset, trained)
    cold, first, cam, cached = [], [], [], []
    image = 0
    for _ in range(repeats):
        srv = Background(root)  # a fresh server: this request loads the model and the test set
        t, body = get(srv.url + f"api/runs/tutorial/explore?image=t-{image}")
        cold.append(t)
        assert len(json.loads(body)["layers"]) == 7
        for _ in range(3):  # with the run loaded: images not asked for before
            image += 1
            first.append(get(srv.url + f"api/runs/tutorial/explore?image=t-{image}")[0])
            url = srv.url + f"api/runs/tutorial/attribution?image=t-{image}&method=gradcam&target={image % 10}"
            t, body = get(url)
            assert json.loads(body)["cached"] is False
            cam.append(t)
            cached.append(get(url)[0])
        srv.stop()
    return {"explorer_cold_s": cold, "explorer_first_s": first, "gradcam_s": cam, "gradcam_cached_s": cached}


def bench_sse(tmp: Path, repeats: int) -> dict:
    root = tmp / "live"
    run = root / "r"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"status": "running", "monitor": "val_loss"}))
    (run / "config.yaml").write_text("model: {name: cnn_64x2}\n")
    (run / "metrics.jsonl").write_text("")
    srv = Background(root)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    conn.request("GET", "/api/runs/r/events?max_seconds=600", headers={"Host": "127.0.0.1"})
    resp = conn.getresponse()
    arrived: dict[int, float] = {}
    got = threading.Condition()

    def read() -> None:
        event = None
        while True:
            try:
                line = resp.readline()
            except (OSError, AttributeError):  # the connection closed at the end of the benchmark
                return
            if not line:
                return
            text = line.decode().strip()
            if text.startswith("event:"):
                event = text.split(": ", 1)[1]
            elif text.startswith("data:") and event == "epoch":
                with got:
                    arrived[json.loads(text[5:])["epoch"]] = time.perf_counter()
                    got.notify_all()

    threading.Thread(target=read, daemon=True).start()
    latency, lines = [], ""
    for epoch in range(1, repeats + 1):
        time.sleep(0.37 * (epoch % 3) + 0.1)  # not in step with the server's polling
        lines += json.dumps({"epoch": epoch, "train_loss": 1.0 / epoch}) + "\n"
        tmp_file = run / ".metrics.tmp"
        tmp_file.write_text(lines)
        t0 = time.perf_counter()
        os.replace(tmp_file, run / "metrics.jsonl")  # as cnnlab.io.write_atomic does
        with got:
            got.wait_for(lambda e=epoch: e in arrived, timeout=30)
        latency.append(arrived[epoch] - t0)
    conn.close()
    srv.stop()
    return {"sse_latency_s": latency}


def bench_test_split(dataset: str, repeats: int) -> dict:
    """What the explorer's cold start reads: the test split alone vs both splits (interleaved)."""
    load_dataset(dataset)  # the files' checksums are verified once per cache
    both, alone = [], []
    for _ in range(min(repeats, 5)):
        both.append(get_time(lambda: load_dataset(dataset)))
        alone.append(get_time(lambda: load_test_split(dataset)))
    return {"load_both_splits_s": both, "load_test_split_s": alone}


def get_time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dataset", default="fashion-mnist", help="the tutorial CNN's dataset (its test set is loaded)")
    ap.add_argument("--train", action="store_true", help="train the tutorial CNN one epoch (default: its initial "
                                                         "weights; the speed does not depend on them)")
    ap.add_argument("--json", help="write every measurement here")
    args = ap.parse_args()
    out: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                 "dataset": args.dataset, "trained": args.train, "load_average": os.getloadavg(),
                 "torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": args.repeats}
    with tempfile.TemporaryDirectory(prefix="cnnlab-dash-bench-") as tmp:
        os.environ.setdefault("CNNLAB_CACHE", str(Path(tmp) / "cache"))
        out.update(bench_table(Path(tmp), args.runs, args.repeats))
        out.update(bench_model(Path(tmp), args.dataset, args.repeats, args.train))
        out.update(bench_sse(Path(tmp), args.repeats))
        out.update(bench_test_split(args.dataset, args.repeats))
    print(f"{'measurement':<28} {'median':>9} {'min':>9} {'max':>9}   target")
    for key, target in TARGETS.items():
        v = out[key]
        print(f"{key:<28} {statistics.median(v):>8.3f}s {min(v):>8.3f}s {max(v):>8.3f}s   < {target:g} s "
              f"{'ok' if statistics.median(v) < target else 'MISSED'}")
    for key in ("load_both_splits_s", "load_test_split_s"):
        print(f"{key:<28} {statistics.median(out[key]):>8.3f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

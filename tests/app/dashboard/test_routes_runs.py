"""The runs API with TestClient: the table, a run's facts, the SSE stream gaining a line, files by allow-list,
traversal attempts, a corrupt folder listed as broken (never a 500), confusion cells and test images."""

from __future__ import annotations

import io
import json
import os
import threading
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from cnnlab.app.dashboard import create_app
from cnnlab.views import cell_images


def client(root, **kw) -> TestClient:
    return TestClient(create_app(root, **kw), base_url="http://127.0.0.1")


@pytest.fixture
def runs(tmp_path, make_run):
    root = tmp_path / "runs"
    make_run(root, "good", history=[{"epoch": 1, "val_loss": 0.5, "val_acc": 0.8}], test_acc=0.8)
    make_run(root, "better", model="resnet18", test_acc=0.95)
    make_run(root, "corrupt")
    (root / "corrupt" / "run.json").write_bytes(b"\x00\xff not json")
    (root / "good" / "model.safetensors").write_bytes(b"weights")
    (root / "good" / "figures").mkdir()
    Image.new("L", (4, 4)).save(root / "good" / "figures" / "curves.png")
    return root


def test_the_table_lists_sorts_and_filters(runs):
    c = client(runs)
    d = c.get("/api/runs").json()
    assert d["total"] == 3 and d["root"] == str(runs) and set(d["columns"]) >= {"name", "best_val_acc", "test_acc"}
    assert [r["name"] for r in c.get("/api/runs", params={"sort": "test_acc"}).json()["rows"]] == ["better", "good",
                                                                                                  "corrupt"]
    assert [r["name"] for r in c.get("/api/runs", params={"where": "model = resnet18"}).json()["rows"]] == ["better"]
    assert [r["name"] for r in c.get("/api/runs", params={"q": "goo"}).json()["rows"]] == ["good"]
    bad = c.get("/api/runs", params={"where": "val_acc >>> 1"})
    assert bad.status_code == 400 and bad.json()["error"].startswith("cannot read the filter")


def test_a_corrupt_folder_is_listed_as_broken_not_a_500(runs):
    c = client(runs)
    row = next(r for r in c.get("/api/runs").json()["rows"] if r["name"] == "corrupt")
    assert row["status"] == "broken" and "corrupt/run.json is not UTF-8 text" in row["error"]
    details = c.get("/api/runs/corrupt")
    assert details.status_code == 200 and details.json()["meta"] is None
    assert c.get("/runs/corrupt").status_code == 200  # its page opens and says so
    explore = c.get("/api/runs/corrupt/explore", params={"image": "t-0"})
    assert explore.status_code == 400 and explore.json()["error"].startswith("run corrupt has no weights yet")


def test_a_runs_facts(runs):
    d = client(runs).get("/api/runs/good").json()
    assert d["row"]["status"] == "finished" and d["path"] == f"{runs}/good"
    assert "model:" in d["config"] and d["history"] == [{"epoch": 1, "val_loss": 0.5, "val_acc": 0.8}]
    assert d["results"] is None and d["summary"] is None and d["figures"] == ["curves.png"]
    assert d["downloads"] == [{"name": "model.safetensors", "bytes": 7}]
    assert d["commands"]["curves"] == f"cnnlab show {runs}/good curves"


def test_files_are_served_by_allow_list_only(runs, tmp_path):
    c = client(runs)
    assert c.get("/runs/good/files/model.safetensors").content == b"weights"
    assert c.get("/runs/good/figures/curves.png").headers["content-type"] == "image/png"
    (tmp_path / "secret.png").write_bytes(b"secret")
    os.symlink(tmp_path / "secret.png", runs / "good" / "figures" / "leak.png")
    os.symlink(tmp_path / "secret.png", runs / "good" / "report.html")
    for path in ("/runs/good/files/run.json", "/runs/good/files/config.yaml", "/runs/good/files/model.onnx",
                 "/runs/good/figures/leak.png", "/runs/good/files/report.html", "/runs/good/figures/nope.png"):
        r = c.get(path)
        assert r.status_code == 404 and b"secret" not in r.content, path


@pytest.mark.parametrize("path", [
    "/runs/%2e%2e/files/model.safetensors", "/runs/..%2f..%2fetc/files/passwd", "/runs/good/files/..%2frun.json",
    "/runs/good/files/%2e%2e%2f%2e%2e%2fsecret", "/runs/%2fetc%2fpasswd", "/api/runs/%2e%2e", "/api/runs/..",
    "/runs/good/figures/..%2F..%2Fsecret.png", "/runs//etc/passwd", "/runs/good/files//etc/passwd",
    "/api/runs/good/images/..%2f..%2fsecret", "/static/..%2f..%2f..%2fpyproject.toml"])
def test_traversal_attempts_are_404(runs, path):
    r = client(runs).get(path)
    assert r.status_code == 404 and b"weights" not in r.content and b"secret" not in r.content


def test_a_run_linked_in_from_outside_is_not_listed(runs, tmp_path, make_run):
    make_run(tmp_path / "outside", "private")
    os.symlink(tmp_path / "outside" / "private", runs / "private")
    c = client(runs)
    assert "private" not in [r["id"] for r in c.get("/api/runs").json()["rows"]]
    assert c.get("/api/runs/private").status_code == 404 and c.get("/runs/private").status_code == 404


def _events(text):
    out = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in lines:
            out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_the_event_stream_gains_each_new_line(tmp_path, make_run):
    first = {"epoch": 1, "train_loss": 1.0, "val_acc": 0.5}
    run = make_run(tmp_path, "live", status="running", history=[first])
    (run / "progress.json").write_text(json.dumps({"epoch": 2, "batch": 3, "batches": 10, "pid": os.getpid(),
                                                   "host": os.uname().nodename}))
    second = {"epoch": 2, "train_loss": 0.5, "val_acc": 0.7}

    def train_on():
        time.sleep(0.8)
        (run / "metrics.jsonl").write_text(json.dumps(first) + "\n" + json.dumps(second) + "\n")
        time.sleep(0.8)
        meta = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps({**meta, "status": "done"}))

    writer = threading.Thread(target=train_on)
    writer.start()
    with client(tmp_path).stream("GET", "/api/runs/live/events", params={"max_seconds": 30}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        body = "".join(r.iter_text())
    writer.join()
    ev = _events(body)
    assert ev[:3] == [("epoch", first), ("progress", {"epoch": 2, "batch": 3, "batches": 10, "pid": os.getpid(),
                                                      "host": os.uname().nodename}), ("status", "running")]
    assert ("epoch", second) in ev  # the line added while the stream was open
    assert ev[-2:] == [("status", "finished"), ("end", "finished")]


def test_a_rewritten_shorter_history_resets_the_stream(tmp_path, make_run):
    run = make_run(tmp_path, "r", status="done", history=[{"epoch": 1}, {"epoch": 2}])
    c = client(tmp_path)
    assert [e for e, _ in _events(c.get("/api/runs/r/events").text)] == ["epoch", "epoch", "status", "end"]
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    assert _events(c.get("/api/runs/r/events").text)[0] == ("epoch", {"epoch": 1})


def test_confusion_cells_list_their_images_highest_loss_first(trained_runs):
    c = client(trained_runs)
    d = c.get("/api/runs/base/confusion/6/0").json()  # true Shirt, predicted T-shirt/top
    ctx = c.app.state.dash.context(c.app.state.dash.row("base"))
    idx, losses = cell_images(ctx.probs(), ctx.view.test.labels, 6, 0)
    assert d["count"] == len(idx) and [im["index"] for im in d["images"]] == idx.tolist()
    assert [im["loss"] for im in d["images"]] == sorted((im["loss"] for im in d["images"]), reverse=True)
    assert d["count_results"] == json.loads((trained_runs / "base" / "results.json").read_text())["confusion"][6][0]
    assert d["command"] == f"cnnlab show {trained_runs}/base mistakes"
    assert c.get("/api/runs/base/confusion/10/0").status_code == 400


def test_test_images_and_their_pngs(trained_runs):
    c = client(trained_runs)
    d = c.get("/api/runs/base/test-images", params={"offset": 10, "limit": 5, "label": 3}).json()
    assert d["total"] == 100 and len(d["images"]) == 5 and all(im["label"] == 3 for im in d["images"])
    png = c.get("/api/runs/base/images/t-7", params={"scale": 2})
    pixels = torch.from_numpy(np.asarray(Image.open(io.BytesIO(png.content))).copy())
    ctx = c.app.state.dash.context(c.app.state.dash.row("base"))
    assert pixels.shape == (56, 56) and torch.equal(pixels[::2, ::2], ctx.view.test.images[7, 0])
    assert c.get("/api/runs/base/images/t-99999").status_code == 404

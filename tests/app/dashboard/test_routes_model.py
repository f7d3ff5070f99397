"""Inside a trained run with TestClient: uploads (limits, corrupt files, bombs), the explorer's layers and
probabilities, pixel arithmetic, Captum attribution with its cache, units, architecture, and a slow
computation that answers 503 while the rest of the page keeps answering."""

from __future__ import annotations

import base64
import io
import shutil
import struct
import threading
import zlib

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from cnnlab.app.dashboard import create_app, routes_model
from cnnlab.app.dashboard.store import CACHE
from cnnlab.inspect.units import unit_scores


def _f32(text):
    return np.frombuffer(base64.b64decode(text), "<f4")


@pytest.fixture(scope="module")
def c(trained_runs):
    with TestClient(create_app(trained_runs), base_url="http://127.0.0.1") as client:
        yield client


@pytest.fixture(scope="module")
def ctx(c):
    return c.app.state.dash.context(c.app.state.dash.row("base"))


def _png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _huge_png(width, height):
    """A PNG whose header claims width × height pixels (no pixel data): a decompression bomb's calling card."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_an_upload_is_decoded_to_the_runs_input_and_explored(c, ctx):
    image = ctx.view.test.images[5, 0].numpy()
    up = c.post("/api/runs/base/upload", content=_png(np.kron(image, np.ones((2, 2), np.uint8))))  # 56×56
    assert up.status_code == 200 and up.json()["shape"] == [1, 28, 28] and up.json()["key"].startswith("u-")
    d = c.get("/api/runs/base/explore", params={"image": up.json()["key"]}).json()
    assert d["image"]["label"] is None and np.frombuffer(base64.b64decode(d["image"]["data"]), np.uint8).shape == (784,)
    test = c.get("/api/runs/base/explore", params={"image": "t-5"}).json()
    # the same picture at twice the size, decoded back to 28×28: the same prediction as the test image itself
    assert d["predicted"] == test["predicted"] and abs(sum(d["probs"]) - 1) < 1e-5


@pytest.mark.parametrize(("body", "status", "message"), [
    (b"", 400, "the upload is empty"),
    (b"GIF89a nonsense", 400, "the upload cannot be used: "),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 400, "the upload cannot be used: "),
    (b"just some text", 400, "the upload cannot be used: not an image (unrecognised format); send another image "
                             "file (PNG, JPEG, BMP, GIF or WebP)"),
    (_huge_png(20000, 20000), 400, "too many pixels"),
])
def test_bad_uploads_are_one_line_errors(c, body, status, message):
    r = c.post("/api/runs/base/upload", content=body)
    assert r.status_code == status and message in r.json()["error"] and "\n" not in r.json()["error"]


def test_a_multipart_upload_is_the_same_image_as_the_raw_body(c, ctx):
    png = _png(ctx.view.test.images[5, 0].numpy())
    raw = c.post("/api/runs/base/upload", content=png, headers={"Content-Type": "image/png"})
    form = c.post("/api/runs/base/upload", files={"file": ("x.png", png, "image/png")}, data={"note": "hi"})
    other = c.post("/api/runs/base/upload", files={"image": ("x.png", png, "image/png")})  # curl -F image=@x.png
    assert raw.status_code == form.status_code == other.status_code == 200
    assert raw.json()["key"] == form.json()["key"] == other.json()["key"]  # the key is the decoded pixels' hash
    r = c.post("/api/runs/base/upload", data={"note": "no file"}, files={"x": (None, b"text")})
    assert r.status_code == 400 and "the form has no file" in r.json()["error"] and "--data-binary" in r.json()["error"]


def test_uploads_over_the_limit_are_refused(trained_runs):
    small = TestClient(create_app(trained_runs, upload_limit=1000), base_url="http://127.0.0.1")
    r = small.post("/api/runs/base/upload", content=b"x" * 1001)
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    assert small.post("/api/runs/base/upload", content=_png(np.zeros((28, 28), np.uint8))).status_code == 200


def test_the_explorer_shows_every_layer_in_model_order(c, ctx):
    d = c.get("/api/runs/base/explore", params={"image": "t-0"}).json()
    assert [(x["name"], x["layout"], x["shape"]) for x in d["layers"]] == [
        ("conv2d", "maps", [8, 26, 26]), ("max_pooling2d", "maps", [8, 13, 13]), ("conv2d_1", "maps", [8, 11, 11]),
        ("max_pooling2d_1", "maps", [8, 5, 5]), ("flatten", "same", [200]), ("dense", "vector", [10])]
    conv = d["layers"][0]
    x = ctx.view.normalizer(ctx.view.test.images[:1])
    with torch.no_grad():
        want = ctx.model.conv2d(x)[0].numpy()
    np.testing.assert_allclose(_f32(conv["data"]).reshape(8, 26, 26), want, rtol=1e-5, atol=1e-6)
    probs = ctx.predictor.predict(ctx.view.test.images[:1].numpy())[0]
    np.testing.assert_allclose(d["probs"], probs, rtol=1e-6)
    assert d["command"] == f"cnnlab show {ctx.row.path.parent}/base feature-maps --images 0"
    assert c.get("/api/runs/base/explore", params={"image": "u-unknown"}).status_code == 404


def test_pixel_arithmetic_matches_the_maps(c):
    d = c.get("/api/runs/base/explore", params={"image": "t-3"}).json()
    maps = _f32(d["layers"][2]["data"]).reshape(8, 11, 11)
    m = c.get("/api/runs/base/arithmetic", params={"image": "t-3", "layer": "conv2d_1", "channel": 4, "row": 2,
                                                   "col": 6}).json()
    assert m["kind"] == "conv" and (m["channel"], m["row"], m["col"]) == (4, 2, 6)
    assert len(m["kernel"]) == 8 and m["actual"] == pytest.approx(float(maps[4, 2, 6]), rel=1e-6)
    assert m["output"] == pytest.approx(m["actual"], rel=1e-5, abs=1e-6)
    best = c.get("/api/runs/base/arithmetic", params={"image": "t-3", "layer": "max_pooling2d", "channel": 1}).json()
    assert best["kind"] == "pool" and best["output"] == pytest.approx(float(_f32(d["layers"][1]["data"])
                                                                            .reshape(8, 13, 13)[1].max()), rel=1e-6)
    soft = c.get("/api/runs/base/arithmetic", params={"image": "t-3", "layer": "softmax"}).json()
    np.testing.assert_allclose(soft["probs"], d["probs"], rtol=1e-5)
    assert c.get("/api/runs/base/arithmetic", params={"image": "t-3", "layer": "flatten"}).status_code == 400
    assert c.get("/api/runs/base/arithmetic", params={"image": "t-3", "layer": "conv2d", "row": 1}).status_code == 400


@pytest.mark.parametrize("method", ["gradcam", "saliency", "integrated-gradients", "occlusion"])
def test_attribution_is_computed_once_then_cached(c, ctx, method):
    params = {"image": "t-1", "method": method, "target": 2}
    first = c.get("/api/runs/base/attribution", params=params).json()
    again = c.get("/api/runs/base/attribution", params=params).json()
    assert (first["map"]["h"], first["map"]["w"], first["target"]) == (28, 28, 2)
    assert first["cached"] is False and again["cached"] is True and again["map"]["data"] == first["map"]["data"]
    view = {"integrated-gradients": "saliency"}.get(method, method)
    assert first["command"] == f"cnnlab show {ctx.row.path.parent}/base {view} --images 1"
    assert len(list((ctx.row.path / CACHE).glob("attr-*.npy"))) >= 1


def test_attribution_mistakes(c):
    assert "valid: gradcam, integrated-gradients, occlusion, saliency" in c.get("/api/runs/base/attribution", params={"image": "t-1", "method": "lime"}
                                               ).json()["error"]
    assert c.get("/api/runs/base/attribution", params={"image": "t-1", "target": 10}).status_code == 400
    default = c.get("/api/runs/base/attribution", params={"image": "t-1"}).json()
    assert default["method"] == "gradcam" and 0 <= default["target"] < 10  # the predicted class


def test_occlusion_window_is_used_and_checked(c):
    params = {"image": "t-1", "method": "occlusion", "target": 2}
    maps = [c.get("/api/runs/base/attribution", params={**params, "window": w}).json()["map"]["data"] for w in (2, 7)]
    assert maps[0] != maps[1]  # two patch sizes, two maps (the parameter was ignored: one map for every window)
    default = c.get("/api/runs/base/attribution", params=params).json()["map"]["data"]
    assert default == c.get("/api/runs/base/attribution", params={**params, "window": 4}).json()["map"]["data"]
    for window in (0, 999, -3):
        r = c.get("/api/runs/base/attribution", params={**params, "window": window})
        assert r.status_code == 400 and "\n" not in r.json()["error"], window
        assert "`window`" in r.json()["error"] and "use 1..28 pixels" in r.json()["error"]
    r = c.get("/api/runs/base/attribution", params={"image": "t-1", "method": "saliency", "window": 4})
    assert r.status_code == 400 and "use method=occlusion" in r.json()["error"]


def test_units_filters_and_top_images(c, ctx):
    layers = c.get("/api/runs/base/layers").json()
    assert [(x["name"], x["kernel"], x["filters_shape"]) for x in layers["layers"]] == [
        ("conv2d", [8, 1, 3, 3], [8, 1, 3, 3]), ("conv2d_1", [8, 8, 3, 3], [8, 1, 3, 3])]
    u = c.get("/api/runs/base/layers/conv2d_1/units/5").json()
    scores = unit_scores(ctx.model, ctx.view.test.images, ctx.view.normalizer, "conv2d_1")[:, 5]
    assert [t["index"] for t in u["top"]] == np.argsort(-scores, kind="stable")[:9].tolist()
    assert u["units"] == 8 and u["kernel"]["shape"] == [8, 3, 3]
    assert c.get("/api/runs/base/layers/conv2d_1/units/8").status_code == 400
    assert c.get("/api/runs/base/layers/nope/units/0").status_code == 400


@pytest.mark.slow
def test_activation_maximisation_is_a_cached_png(c, ctx):
    r = c.get("/api/runs/base/layers/conv2d/units/2/maximize", params={"steps": 16})
    assert r.headers["content-type"] == "image/png" and Image.open(io.BytesIO(r.content)).size == (112, 112)
    assert len(list((ctx.row.path / CACHE).glob("max-*.png"))) == 1
    assert c.get("/api/runs/base/layers/conv2d/units/2/maximize", params={"steps": 16}).content == r.content


def test_the_architecture(c):
    d = c.get("/api/runs/base/architecture").json()
    assert [(r["name"], r["output_shape"], r["params"], r["units"]) for r in d["rows"]] == [
        ("input", "(None, 28, 28, 1)", 0, False), ("conv2d", "(None, 26, 26, 8)", 80, True),
        ("max_pooling2d", "(None, 13, 13, 8)", 0, False), ("conv2d_1", "(None, 11, 11, 8)", 584, True),
        ("max_pooling2d_1", "(None, 5, 5, 8)", 0, False), ("flatten", "(None, 200)", 0, False),
        ("dense", "(None, 10)", 2010, False)]
    assert d["total_params"] == 2674


def test_a_slow_computation_answers_503_and_the_page_keeps_answering(trained_runs, monkeypatch):
    slow = TestClient(create_app(trained_runs, job_timeout=0.3), base_url="http://127.0.0.1")
    original, gate = routes_model._predict, threading.Event()

    def stuck(*args):
        gate.wait(30)
        return original(*args)

    monkeypatch.setattr(routes_model, "_predict", stuck)
    r = slow.get("/api/runs/lr/predict", params={"image": "t-0"})
    assert r.status_code == 503 and r.headers["retry-after"] == "2" and "still computing" in r.json()["error"]
    (job,) = slow.app.state.dash.jobs._inflight.values()  # answered while the computation still runs
    assert not job.done()
    assert slow.get("/api/runs").status_code == 200 and slow.get("/runs/lr").status_code == 200
    gate.set()
    assert job.result(30)["classes"][0] == "T-shirt/top"  # it finished after all
    slow.app.state.dash.close()


def test_the_dashboard_writes_nothing_but_its_cache(trained_runs, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(trained_runs / "lr", root / "lr", ignore=shutil.ignore_patterns(".cache"))

    def files():
        return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}

    before = files()
    c = TestClient(create_app(root), base_url="http://127.0.0.1")
    key = c.post("/api/runs/lr/upload", content=_png(np.full((28, 28), 200, np.uint8))).json()["key"]
    for path in ("/api/runs", "/api/runs/lr", "/api/runs/lr/explore?image=t-2", f"/api/runs/lr/explore?image={key}",
                 "/api/runs/lr/attribution?image=t-2&method=occlusion", "/api/runs/lr/confusion/1/1",
                 "/api/runs/lr/layers/conv2d/units/0", "/api/runs/lr/architecture", "/api/runs/lr/events",
                 "/api/runs/lr/predict?image=t-3", "/runs/lr/files/model.safetensors"):
        assert c.get(path).status_code == 200, path
    after = files()
    assert {k: v for k, v in after.items() if not k.startswith("lr/.cache/dashboard/")} == before
    assert any(k.startswith("lr/.cache/dashboard/") for k in after)

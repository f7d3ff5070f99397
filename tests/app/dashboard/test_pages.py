"""The HTML pages: a stable URL each, their scripts and the vendored chart library served from the package,
404 pages for unknown runs, and names escaped."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from cnnlab.app.dashboard import create_app


@pytest.fixture
def c(tmp_path, make_run):
    make_run(tmp_path, "r")
    make_run(tmp_path, "s")
    return TestClient(create_app(tmp_path), base_url="http://127.0.0.1")


@pytest.mark.parametrize(("path", "page"), [
    ("/", "runs"), ("/runs/r", "run"), ("/runs/r/explorer", "explorer"), ("/runs/r/units", "units"),
    ("/runs/r/layers/conv2d/units/3", "unit"), ("/runs/r/architecture", "architecture"),
    ("/runs/r/confusion/1/2", "cell"), ("/compare?runs=r,s", "compare")])
def test_every_page_has_a_stable_url_and_its_script(c, path, page):
    r = c.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert f'data-page="{page}"' in r.text and f'src="/static/{page}.js"' in r.text
    assert 'src="/static/common.js"' in r.text and "http://" not in r.text and "https://" not in r.text  # no CDN
    assert c.get(f"/static/{page}.js").status_code == 200


def test_charts_are_vendored_with_their_licence(c):
    assert "uPlot.iife.min.js" in c.get("/runs/r").text and "uPlot.iife.min.js" not in c.get("/runs/r/units").text
    js = c.get("/static/vendor/uPlot.iife.min.js")
    assert js.status_code == 200 and "uPlot" in js.text[:200]
    assert "MIT License" in c.get("/static/vendor/uPlot.LICENSE").text
    assert c.get("/static/style.css").status_code == 200 and c.get("/static/math.js").status_code == 200


def test_unknown_runs_are_404_pages(c):
    for path in ("/runs/nope", "/runs/nope/explorer", "/compare?runs=r,nope", "/runs/r/confusion/x/1"):
        r = c.get(path)
        assert r.status_code == 404, path
    assert "All runs" in c.get("/runs/nope").text


def test_a_unit_out_of_range_or_a_layer_without_units_is_a_404_page(trained_runs):
    c = TestClient(create_app(trained_runs), base_url="http://127.0.0.1")
    assert c.get("/runs/base/layers/conv2d/units/7").status_code == 200  # 8 units: 0..7
    for path, why in [("/runs/base/layers/conv2d/units/999", "layer conv2d of run base has units 0..7; there is no unit 999"),
                      ("/runs/base/layers/conv2d/units/8", "there is no unit 8"),
                      ("/runs/base/layers/conv2d/units/-1", "there is no unit -1"),
                      ("/runs/base/layers/nope/units/0", "run base has no layer nope with units")]:
        r = c.get(path)
        assert r.status_code == 404 and "All runs" in r.text and why in r.text, path
    assert c.get("/api/runs/base/layers/conv2d/units/999").status_code == 400  # the API's answer is unchanged


def test_names_from_the_url_are_escaped(c):
    r = c.get("/runs/r/layers/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E/units/0")
    assert r.status_code == 200 and "<img src=x" not in r.text and "&lt;img src=x onerror=alert(1)&gt;" in r.text


def test_unknown_addresses(c):
    assert c.get("/no/such/page").status_code == 404 and "All runs" in c.get("/no/such/page").text
    assert c.get("/api/nothing").json() == {"error": "Not Found"}

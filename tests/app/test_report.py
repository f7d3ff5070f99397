"""The HTML report of tiny 1-epoch runs of the bundled Fashion-MNIST sample: structure, self-containment and
what headless Chromium actually draws."""

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from cnnlab.app.report import build_report, confusion_html
from cnnlab.errors import CnnlabError
from cnnlab.runs.experiment import train
from cnnlab.runs.options import experiment_config

TINY_CNN = [{"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"}, {"type": "MaxPooling2D"},
            {"type": "Flatten"}, {"type": "Dense", "units": "num_classes", "activation": "softmax"}]
TINY_DNN = [{"type": "Flatten"}, {"type": "Dense", "units": 16, "activation": "relu"},
            {"type": "Dense", "units": "num_classes", "activation": "softmax"}]


def _train(tmp, layers):
    out = tmp / "run"
    cfg = experiment_config(dataset="fashion-mnist-sample", epochs=1, batch_size=256,
                            overrides=[("model.layers", layers)])
    with pytest.MonkeyPatch.context() as mp:  # a module fixture is set up before the per-test cache exists
        mp.setenv("CNNLAB_CACHE", str(tmp / "cache"))
        assert train(cfg, out=out, progress=False, log=lambda s: None).failed is None
    return out


def _quiet(line: str) -> None:
    raise AssertionError(f"a view could not be drawn: {line}")


class _Page(HTMLParser):
    """Collects what the structural checks need: ids, every src/href, the <img> sources, a few tags."""

    def __init__(self):
        super().__init__()
        self.ids, self.links, self.imgs, self.tags = set(), [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "id" in a:
            self.ids.add(a["id"])
        for key in ("src", "href"):
            if key in a:
                self.links.append(a[key])
        if tag == "img":
            self.imgs.append(a.get("src", ""))


def _parse(path):
    page = _Page()
    page.feed(path.read_text())
    return page


@pytest.fixture(scope="module")
def cnn_report(tmp_path_factory):
    run = _train(tmp_path_factory.mktemp("cnn"), TINY_CNN)
    assert build_report(run, log=_quiet) == run / "report.html"
    return run / "report.html"


@pytest.fixture(scope="module")
def dnn_report(tmp_path_factory):
    run = _train(tmp_path_factory.mktemp("dnn"), TINY_DNN)
    out = tmp_path_factory.mktemp("elsewhere") / "dnn.html"
    assert build_report(run, out=out, log=_quiet) == out
    return out


def test_cnn_report_has_every_section_and_is_self_contained(cnn_report):
    page = _parse(cnn_report)
    assert {"run", "config", "summary", "curves", "metrics", "per-class", "confusion", "predictions", "mistakes",
            "feature-maps", "filters", "attribution", "occlusion", "gradcam", "architecture"} <= page.ids
    assert "templates" not in page.ids and "maximize" not in page.ids and "not-shown" not in page.ids
    # Every image is an embedded PNG that decodes; nothing points at the network or at other files.
    assert len(page.imgs) >= 10
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    assert all(link.startswith(("data:", "#")) for link in page.links)
    text = cnn_report.read_text()
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:|//)", text, re.I)
    assert "<script" not in text.lower() and "@import" not in text
    assert "fashion-mnist-sample" in text and "Total params: <b>" in text and "details" in page.tags
    assert "Not applicable to this model: templates." in text and "cnnlab report --maximize" in text


def test_cnn_report_numbers_match_the_run(cnn_report):
    import json

    text = cnn_report.read_text()
    run = cnn_report.parent
    meta = json.loads((run / "run.json").read_text())
    results = json.loads((run / "results.json").read_text())
    assert f"{meta['params']:,}" in text
    # The fp32 re-evaluation shown on the page agrees with training's own evaluation to rounding.
    shown = float(re.search(r"<b>([0-9.]+)</b><span>test accuracy</span>", text).group(1))
    assert shown == pytest.approx(results["test_acc"], abs=0.01)
    # The confusion table holds the 1,000 test images: 10 rows of 10 cells.
    table = text[text.index('<table class="confusion">'):]
    table = table[:table.index("</table>")]
    cells = [int(v) for v in re.findall(r'<td style="[^"]*" title="[^"]*">(\d+)</td>', table)]
    assert len(cells) == 100 and sum(cells) == 1000
    assert "filters: 4" in text  # the resolved config is embedded


def test_dense_report_shows_templates_not_filters(dnn_report):
    page = _parse(dnn_report)
    assert {"templates", "predictions", "mistakes", "architecture", "confusion"} <= page.ids
    assert not {"filters", "feature-maps", "occlusion", "gradcam", "attribution"} & page.ids
    assert "not-shown" not in page.ids
    assert all(src.startswith("data:image/png;base64,") for src in page.imgs)
    assert "Not applicable to this model: feature-maps, filters, occlusion, gradcam, maximize." in dnn_report.read_text()


def test_confusion_html_shades_by_row_share():
    html = confusion_html(np.array([[8, 2], [0, 10]]), ["cat", "a <dog>"])
    assert "a &lt;dog&gt;" in html and "<dog>" not in html
    assert "rgba(46,125,79,0.80)" in html  # diagonal: 8 of 10, green
    assert "rgba(192,57,43,0.80)" in html  # 2 of 10 wrong, stretched x4, red
    assert 'style="color:#b8bec7"' in html  # an empty cell is not shaded


def test_report_errors_are_one_line(tmp_path):
    with pytest.raises(CnnlabError, match="not a cnnlab run directory") as err:
        build_report(tmp_path)
    assert "\n" not in str(err.value)


def test_report_out_must_be_html(cnn_report, tmp_path):
    with pytest.raises(CnnlabError, match=r"^`out` .*report.png: the report is one HTML file; give a name ending in "
                                          r"\.html$"):
        build_report(cnn_report.parent, out=tmp_path / "report.png")
    assert not (tmp_path / "report.png").exists()


def test_a_run_without_a_finished_epoch_has_nothing_to_report(cnn_report, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(cnn_report.parent, run)
    (run / "metrics.jsonl").write_text("")
    with pytest.raises(CnnlabError, match="has no finished epoch .metrics.jsonl is empty.; train it before reporting"):
        build_report(run)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_chromium_renders_the_report(cnn_report, tmp_path, skip_unless_ci):
    if CHROMIUM is None:
        skip_unless_ci("headless Chromium not installed (Debian: apt-get install chromium)")
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1280,2400",
           f"--screenshot={shot}", cnn_report.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-500:]}"
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert img.shape == (2400, 1280)
    assert img.std() > 12  # text, tables and figures, not a blank page (a near-empty page is < 1)
    top = img[:300, 100:1180]  # title, subtitle and the navigation bar
    assert top.std() > 10 and (top < 100).mean() > 0.002  # dark title text on the light page
    # The page has figures in its first screen: plenty of distinct grey levels, not just text on white.
    assert len(np.unique(img.astype(np.uint8))) > 100


def test_figures_dir_and_extra_views_save_the_demo_pictures(cnn_report, tmp_path):
    figs = tmp_path / "figures"
    build_report(cnn_report.parent, out=tmp_path / "r.html", figures_dir=figs, extra_views=("kernels", "saliency"))
    names = {p.name for p in figs.glob("*.png")}
    assert {"curves.png", "occlusion.png", "gradcam.png", "kernels.png", "saliency.png"} <= names
    assert (tmp_path / "r.html").stat().st_size > 0


def test_the_timestamp_of_an_unfinished_run_is_not_called_finished(dnn_run, tmp_path):
    import json

    from cnnlab.app.report import _run_facts
    from cnnlab.views import ViewContext

    run = tmp_path / "run"
    shutil.copytree(dnn_run, run)
    assert "<th>Finished</th>" in _run_facts(ViewContext(run))
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "status": "interrupted"}))
    facts = _run_facts(ViewContext(run))
    assert "<th>Finished</th>" not in facts and "<th>Last updated</th>" in facts


def test_without_its_test_images_the_report_leaves_out_only_what_needs_them(tmp_path, image_folder):
    import json

    images = tmp_path / "clothes"
    shutil.copytree(image_folder, images)
    cfg = experiment_config(dataset=f"folder:{images}", epochs=1, batch_size=32,
                            overrides=[("model.layers", TINY_CNN), ("data.image_size", 16)])
    run = tmp_path / "run"
    assert train(cfg, out=run, progress=False, log=lambda s: None).failed is None
    images.rename(tmp_path / "moved")
    notes: list[str] = []
    page_path = build_report(run, log=notes.append)
    page, text = _parse(page_path), page_path.read_text()
    assert {"run", "config", "summary", "curves", "metrics", "per-class", "confusion", "filters", "architecture",
            "not-shown"} <= page.ids
    assert not {"predictions", "mistakes", "feature-maps", "occlusion", "gradcam"} & page.ids
    saved = json.loads((run / "results.json").read_text())
    assert f"<b>{saved['test_acc']:.4f}</b><span>test accuracy</span>" in text  # the numbers saved at the end
    assert "From results.json, the evaluation at the end of training" in text and "not found here" in text
    for view in ("predictions", "mistakes", "feature-maps", "occlusion", "gradcam"):
        assert f"{view}: needs the test images, which are not here" in text
    assert len(notes) == 1 and notes[0].startswith("note: report without the figures of test images: image folder ")
    full = build_report(run, out=tmp_path / "full.html", data_dir=str(tmp_path / "moved"), log=_quiet)
    assert {"predictions", "occlusion"} <= _parse(full).ids and "not-shown" not in _parse(full).ids


def test_a_run_with_neither_test_images_nor_results_is_one_error_and_no_file(tmp_path):
    from pathlib import Path

    from cnnlab.errors import CnnlabError
    from cnnlab.runs.imported import import_keras

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "keras" / "functional_rescaling.h5"
    run = import_keras(fixture, out=tmp_path / "imported", log=lambda s: None).run  # no dataset: no results.json
    notes: list[str] = []
    with pytest.raises(CnnlabError, match=r"^the report needs test results: the run names no dataset "):
        build_report(run.path, log=notes.append)
    assert notes == [] and not (run.path / "report.html").exists()  # was a note, then "has the run finished?"

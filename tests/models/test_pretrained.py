"""Pretrained weights: the official table, finding/downloading files, adapting them to the model.

Downloads go to a local ``http.server`` on 127.0.0.1 serving generated files; nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from cnnlab.config import ModelConfig
from cnnlab.errors import CnnlabError
from cnnlab.models import MODELS, Weights, create_model, model_meta, model_names
from cnnlab.models.pretrained import (
    apply_pretrained,
    head_parameters,
    load_initial_weights,
    load_pretrained,
    pretrained_path,
    published_weights,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def build(arch: str, *, meta: bool = False, **kw) -> nn.Module:
    kw.setdefault("num_classes", 1000)
    kw.setdefault("input_shape", (3, 224, 224))
    if meta:  # shapes only: for checks that do not need values
        with torch.device("meta"):
            return create_model(arch, **kw)
    torch.manual_seed(len(arch) + kw["num_classes"])
    return create_model(arch, **kw)


# --- the table ---------------------------------------------------------------------------------------------

def publish(monkeypatch, arch: str, weights: Weights) -> None:
    """Points ``arch``'s declared weights at ``weights`` for one test."""
    entry = MODELS.get(arch)
    monkeypatch.setitem(MODELS._items, arch, replace(entry, meta=replace(entry.meta, weights=weights)))


PRETRAINED = {name: model_meta(name).weights for name in model_names() if model_meta(name).weights}


def test_table_lists_official_torchvision_files():
    assert {"vgg16", "vgg19", "resnet18", "resnet34", "resnet50", "googlenet", "inception_v3", "mobilenet_v2",
            "alexnet"} <= set(PRETRAINED)
    for arch, spec in PRETRAINED.items():
        assert published_weights(arch) is spec
        assert re.fullmatch(r"https://download\.pytorch\.org/models/[a-z0-9_]+(-owt)?-[0-9a-f]{8}\.pth",
                            spec.url)
        assert spec.file_name.endswith(f"-{spec.sha256}.pth")  # torchvision's hash-in-the-name convention
        assert spec.num_classes == 1000
        assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
        assert spec.transform_input == (arch in ("googlenet", "inception_v3"))
    assert PRETRAINED["resnet18"].url == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert PRETRAINED["inception_v3"].input_size == 299 and PRETRAINED["vgg16"].input_size == 224
    assert PRETRAINED["googlenet"].builder_options == {"transform_input": True}


# --- adapting weights to the model -------------------------------------------------------------------------

def test_other_class_count_replaces_only_the_head():
    source = build("resnet18")
    target = build("resnet18", num_classes=2, input_shape=(3, 64, 64))
    report = load_pretrained(target, source.state_dict(), arch="resnet18")
    assert report.reinitialized == ["fc.weight", "fc.bias"] and report.dropped == ["fc.weight", "fc.bias"]
    assert target.fc.weight.shape == (2, 512)
    for key, value in target.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, source.state_dict()[key]), key
    assert "re-initialised fc" in str(report)


def test_vgg_at_50px_restarts_every_fc_layer_from_the_changed_width():
    report = load_pretrained(build("vgg16", num_classes=2, input_shape=(3, 50, 50), meta=True),
                             build("vgg16", meta=True).state_dict(), arch="vgg16")
    assert report.reinitialized == [f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]
    assert all(k.startswith("features.") for k in report.loaded) and len(report.loaded) == 26


def test_vgg_at_224px_with_other_classes_keeps_the_pretrained_fc_layers():
    report = load_pretrained(build("vgg16", num_classes=2, meta=True), build("vgg16", meta=True).state_dict(),
                             arch="vgg16")
    assert report.reinitialized == ["classifier.6.weight", "classifier.6.bias"]


def test_grayscale_model_sees_a_gray_image_as_the_rgb_model_sees_it_in_three_channels():
    rgb = build("resnet18").eval()
    gray = build("resnet18", input_shape=(1, 32, 32)).eval()
    report = load_pretrained(gray, rgb.state_dict(), arch="resnet18")
    assert report.adapted == ["conv1.weight"] and report.reinitialized == []
    torch.testing.assert_close(gray.conv1.weight, rgb.conv1.weight.sum(dim=1, keepdim=True))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(gray(x), rgb(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)


def test_aux_heads_are_dropped_when_the_model_has_none():
    with_aux = build("googlenet", aux_logits=True, input_shape=(3, 32, 32)).eval()
    plain = build("googlenet", input_shape=(3, 32, 32)).eval()
    report = load_pretrained(plain, with_aux.state_dict(), arch="googlenet")
    assert report.dropped and all(k.startswith(("aux1.", "aux2.")) for k in report.dropped)
    assert report.reinitialized == []
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), with_aux(x), rtol=0, atol=0)
    # The other way round, aux heads the file lacks keep a fresh initialisation.
    plain.fc.bias.data += 1.0
    back = load_pretrained(with_aux, plain.state_dict(), arch="googlenet")
    assert back.reinitialized and all(k.startswith(("aux1.", "aux2.")) for k in back.reinitialized)
    with torch.no_grad():
        torch.testing.assert_close(with_aux(x), plain(x), rtol=0, atol=0)


def test_missing_num_batches_tracked_is_tolerated():
    source = build("mobilenet_v2", num_classes=4, input_shape=(3, 32, 32))
    state = {k: v for k, v in source.state_dict().items()
             if not k.endswith("num_batches_tracked")}  # as in older torchvision files
    target = build("mobilenet_v2", num_classes=4, input_shape=(3, 32, 32))
    report = load_pretrained(target, state, arch="mobilenet_v2")
    assert report.reinitialized == [] and len(report.loaded) == len(state)
    bn = "features.1.conv.0.1.running_var"
    torch.testing.assert_close(target.state_dict()[bn], source.state_dict()[bn])


def test_weights_of_another_architecture_are_rejected_with_the_offending_keys():
    with pytest.raises(CnnlabError, match=r"do not fit resnet34: missing layer1\.2\.conv1\.weight") as err:
        load_pretrained(build("resnet34", meta=True), build("resnet18", meta=True).state_dict(),
                        arch="resnet34")
    assert "(+" in str(err.value) and "\n" not in str(err.value)
    shape = r"shape conv1\.weight \(64, 3, 7, 7\) in the file vs \(64, 2, 7, 7\)"
    with pytest.raises(CnnlabError, match=shape):
        load_pretrained(build("resnet18", input_shape=(2, 64, 64), meta=True),
                        build("resnet18", meta=True).state_dict(), arch="resnet18")
    target = build("resnet18", num_classes=2, input_shape=(3, 32, 32))
    head = target.fc.weight.clone()
    state = build("resnet18").state_dict() | {"extra.weight": torch.zeros(1)}
    with pytest.raises(CnnlabError, match=r"unexpected extra\.weight"):
        load_pretrained(target, state, arch="resnet18")
    assert torch.equal(target.fc.weight, head)  # checked before anything was changed


def test_head_parameters_are_the_head_and_the_restarted_layers():
    model = build("vgg16", num_classes=2, input_shape=(3, 50, 50), meta=True)
    report = load_pretrained(model, build("vgg16", meta=True).state_dict(), arch="vgg16")
    assert head_parameters(model, model_meta("vgg16"), report) == set(report.reinitialized)
    assert head_parameters(build("resnet18", meta=True), model_meta("resnet18")) == {"fc.weight", "fc.bias"}


# --- finding and downloading files -------------------------------------------------------------------------

@pytest.fixture
def server(tmp_path):
    """Serves ``tmp_path / "served"`` on 127.0.0.1; yields (directory, base URL)."""
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _publish(root: Path, base: str, arch: str, state: dict, monkeypatch, *,
             sha256: str | None = None) -> Weights:
    """Writes ``state`` as a torchvision-named file on the server and points the table at it."""
    tmp = root / "upload.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    name = f"{arch}-{digest[:8]}.pth"
    tmp.rename(root / name)
    spec = Weights(f"{base}/{name}", sha256 or digest[:8])
    publish(monkeypatch, arch, spec)
    return spec


def test_download_verifies_caches_and_loads(server, monkeypatch, _cache):
    root, base = server
    source = build("mobilenet_v2", input_shape=(3, 32, 32)).eval()
    spec = _publish(root, base, "mobilenet_v2", source.state_dict(), monkeypatch)

    path = pretrained_path("mobilenet_v2")
    assert path == _cache / "weights" / spec.file_name
    assert path.read_bytes() == (root / spec.file_name).read_bytes()
    (root / spec.file_name).unlink()  # the cached copy is used from now on, even offline
    assert pretrained_path("mobilenet_v2", download=False) == path

    target = build("mobilenet_v2", num_classes=3, input_shape=(3, 32, 32))
    report = apply_pretrained(target, arch="mobilenet_v2")
    assert report.reinitialized == ["classifier.1.weight", "classifier.1.bias"]
    torch.testing.assert_close(target.features[5].conv[1][0].weight, source.features[5].conv[1][0].weight)


def test_wrong_checksum_is_an_error_and_leaves_nothing_in_the_cache(server, monkeypatch, _cache):
    root, base = server
    spec = _publish(root, base, "alexnet", {"w": torch.zeros(3)}, monkeypatch, sha256="00000000")
    with pytest.raises(CnnlabError, match="sha256") as err:
        pretrained_path("alexnet")
    assert spec.url in str(err.value) and "model.weights" in str(err.value) and "\n" not in str(err.value)
    assert not (_cache / "weights").exists()  # no file, no partial download, not even the folder the download made


def test_offline_and_unreachable_errors_say_what_to_fetch_and_where(monkeypatch, _cache):
    dest = _cache / "weights" / PRETRAINED["resnet50"].file_name
    with pytest.raises(CnnlabError) as err:
        pretrained_path("resnet50", download=False)
    message = str(err.value)
    assert PRETRAINED["resnet50"].url in message and str(dest) in message and "model.weights" in message
    assert "\n" not in message

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    publish(monkeypatch, "resnet50", Weights(f"http://127.0.0.1:{port}/resnet50-0676ba61.pth", "0676ba61"))
    with pytest.raises(CnnlabError, match=r"could not get the resnet50 ImageNet weights.*unreachable") as err:
        pretrained_path("resnet50")
    assert f"127.0.0.1:{port}" in str(err.value) and str(dest) in str(err.value)
    assert not dest.exists()


def test_a_local_weights_file_wins_and_must_exist(tmp_path):
    local = tmp_path / "mine.safetensors"
    save_file({"w": torch.zeros(1)}, str(local))
    assert pretrained_path("resnet18", weights=local, download=False) == local
    assert pretrained_path("not_a_model", weights=str(local)) == local  # no table entry needed
    with pytest.raises(CnnlabError, match=r"`model.weights` .* does not exist; check the path"):
        pretrained_path("resnet18", weights=tmp_path / "nope.pth")
    with pytest.raises(CnnlabError, match=r"no official ImageNet weights for 'cnn_64x2'.*resnet18"):
        pretrained_path("cnn_64x2")


# --- loading what the config asks for ----------------------------------------------------------------------

def test_initial_weights_follow_the_config(tmp_path):
    assert load_initial_weights(build("resnet18", meta=True), ModelConfig(name="resnet18"), print) is None
    source = build("resnet18", num_classes=2, input_shape=(3, 32, 32))
    torch.save(source.state_dict(), tmp_path / "mine.pth")
    lines: list[str] = []
    target = build("resnet18", num_classes=2, input_shape=(1, 32, 32))
    report = load_initial_weights(target, ModelConfig(name="resnet18", weights=str(tmp_path / "mine.pth")),
                                  lines.append)
    assert report.adapted == ["conv1.weight"] and lines == [f"Weights: {report}"]
    spec = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    save_file(spec.state_dict(), str(tmp_path / "spec.safetensors"))
    fresh = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    layers = ModelConfig(name=None, layers=({"type": "Flatten"},), weights=str(tmp_path / "spec.safetensors"))
    assert load_initial_weights(fresh, layers, lines.append) is None  # a layer list: loaded as it is
    assert torch.equal(fresh[1].weight, spec[1].weight) and lines[-1].startswith("Weights: loaded ")


def test_pretrained_needs_a_model_with_published_weights():
    with pytest.raises(CnnlabError, match="no official ImageNet weights for 'cnn_64x2'") as err:
        load_initial_weights(build("cnn_64x2", num_classes=10, input_shape=(1, 28, 28)),
                             ModelConfig(name="cnn_64x2", pretrained=True), print)
    assert "`model.weights`" in str(err.value)
    with pytest.raises(CnnlabError, match="a model given by model.layers has no published weights"):
        load_initial_weights(nn.Linear(1, 1), ModelConfig(layers=({"type": "Flatten"},), pretrained=True), print)


def test_pretrained_offline_is_a_clear_error(monkeypatch, _cache):
    publish(monkeypatch, "resnet18", replace(PRETRAINED["resnet18"], url="http://127.0.0.1:9/resnet18-f37072fd.pth"))
    with pytest.raises(CnnlabError) as err:
        load_initial_weights(build("resnet18", num_classes=10, input_shape=(1, 28, 28), meta=True),
                             ModelConfig(name="resnet18", pretrained=True), print)
    assert "`model.weights`" in str(err.value) and "\n" not in str(err.value)  # the CLI shows it as --weights


def test_the_published_layout_is_torchvisions_for_every_classic_model(torchvision_keys):
    from cnnlab.models.pretrained import published_layout

    for arch in PRETRAINED:
        shapes = dict(torchvision_keys[arch])
        assert published_layout(arch, shapes), arch  # aux heads and all, as in the published files
        head = f"{model_meta(arch).head}.weight"
        assert not published_layout(arch, {**shapes, head: [2, shapes[head][1]]}), arch  # a 2-class head
        assert not published_layout(arch, {k: s for k, s in shapes.items() if k != head}), arch
    assert not published_layout("cnn_64x2", {})  # no published weights at all


def test_a_weight_file_is_judged_by_its_shapes_alone(tmp_path):
    from cnnlab.models.pretrained import has_published_layout

    model = build("mobilenet_v2")
    torch.save(model.state_dict(), tmp_path / "copy.pth")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "copy.safetensors")
    assert has_published_layout("mobilenet_v2", tmp_path / "copy.pth")
    assert has_published_layout("mobilenet_v2", tmp_path / "copy.safetensors")
    torch.save(build("mobilenet_v2", num_classes=10).state_dict(), tmp_path / "mine.pth")
    assert not has_published_layout("mobilenet_v2", tmp_path / "mine.pth")
    with pytest.raises(CnnlabError, match="does not exist"):
        has_published_layout("mobilenet_v2", tmp_path / "none.pth")

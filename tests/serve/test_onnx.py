"""ONNX export: parity with PyTorch on real test images, metadata, fixed batches, deep CNNs, user mistakes."""

from __future__ import annotations

import json
import re
from collections import OrderedDict

import numpy as np
import onnx
import pytest
import torch

from cnnlab._version import __version__
from cnnlab.config import load_config
from cnnlab.errors import CnnlabError
from cnnlab.models.spec import build_spec
from cnnlab.runs import experiment, loaded
from cnnlab.serve.engines import ort_session
from cnnlab.serve.onnx import META, ParityError, export, export_onnx, parse_batch, read_metadata, write_onnx
from cnnlab.serve.predict import Predictor

PARITY = re.compile(r"^parity: max abs diff (\d\.\de[-+]\d\d) over (\d+) test images \(limit 1e-4\)$", re.M)


def train_run(path, base: dict):
    cfg = load_config(None, base={"train": {"epochs": 1, "batch_size": 256}, **base})
    result = experiment.train(cfg, out=path, progress=False, log=lambda s: None)
    assert result.failed is None
    return path


@pytest.fixture(scope="module")
def spec_run(trained_tiny_cnn, copy_run, tmp_path_factory):
    """A Conv8-Pool-Dense CNN trained one epoch on the bundled Fashion-MNIST sample, standardised input (this
    module's copy: its tests export into it)."""
    return copy_run(trained_tiny_cnn, tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        return train_run(tmp_path_factory.mktemp("runs") / "dense",
                         {"data": {"dataset": "fashion-mnist-sample"}, "model": {"name": "dnn_128"}})


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory, image_folder):
    """resnet18 on 32x32 RGB photos of three clothing classes (a folder dataset)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        return train_run(tmp_path_factory.mktemp("runs") / "resnet", {
            "data": {"dataset": f"folder:{image_folder}", "image_size": 32}, "model": {"name": "resnet18"},
            "train": {"epochs": 1, "batch_size": 32}})


def test_export_checks_parity_on_test_images_and_writes_plain_convs(spec_run):
    lines: list[str] = []
    result = export_onnx(spec_run, log=lines.append)
    m = PARITY.search("\n".join(lines))
    assert m, lines
    assert float(m.group(1)) <= 1e-4 and m.group(2) == "256"
    assert lines == [result.parity_line] and result.max_diff <= 1e-4 and result.images == 256
    assert (result.path, result.opset, result.batch) == (spec_run / "model.onnx", 17, "dynamic")
    proto = onnx.load(str(spec_run / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    ops = [n.op_type for n in proto.graph.node]
    # the native-kernel first layer exports as the plain convolution it equals
    assert ops.count("Conv") == 1 and "Gather" not in ops and ops[-1] == "Softmax"
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits", "probs"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    assert proto.opset_import[0].version == 17


def test_metadata_round_trip(spec_run):
    if not (spec_run / "model.onnx").exists():
        export_onnx(spec_run, log=lambda s: None)
    info = read_metadata(spec_run / "model.onnx")
    meta = json.loads((spec_run / "run.json").read_text())
    assert info.classes == tuple(meta["classes"]) and len(info.classes) == 10
    assert info.input_shape == (1, 28, 28)
    assert info.mean == pytest.approx(meta["normalizer"]["mean"]) and info.mean[0] > 0.1  # standardised
    assert info.std == pytest.approx(meta["normalizer"]["std"])
    assert info.version == __version__ and info.batch == "dynamic"
    props = {p.key: p.value for p in onnx.load(str(spec_run / "model.onnx")).metadata_props}
    assert set(META.values()) <= set(props)
    # the file alone is enough to classify: normalise with its metadata, take the argmax of "probs"
    from cnnlab.data.datasets import load_dataset

    _, test = load_dataset("fashion-mnist-sample")
    x = test.images[:200].numpy().astype(np.float32) / 255
    x = (x - np.float32(info.mean[0])) / np.float32(info.std[0])
    probs = ort_session(spec_run / "model.onnx").run(["probs"], {"input": x})[0]
    acc = float((probs.argmax(1) == test.labels[:200].numpy()).mean())
    # a one-epoch CNN, read through the metadata only: measured 0.705 (bf16 training on this CPU); the margin
    # covers float noise of another thread count, not a broken normalisation (that gives ~0.1)
    assert acc >= 0.68


def test_fixed_batch_dense_model_matches_torch_with_padding(dense_run, tmp_path):
    lines: list[str] = []
    out = tmp_path / "dense8.onnx"
    result = export_onnx(dense_run, out=out, batch=8, opset=13, log=lines.append)
    assert result.path == out and out.is_file() and not (dense_run / "model.onnx").exists()
    assert result.max_diff <= 1e-4 and result.images == 256 and PARITY.match(lines[0])
    proto = onnx.load(str(out))
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [8, 1, 28, 28]
    assert read_metadata(out).batch == "8" and proto.opset_import[0].version == 13
    # 13 images through the fixed-batch graph: split into 8 + 5 (padded), same as PyTorch
    from cnnlab.serve.engines import OrtEngine

    lr = loaded.load_run(dense_run)
    x = torch.randint(0, 256, (13, 1, 28, 28), dtype=torch.uint8)
    got = OrtEngine(ort_session(out), lr.normalizer, lr.input_shape[0])(x.numpy())
    with torch.inference_mode():
        want = lr.model(lr.normalizer(x)).softmax(1).numpy()
    assert got.shape == (13, 10) and np.abs(got - want).max() <= 1e-4


def test_resnet18_at_32px_exports_with_parity(resnet_run):
    lines: list[str] = []
    export_onnx(resnet_run, log=lines.append)
    m = PARITY.search("\n".join(lines))
    assert m and float(m.group(1)) <= 1e-4 and m.group(2) == "24"  # the 20% held-out split of 120 photos
    info = read_metadata(resnet_run / "model.onnx")
    assert info.input_shape == (3, 32, 32) and info.classes == ("sneaker", "trouser", "tshirt")
    ops = {n.op_type for n in onnx.load(str(resnet_run / "model.onnx")).graph.node}
    assert "BatchNormalization" not in ops  # folded into the convolutions in eval mode
    torch_p = Predictor.from_run(resnet_run, "torch")
    onnx_p = Predictor.from_run(resnet_run, "onnx")
    x = np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    assert np.abs(torch_p.predict(x) - onnx_p.predict(x)).max() <= 1e-4


def test_vgg_like_spec_with_every_layer_kind_matches_torch(tmp_path):
    """BatchNorm with real statistics, asymmetric 'same' padding, TF-style average pooling, global pooling."""
    layers = [
        {"type": "Conv2D", "filters": 8, "kernel_size": 3, "padding": "same", "activation": "relu"},
        {"type": "BatchNormalization"},
        {"type": "Conv2D", "filters": 8, "kernel_size": 2, "strides": 2, "padding": "same", "activation": "elu"},
        {"type": "MaxPooling2D", "pool_size": 2, "padding": "same"},
        {"type": "Conv2D", "filters": 16, "kernel_size": 3, "padding": "same", "activation": "relu"},
        {"type": "AveragePooling2D", "pool_size": 3, "strides": 2, "padding": "same"},
        {"type": "Dropout", "rate": 0.3},
        {"type": "GlobalAveragePooling2D"},
        {"type": "Dense", "units": 16, "activation": "gelu"},
        {"type": "Dense", "units": 5, "activation": "softmax"},
    ]
    torch.manual_seed(0)
    model = build_spec(layers, input_shape=(3, 21, 21), num_classes=5)
    bn = model.batch_normalization
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    model.eval()
    path = tmp_path / "vgg.onnx"
    write_onnx(model, (3, 21, 21), path)
    x = torch.rand(6, 3, 21, 21) * 4 - 2
    logits, probs = ort_session(path).run(["logits", "probs"], {"input": x.numpy()})
    with torch.inference_mode():
        want = model(x)
    assert np.abs(logits - want.numpy()).max() <= 1e-4
    assert np.abs(probs - want.softmax(1).numpy()).max() <= 1e-5


@pytest.mark.parametrize("side", [5, 9])  # feature maps 3x3 and 7x7: neither divides the 6x5 output
def test_adaptive_pooling_of_any_size_exports_exactly(side, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d((6, 5)), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 5, 3)).eval()
    path = tmp_path / "pool.onnx"
    write_onnx(model, (3, side, side), path)  # the exporter alone refuses these sizes
    x = torch.randn(2, 3, side, side)
    logits = ort_session(path).run(["logits"], {"input": x.numpy()})[0]
    with torch.inference_mode():
        assert np.abs(logits - model(x).numpy()).max() <= 1e-5
    assert isinstance(model[1], torch.nn.AdaptiveAvgPool2d)


def test_unsupported_operation_is_one_short_error(tmp_path, capfd):
    class Bessel(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.special.bessel_j0(x.flatten(1))

    with pytest.raises(CnnlabError, match="cannot handle this model .*'aten::special_bessel_j0'") as info:
        write_onnx(Bessel(), (1, 2, 2), tmp_path / "b.onnx")
    assert "\n" not in str(info.value)
    out, err = capfd.readouterr()
    assert "graph" not in out + err  # the exporter's C++ dump of the traced graph is swallowed


def test_parity_failure_raises_and_writes_nothing(spec_run, tmp_path, monkeypatch):
    import cnnlab.serve.onnx as ex

    monkeypatch.setattr(ex, "max_prob_diff", lambda *a, **k: 0.25)  # as if onnxruntime disagreed
    out = tmp_path / "bad.onnx"
    lines: list[str] = []
    with pytest.raises(ParityError) as err:
        export_onnx(spec_run, out=out, log=lines.append)
    message = str(err.value)
    assert message.startswith("parity: max abs diff 2.5e-01 over 256 test images (limit 1e-4)")
    assert "\n" not in message and f"{out} was not written" in message
    assert err.value.result.max_diff == 0.25 and lines == []
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))


def test_export_options_are_checked_before_anything_is_written(spec_run, tmp_path):
    with pytest.raises(CnnlabError, match="^unknown export format 'tflite'; valid: onnx$"):
        export(spec_run, "tflite")
    with pytest.raises(CnnlabError, match=r"^`opset` 7 is not supported; use 11..20 \(default 17\)$"):
        export_onnx(spec_run, opset=7)
    with pytest.raises(CnnlabError, match="^`batch` '0': expected dynamic or a positive batch size"):
        export_onnx(spec_run, batch="0")
    with pytest.raises(CnnlabError, match="^`batch` 'many': expected dynamic"):
        export_onnx(spec_run, batch="many")
    with pytest.raises(CnnlabError, match="the parity check needs at least 1 image"):
        export_onnx(spec_run, images=0)
    with pytest.raises(CnnlabError, match="^`out` .* is a folder; give a file name like"):
        export_onnx(spec_run, out=tmp_path)
    assert (parse_batch("dynamic"), parse_batch("DYNAMIC"), parse_batch("8"), parse_batch(8)) == (None, None, 8, 8)
    assert list(tmp_path.iterdir()) == []


def test_export_of_a_missing_run(tmp_path):
    with pytest.raises(CnnlabError, match="is not a directory; pass a run directory") as err:
        export_onnx(tmp_path / "nope")
    assert "\n" not in str(err.value)


def test_read_metadata_of_foreign_and_corrupt_files(tmp_path):
    model = torch.nn.Sequential(OrderedDict(fc=torch.nn.Linear(4, 2)))
    torch_file = tmp_path / "plain.onnx"
    with pytest.warns(Warning):  # torch's own exporter warns; cnnlab's write_onnx silences it
        torch.onnx.export(model, (torch.zeros(1, 4),), str(torch_file), dynamo=False)
    with pytest.raises(CnnlabError, match="has no cnnlab metadata"):
        read_metadata(torch_file)
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all \x00\xff")
    with pytest.raises(CnnlabError, match="not a usable ONNX model"):
        ort_session(tmp_path / "junk.onnx")


def test_parity_refuses_non_finite_pytorch_outputs(tmp_path):
    from torch import nn

    from cnnlab.data.tensors import Normalizer
    from cnnlab.serve.onnx import max_prob_diff

    class Broken(nn.Module):  # finite weights, but it overflows to inf - inf = NaN on any input
        def forward(self, x):
            big = x.flatten(1)[:, :2] * 0 + 3e38  # float32's largest is 3.4e38: x10 overflows to inf
            return torch.cat([big * 10 - big * 10, big], 1)

    path = tmp_path / "m.onnx"
    write_onnx(Broken(), (1, 4, 4), path)
    with pytest.raises(CnnlabError, match=r"probabilities are not finite \(NaN/inf\) on the parity images"):
        max_prob_diff(Broken(), Normalizer(), path, torch.zeros(3, 1, 4, 4, dtype=torch.uint8), None)


def test_parity_of_a_run_without_test_data_says_why_in_full(tmp_path):
    from pathlib import Path

    from cnnlab.runs.imported import import_keras
    from cnnlab.serve.onnx import parity_images

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "keras" / "functional_rescaling.h5"
    run = import_keras(fixture, out=tmp_path / "imported", log=lambda s: None).run  # no dataset given
    x, label = parity_images(loaded.load_run(run.path), 4, None)
    assert x.shape[0] == 4 and x.dtype == torch.uint8
    assert label == "random images (the run names no test data)"  # not a cut-off message and `data_dir` advice

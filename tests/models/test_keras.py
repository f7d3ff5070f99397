"""Keras model files read without TensorFlow: outputs equal Keras's own, parameter counts equal Keras's, and
files cnnlab cannot map are one-line errors naming the layer.

The fixtures (tests/fixtures/keras, built by make_fixtures.py with TensorFlow 2.21: Keras 2.21 through tf-keras
and Keras 3.15) hold each model, Keras's ``count_params()`` and Keras's predictions on 20 images.
"""

from __future__ import annotations

import io
import json
import os
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from cnnlab.data.datasets import load_dataset
from cnnlab.data.tensors import Normalizer
from cnnlab.errors import CnnlabError
from cnnlab.models.keras import build_keras, read_keras
from cnnlab.models.summary import param_counts, summary_text

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "keras"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
sys.path.insert(0, str(FIXTURES))
from make_fixtures import pattern_images  # noqa: E402  (the generator's own formula for the synthetic images)

sys.path.remove(str(FIXTURES))
TOL = 1e-4  # fp32 on both sides; different kernels (oneDNN vs Eigen) reorder sums: ~1e-7 measured


def _images(entry: dict, skip_unless_ci) -> torch.Tensor:
    """The 20 uint8 (N, C, H, W) images Keras's outputs in the manifest were computed on."""
    source = entry["images"]
    if source == "fashion-mnist-sample":
        return load_dataset("fashion-mnist-sample")[1].images[:20]
    if source == "cifar-10":
        root = os.environ.get("CNNLAB_DATA")
        if not root or not (Path(root) / "cifar-10").is_dir():
            skip_unless_ci("the official CIFAR-10 files are not available (CNNLAB_DATA)")
        return load_dataset("cifar-10", root)[1].images[:20]
    return torch.from_numpy(pattern_images(20, tuple(entry["input_shape_hwc"]))).permute(0, 3, 1, 2).contiguous()


def _probs(km, images: torch.Tensor) -> np.ndarray:
    model = build_keras(km)
    with torch.no_grad():
        return model(Normalizer(km.mean, km.std)(images)).softmax(1).numpy()


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_outputs_equal_keras_on_its_images(name: str, skip_unless_ci) -> None:
    entry = MANIFEST[name]
    km = read_keras(FIXTURES / name)
    keras = np.load(FIXTURES / entry["outputs"])
    ours = _probs(km, _images(entry, skip_unless_ci))
    assert ours.shape == keras.shape
    assert np.abs(ours - keras).max() <= TOL
    assert np.ptp(keras, axis=0).max() > 0.01  # the images get different outputs: the check is not vacuous


@pytest.mark.parametrize("name", sorted(n for n, e in MANIFEST.items() if "pattern_outputs" in e))
def test_cifar_outputs_equal_keras_on_pattern_images(name: str) -> None:
    entry = MANIFEST[name]
    km = read_keras(FIXTURES / name)
    x = torch.from_numpy(pattern_images(20, tuple(entry["input_shape_hwc"]))).permute(0, 3, 1, 2).contiguous()
    assert np.abs(_probs(km, x) - np.load(FIXTURES / entry["pattern_outputs"])).max() <= TOL


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_parameter_counts_equal_keras(name: str) -> None:
    total, trainable = MANIFEST[name]["params"]
    km = read_keras(FIXTURES / name)
    model = build_keras(km)
    assert km.params == (total, trainable)
    assert param_counts(model) == (total, trainable)
    text = summary_text(model, km.input_shape)
    assert f"Total params: {total:,}" in text and f"Non-trainable params: {total - trainable:,}" in text


def test_tutorial_cnn_maps_layer_for_layer() -> None:
    km = read_keras(FIXTURES / "tutorial1_cnn.h5")
    assert km.keras_version == "2.21.0" and km.input_shape == (1, 28, 28) and km.num_classes == 10
    assert [(s["type"], s["name"]) for s in km.layers] == [
        ("Conv2D", "conv2d"), ("MaxPooling2D", "max_pooling2d"), ("Conv2D", "conv2d_1"),
        ("MaxPooling2D", "max_pooling2d_1"), ("Flatten", "flatten"), ("Dense", "dense"), ("Dense", "dense_1")]
    assert km.layers[0] == {"type": "Conv2D", "name": "conv2d", "filters": 64, "kernel_size": [3, 3],
                            "strides": [1, 1], "padding": "valid", "activation": "relu", "use_bias": True}
    assert km.layers[-1]["activation"] == "softmax" and (km.mean, km.std, km.rescaling) == ((0.0,), (1.0,), False)
    with h5py.File(FIXTURES / "tutorial1_cnn.h5") as f:
        kernel = f["model_weights/conv2d/conv2d/kernel:0"][()]  # (3, 3, 1, 64) HWIO
        dense = f["model_weights/dense/dense/kernel:0"][()]  # (1600, 128): rows in (H, W, C) order
    assert torch.equal(km.state_dict["conv2d.weight"], torch.from_numpy(kernel).permute(3, 2, 0, 1))
    # PyTorch's flattened feature (c, h, w) = c * 25 + h * 5 + w is Keras's row h * 320 + w * 64 + c
    c, h, w = 7, 2, 3
    assert torch.equal(km.state_dict["dense.weight"][:, c * 25 + h * 5 + w], torch.from_numpy(dense[h * 320 + w * 64 + c]))


def test_cifar_basic_keeps_activation_and_dropout_layers() -> None:
    for name in ("cifar_basic.h5", "cifar_basic.keras"):
        kinds = [s["type"] for s in read_keras(FIXTURES / name).layers]
        assert kinds.count("Activation") == 6 and kinds.count("Dropout") == 3 and kinds[-1] == "Activation"


def test_batchnorm_statistics_and_flags() -> None:
    km = read_keras(FIXTURES / "bn_same.keras")
    bns = [s for s in km.layers if s["type"] == "BatchNormalization"]
    assert [(b.get("momentum"), b.get("epsilon"), b.get("center", True)) for b in bns] == [
        (0.99, 0.001, True), (0.9, 1e-5, True), (0.99, 0.001, False)]
    assert km.layers[0]["padding"] == "same" and km.layers[0]["strides"] == [2, 2]
    with h5py.File(io.BytesIO(zipfile.ZipFile(FIXTURES / "bn_same.keras").read("model.weights.h5"))) as f:
        mean = f["layers/batch_normalization/vars/2"][()]
    assert np.abs(mean).max() > 1e-3  # training moved the moving mean away from its initial zeros
    assert torch.equal(km.state_dict["batch_normalization.running_mean"], torch.from_numpy(mean))
    assert "batch_normalization_2.bias" not in km.state_dict  # center=False: no beta, as in Keras


def test_rescaling_becomes_the_normalisation() -> None:
    km = read_keras(FIXTURES / "functional_rescaling.keras")
    assert km.rescaling and km.dropped == ("input_layer", "rescaling")
    scale, shift = Normalizer(km.mean, km.std).numpy_scale_shift(3)
    assert np.allclose(scale, 1 / 127.5) and np.allclose(shift, 1.0)  # x / 127.5 - 1, Rescaling's formula


# -------------------------------------------------------------------------------------------- errors


def _keras_file(tmp_path: Path, layers: list[dict], weights: dict[str, list[np.ndarray]], kind: str = "Sequential",
                extra: dict | None = None) -> Path:
    """A .keras zip as Keras 3 writes it (config.json, metadata.json, model.weights.h5)."""
    config = {"class_name": kind, "config": {"name": "m", "layers": layers, **(extra or {})}}
    blob = io.BytesIO()
    with h5py.File(blob, "w") as f:
        for layer, arrays in weights.items():
            g = f.create_group(f"layers/{layer}/vars")
            g.attrs["name"] = layer
            for i, a in enumerate(arrays):
                g[str(i)] = a
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", json.dumps(config))
        z.writestr("metadata.json", json.dumps({"keras_version": "3.0.0"}))
        z.writestr("model.weights.h5", blob.getvalue())
    return path


def _layer(kind: str, name: str, **cfg) -> dict:
    return {"class_name": kind, "config": {"name": name, **cfg}}


INPUT = _layer("InputLayer", "input", batch_shape=[None, 2, 2, 3])


def test_flatten_permutation_on_a_hand_built_file(tmp_path) -> None:
    kernel = np.arange(12 * 2, dtype=np.float32).reshape(12, 2)  # row r = Keras feature r (h, w, c order)
    path = _keras_file(tmp_path, [INPUT, _layer("Flatten", "flatten", data_format="channels_last"),
                                  _layer("Dense", "dense", units=2, activation="softmax", use_bias=True)],
                       {"dense": [kernel, np.zeros(2, np.float32)]})
    km = read_keras(path)
    x = torch.arange(12, dtype=torch.float32).reshape(1, 3, 2, 2)  # (C, H, W)
    keras_x = x.permute(0, 2, 3, 1).reshape(1, 12)  # Keras flattens (H, W, C)
    with torch.no_grad():
        ours = build_keras(km)[1](build_keras(km)[0](x))
    assert torch.allclose(ours, keras_x @ torch.from_numpy(kernel))


def test_unknown_layer_is_named_with_its_class(tmp_path) -> None:
    path = _keras_file(tmp_path, [INPUT, _layer("LSTM", "lstm_7", units=4)], {})
    with pytest.raises(CnnlabError, match=r"layer 'lstm_7' \(LSTM\) has no cnnlab equivalent; importable layers:"):
        read_keras(path)


def test_unsupported_settings_are_errors(tmp_path) -> None:
    conv = dict(filters=2, kernel_size=[3, 3], strides=[1, 1], padding="valid", activation="relu", use_bias=True)
    cases = [
        (_layer("Conv2D", "c", **conv, dilation_rate=[2, 2]), r"layer 'c' \(Conv2D\): dilation_rate=\[2, 2\]"),
        (_layer("Conv2D", "c", **{**conv, "activation": "leaky_relu"}), r"activation 'leaky_relu' has no exact"),
        (_layer("Rescaling", "r", scale=-1.0, offset=0.0), "positive scale"),
    ]
    for layer, message in cases:
        path = _keras_file(tmp_path, [INPUT, layer, _layer("Flatten", "f"), _layer("Dense", "d", units=2)], {})
        with pytest.raises(CnnlabError, match=message):
            read_keras(path)


def test_a_sigmoid_binary_head_is_refused(tmp_path) -> None:
    path = _keras_file(tmp_path, [INPUT, _layer("Flatten", "f"), _layer("Dense", "out", units=1, activation="sigmoid")],
                       {})
    with pytest.raises(CnnlabError, match=r"layer 'out' \(Dense\) ends the model in sigmoid / one output; .*Dense\(2"):
        read_keras(path)


def test_branching_functional_model_is_refused(tmp_path) -> None:
    def node(*names):
        return [[[n, 0, 0, {}] for n in names]]

    layers = [{**INPUT, "name": "input", "inbound_nodes": []},
              {**_layer("Flatten", "a"), "name": "a", "inbound_nodes": node("input")},
              {**_layer("Flatten", "b"), "name": "b", "inbound_nodes": node("input")},
              {**_layer("Add", "add"), "name": "add", "inbound_nodes": node("a", "b")}]
    path = _keras_file(tmp_path, layers, {}, kind="Functional")
    with pytest.raises(CnnlabError, match="joins or splits branches"):
        read_keras(path)


def test_files_that_are_not_models(tmp_path) -> None:
    with pytest.raises(CnnlabError, match="does not exist"):
        read_keras(tmp_path / "missing.h5")
    (tmp_path / "notes.h5").write_text("hello")
    with pytest.raises(CnnlabError, match=r"neither an HDF5 \(.h5\) nor a zip"):
        read_keras(tmp_path / "notes.h5")
    with h5py.File(tmp_path / "w.h5", "w") as f:  # what save_weights writes: weights, no model_config
        f.attrs["layer_names"] = [b"dense"]
    with pytest.raises(CnnlabError, match="holds weights only"):
        read_keras(tmp_path / "w.h5")
    path = _keras_file(tmp_path, [INPUT, _layer("Flatten", "f"), _layer("Dense", "d", units=2, use_bias=True)],
                       {"d": [np.zeros((12, 2), np.float32)]})
    with pytest.raises(CnnlabError, match=r"layer 'd' \(Dense\) has 1 stored variables, expected 2"):
        read_keras(path)

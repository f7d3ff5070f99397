"""Arrays for the browser: raw little-endian bytes, PNGs, and the explorer's layer payload with degenerate
channels named instead of stretched."""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image

from cnnlab.app.dashboard.encode import MAX_CHANNELS, b64, layer_payload, map_payload, png, unit_png
from cnnlab.models.summary import LayerRow


def _f32(text):
    return np.frombuffer(base64.b64decode(text), "<f4")


def _row(shape, kind="conv"):
    return LayerRow("conv2d", "Conv2D", "(None, ...)", 80, 80, kind, shape)


def test_b64_is_little_endian_float32_or_uint8():
    a = np.array([[1.5, -2.0], [3.25, 0.0]])
    assert _f32(b64(a)).tolist() == [1.5, -2.0, 3.25, 0.0]
    assert base64.b64decode(b64(torch.tensor([0, 255], dtype=torch.uint8), "uint8")) == b"\x00\xff"


def test_png_keeps_the_pixels_and_enlarges_by_repetition():
    img = torch.tensor([[[0, 255], [128, 7]]], dtype=torch.uint8)
    back = np.asarray(Image.open(io.BytesIO(png(img, scale=2))))
    assert back.shape == (4, 4) and back[0, 0] == 0 and back[3, 3] == 7 and back[0, 2] == 255
    rgb = np.asarray(Image.open(io.BytesIO(unit_png(np.ones((3, 2, 2)) * 0.5, scale=1))))
    assert rgb.shape == (2, 2, 3) and (rgb == 128).all()


def test_feature_maps_share_one_scale_and_name_constant_channels():
    out = torch.zeros(3, 4, 4)
    out[0] = torch.arange(16.0).view(4, 4)
    out[2] = 5.0  # constant, not zero
    d = layer_payload(_row((3, 4, 4)), out, explainable=True)
    assert (d["layout"], d["channels"], d["total"], d["h"], d["w"]) == ("maps", 3, 3, 4, 4)
    assert (d["lo"], d["hi"]) == (0.0, 15.0)
    assert d["notes"] == {1: "constant: every value is 0", 2: "constant: every value is 5"}
    np.testing.assert_array_equal(_f32(d["data"]).reshape(3, 4, 4), out.numpy())
    assert "note" not in d and d["explainable"] is True


def test_only_the_first_channels_are_sent():
    d = layer_payload(_row((100, 2, 2)), torch.randn(100, 2, 2), explainable=True)
    assert (d["channels"], d["total"]) == (MAX_CHANNELS, 100) and _f32(d["data"]).size == MAX_CHANNELS * 4


def test_1x1_maps_and_vectors_are_bars_not_stretched_squares():
    d = layer_payload(_row((5, 1, 1), "pool"), torch.arange(5.0).view(5, 1, 1), explainable=True)
    assert d["layout"] == "vector" and "1×1 maps" in d["note"] and _f32(d["data"]).tolist() == [0, 1, 2, 3, 4]
    flat = layer_payload(_row((4,), "dense"), torch.zeros(4), explainable=False)
    assert flat["layout"] == "vector" and flat["note"] == "constant: every value is 0 for this image"
    all_flat = layer_payload(_row((2, 3, 3)), torch.zeros(2, 3, 3), explainable=True)
    assert "every channel shown is constant" in all_flat["note"]


def test_heat_maps_say_when_they_are_degenerate():
    assert map_payload(torch.zeros(4, 4))["degenerate"] == "constant: every value is 0"
    m = map_payload(np.eye(3))
    assert (m["h"], m["w"], m["lo"], m["hi"], m["degenerate"]) == (3, 3, 0.0, 1.0, None)

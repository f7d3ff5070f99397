"""Winograd F(2x2, 3x3) equals F.conv2d and its autograd gradients (forward, grad-input, grad-weight)."""

import pytest
import torch
import torch.nn.functional as F

from cnnlab.models.spec import build_spec
from cnnlab.native import winograd

# (N, C, F, H, W, padding (left, right, top, bottom)): the tutorial's 13x13 → 11x11 (odd output, a zero
# row/column completes the last tiles), 11x11 'same', one image, non-square and even/odd mixes.
SHAPES = [(4, 64, 64, 13, 13, (0, 0, 0, 0)), (2, 32, 48, 11, 11, (1, 1, 1, 1)), (1, 32, 32, 13, 13, (0, 0, 0, 0)),
          (3, 40, 32, 12, 9, (0, 0, 0, 0)), (2, 32, 33, 8, 7, (0, 1, 0, 1)), (1, 32, 32, 3, 3, (0, 0, 0, 0))]


def _both(shape, dtype):
    n, c, f, h, w, pad = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=gen).contiguous(memory_format=torch.channels_last).requires_grad_()
    wt = torch.randn(f, c, 3, 3, generator=gen).requires_grad_()
    b = torch.randn(f, generator=gen).requires_grad_()
    ref = F.conv2d(F.pad(x.to(dtype), pad), wt.to(dtype), b.to(dtype))
    g = torch.randn(ref.shape, generator=gen).to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = winograd.conv3x3(x, wt, b, pad)
    got = (out, *torch.autograd.grad(out, (x, wt, b), g))
    want = (ref, *torch.autograd.grad(ref, (x, wt, b), g))
    return got, want


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.mark.parametrize("shape", SHAPES)
def test_fp32_matches_conv2d_and_its_gradients(shape):
    got, want = _both(shape, torch.float32)
    assert got[0].shape == want[0].shape
    for a, b in zip(got, want, strict=True):
        # fp32 sums in another order (transforms, then GEMMs over C): rounding ~1e-7 relative, amplified by
        # the transforms' cancellations (G has 1/2 entries, A^T and B^T sum 3-4 terms); 1e-5 is ~100x margin
        assert _rel(a, b) < 1e-5


@pytest.mark.parametrize("shape", SHAPES)
def test_bf16_autocast_matches_conv2d_and_its_gradients(shape):
    got, want = _both(shape, torch.bfloat16)
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.float32  # as autocast's own conv2d gives
    for a, b in zip(got, want, strict=True):
        # bf16 keeps 8 bits of mantissa (2^-8 ≈ 0.4% relative): the transformed tiles and the GEMM products are
        # rounded to bf16 before the output transform sums them, which the direct conv never does; 3% of the
        # largest value bounds that (a wrong index or tile would be off by ~100%)
        assert _rel(a, b) < 3e-2


def test_model_layer_takes_the_winograd_path_and_falls_back(monkeypatch):
    model = build_spec([{"type": "Conv2D", "filters": 32, "kernel_size": 3, "padding": "same"}, {"type": "Flatten"}],
                       input_shape=(32, 9, 9))
    conv = model.conv2d
    x = torch.randn(2, 32, 9, 9)
    calls = []
    monkeypatch.setattr(winograd.Winograd3x3, "apply", lambda *a: calls.append(1) or F.conv2d(*a))
    y = conv(x)
    assert calls == [1] and y.shape == (2, 32, 9, 9)
    monkeypatch.setattr(winograd, "enabled", False)  # switched off (CNNLAB_WINOGRAD=0): the eager conv
    assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1)) and calls == [1]


def test_supported_limits():
    w = torch.zeros(32, 32, 3, 3)
    x = torch.zeros(1, 32, 8, 8)
    assert winograd.supported(x, w, (1, 1), (1, 1), 1)
    assert not winograd.supported(x, w, (2, 2), (1, 1), 1)  # stride 2
    assert not winograd.supported(x, w, (1, 1), (2, 2), 1)  # dilated
    assert not winograd.supported(x, w, (1, 1), (1, 1), 2)  # grouped
    assert not winograd.supported(x[:, :16], torch.zeros(32, 16, 3, 3), (1, 1), (1, 1), 1)  # < 32 in
    assert not winograd.supported(x, torch.zeros(16, 32, 3, 3), (1, 1), (1, 1), 1)  # < 32 out
    assert not winograd.supported(x, torch.zeros(32, 32, 5, 5), (1, 1), (1, 1), 1)  # 5x5

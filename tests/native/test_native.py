"""The native conv→pool→ReLU training kernel equals the eager PyTorch block (values and gradients)."""

import os
import shutil

import pytest
import torch

from cnnlab import native
from cnnlab.models.spec import build_spec


def need_kernel() -> None:
    """Skips only where no C compiler exists; a compiler that fails on convpool.c fails the test, with its message."""
    if not (os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")):
        pytest.skip("no C compiler here (gcc/cc): the eager path serves")
    assert native.library() is not None, native._failed


def _block(c, k, f, pad="valid"):
    return build_spec([{"type": "Conv2D", "filters": f, "kernel_size": k, "activation": "relu", "padding": pad},
                       {"type": "MaxPooling2D"}, {"type": "Flatten"}], input_shape=(c, 15, 15))


@pytest.mark.parametrize("c, k, f, pad", [(1, 3, 64, "valid"), (1, 5, 32, "valid"), (3, 3, 16, "valid"),
                                          (1, 3, 16, "same"), (2, 3, 48, "valid")])
def test_native_block_matches_eager(c, k, f, pad):
    need_kernel()
    torch.manual_seed(0)
    model = _block(c, k, f, pad)
    x = torch.randn(5, c, 15, 15)
    model.eval()
    ref = model(x)
    ref_grads = torch.autograd.grad((ref * torch.arange(ref.shape[1])).sum(), [model.conv2d.weight, model.conv2d.bias])
    model.train()  # training mode takes the native path
    assert model.conv2d.conv_pool_relu(x) is not None
    out = model(x)
    grads = torch.autograd.grad((out * torch.arange(out.shape[1])).sum(), [model.conv2d.weight, model.conv2d.bias])
    assert torch.allclose(out, ref, atol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.allclose(g, r, atol=1e-4, rtol=1e-4)


def test_unsupported_shapes_fall_back_to_eager():
    model = _block(1, 3, 10)  # 10 filters: not a multiple of 16
    model.train()
    assert model.conv2d.conv_pool_relu(torch.randn(2, 1, 15, 15)) is None
    assert model(torch.randn(2, 1, 15, 15)).shape == (2, 10 * 6 * 6)
    x = torch.randn(2, 1, 15, 15, requires_grad=True)  # input gradients (saliency) need the eager path
    assert _block(1, 3, 16).conv2d.conv_pool_relu(x) is None
    wide = _block(1, 3, 1040).train()  # more filters than convpool.c's backward buffer holds
    assert wide.conv2d.conv_pool_relu(torch.randn(2, 1, 15, 15)) is None


def test_a_rejected_call_raises_even_as_a_single_chunk():
    with pytest.raises(RuntimeError, match="rejected its arguments"):
        native._run([lambda: -1])
    with pytest.raises(RuntimeError, match="rejected its arguments"):
        native._run([lambda: 0, lambda: -1])


def test_switch_off(monkeypatch):
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_failed", None)
    monkeypatch.setenv("CNNLAB_NATIVE", "0")
    assert native.library() is None and "CNNLAB_NATIVE=0" in native._failed


@pytest.mark.parametrize("special", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_propagate_exactly_as_in_eager(special):
    """A NaN must reach the loss (and the NaN guard), not be pooled or ReLU'd away (it used to become 0)."""
    need_kernel()
    torch.manual_seed(0)
    model = _block(1, 3, 16)
    x = torch.randn(3, 1, 15, 15)
    x[0, 0, 4, 4] = special  # one bad pixel: its 3x3 neighbourhood of conv outputs is non-finite
    x[2, 0, :, :] = special  # a whole bad image
    model.eval()
    ref = model(x)
    ref_grads = torch.autograd.grad(ref.nan_to_num(0, 0, 0).sum() + ref.sum() * 0, [model.conv2d.bias])
    model.train()
    assert model.conv2d.conv_pool_relu(x) is not None
    out = model(x)
    grads = torch.autograd.grad(out.nan_to_num(0, 0, 0).sum() + out.sum() * 0, [model.conv2d.bias])
    torch.testing.assert_close(out, ref, equal_nan=True, atol=1e-5, rtol=1e-5)  # float sums in another order
    assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.isinf(), ref.isinf())
    torch.testing.assert_close(grads[0], ref_grads[0], equal_nan=True, atol=1e-4, rtol=1e-4)

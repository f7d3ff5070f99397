"""The native conv→pool→ReLU training kernel equals the eager PyTorch block (values and gradients)."""

import pytest
import torch

from cnnlab import native
from cnnlab.models.spec import build_spec


def _block(c, k, f, pad="valid"):
    return build_spec([{"type": "Conv2D", "filters": f, "kernel_size": k, "activation": "relu", "padding": pad},
                       {"type": "MaxPooling2D"}, {"type": "Flatten"}], input_shape=(c, 15, 15))


@pytest.mark.parametrize("c, k, f, pad", [(1, 3, 64, "valid"), (1, 5, 32, "valid"), (3, 3, 16, "valid"),
                                          (1, 3, 16, "same"), (2, 3, 48, "valid")])
def test_native_block_matches_eager(c, k, f, pad):
    if native.library() is None:
        pytest.skip("no C compiler here")
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

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


def _calls(lib, x, wt, b, f, bf16, g=None):
    """One forward (and, with ``g``, backward) through a loaded convpool library: (out, code, gw, gb)."""
    n, c, h, w = x.shape
    k = wt.shape[0] // c
    kh = kw = int(round(k ** 0.5))
    h2, w2 = (h - kh + 1) // 2, (w - kw + 1) // 2
    out = torch.empty(n, h2, w2, f, dtype=torch.bfloat16 if bf16 else torch.float32)
    code = torch.empty(n, h2, w2, f, dtype=torch.uint8)
    assert lib.convpool_forward(x.data_ptr(), wt.data_ptr(), b.data_ptr(), out.data_ptr(), int(bf16), code.data_ptr(),
                                0, n, c, h, w, kh, kw, f) == 0
    gw, gb = torch.zeros(wt.shape), torch.zeros(f)
    if g is not None:
        g = g.to(out.dtype).contiguous()
        assert lib.convpool_backward(x.data_ptr(), g.data_ptr(), int(bf16), code.data_ptr(), gw.data_ptr(),
                                     gb.data_ptr(), 0, n, c, h, w, kh, kw, f) == 0
    return out, code, gw, gb


@pytest.mark.parametrize("c, k, f", [(1, 3, 64), (1, 5, 32), (3, 3, 48), (7, 3, 80)])
def test_portable_and_vector_loops_agree(c, k, f):
    """The AVX-512 loops (taken where the compiler targets AVX-512) and the portable ones compute the same
    thing: the forward bit for bit (same FMA order), the gradients up to float summation order."""
    need_kernel()
    if native.library() is None:
        pytest.skip(native._failed)
    portable = native._build(("-DCONVPOOL_PORTABLE",))
    torch.manual_seed(0)
    x = torch.randn(6, c, 14, 14)
    wt, b = torch.randn(c * k * k, f), torch.randn(f)
    h2 = (14 - k + 1) // 2
    g = torch.randn(6, h2, h2, f)
    bad = x.clone()
    bad[0, 0, 3, 3] = float("nan")  # a NaN wins its windows and passes the ReLU on both paths
    for bf16 in (False, True):
        ref, fast = _calls(portable, bad, wt, b, f, bf16), _calls(native.library(), bad, wt, b, f, bf16)
        assert ref[0].isnan().any() and torch.equal(ref[0].isnan(), fast[0].isnan())
        assert torch.equal(ref[0].nan_to_num(), fast[0].nan_to_num()) and torch.equal(ref[1], fast[1])
        ref, fast = _calls(portable, x, wt, b, f, bf16, g), _calls(native.library(), x, wt, b, f, bf16, g)
        assert torch.equal(ref[0], fast[0]) and torch.equal(ref[1], fast[1])
        # gradients: sums of the same products in another order (per image, then over images)
        torch.testing.assert_close(fast[2], ref[2], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(fast[3], ref[3], rtol=1e-5, atol=1e-4)


def test_bf16_output_is_the_fp32_output_rounded_and_takes_a_bf16_gradient():
    """Under bf16 autocast the block writes bf16 itself: exactly what casting its fp32 output gives (round to
    nearest even), and its backward on that bf16 gradient equals the fp32 backward on the same values."""
    need_kernel()
    torch.manual_seed(0)
    model = _block(1, 3, 64).train()
    x = torch.randn(4, 1, 15, 15)
    out32 = model.conv2d.conv_pool_relu(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = model.conv2d.conv_pool_relu(x)
    assert out32.dtype == torch.float32 and out16.dtype == torch.bfloat16
    assert torch.equal(out16, out32.to(torch.bfloat16))
    g = torch.randn(out32.shape).to(torch.bfloat16)
    grads16 = torch.autograd.grad(out16, [model.conv2d.weight, model.conv2d.bias], g)
    grads32 = torch.autograd.grad(out32, [model.conv2d.weight, model.conv2d.bias], g.float())
    for a, r in zip(grads16, grads32, strict=True):
        assert torch.equal(a, r)


def test_a_cache_it_cannot_write_means_the_eager_path_not_an_error(monkeypatch):
    """The kernel is an optimisation: a cache folder it cannot write (atomic_path's one-line CnnlabError) turns
    it off with the reason, and the block runs eagerly, as without a compiler."""
    from cnnlab.errors import CnnlabError

    def refuse(*args, **kwargs):
        raise CnnlabError("cannot write native/convpool.so: permission denied; give a path in a folder you can write")

    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_failed", None)
    monkeypatch.setattr(native, "cache_dir", lambda: native.Path("/nonexistent-cnnlab-test-cache"))
    monkeypatch.setattr(native, "atomic_path", refuse)
    if not (os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")):
        pytest.skip("no C compiler here: the build fails before it writes")
    assert native.library() is None and "permission denied" in native._failed and "eager path" in native._failed
    model = _block(1, 3, 16).train()
    assert model.conv2d.conv_pool_relu(torch.randn(2, 1, 15, 15)) is None
    assert torch.isfinite(model(torch.randn(2, 1, 15, 15))).all()

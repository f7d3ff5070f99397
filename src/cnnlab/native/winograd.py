"""Winograd F(2x2, 3x3) for stride-1 3x3 convolutions with ≥ 32 input and output channels (issue 15, item 3).

Source: A. Lavin and S. Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016
(arXiv:1509.09308), section 4.1: each 2x2 output tile is ``A^T [(G g G^T) ⊙ (B^T d B)] A`` for the 4x4 input
tile ``d`` read at stride 2, i.e. 16 multiplications per tile and channel pair instead of 36 (2.25x fewer).
Summed over channels, the 16 element-wise products become 16 batched GEMMs (tiles x C) @ (C x F), which
is where the speed must come from (``torch.bmm``, oneDNN/MKL, bf16 under autocast); the transforms are a few
strided additions in torch tensor ops on the channels-last layout.

Backward is the exact adjoint of that forward (so it is the convolution's gradient up to rounding):
``dM = A dY A^T`` per tile, then ``dU = V^T dM`` (grad-weight in the transformed domain, ``dg = G^T dU G``)
and ``dV = dM U^T`` (grad-input, ``dd = B dV B^T`` overlap-added back onto the tiles' 4x4 windows).

``CNNLAB_WINOGRAD=0`` turns it off; :data:`enabled` switches it at run time (the A/B benchmark does).
``F.conv2d`` remains the fallback everywhere :func:`supported` says no.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

enabled = os.environ.get("CNNLAB_WINOGRAD", "1") != "0"
MIN_CHANNELS = 32

# Lavin & Gray's F(2x2, 3x3) filter transform G (4x3).
_G = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def supported(x: torch.Tensor, weight: torch.Tensor, stride, dilation, groups: int) -> bool:
    """Whether the Winograd path applies: CPU, 3x3 stride 1, no dilation or groups, ≥ 32 channels in and out."""
    f, c, kh, kw = weight.shape
    return (enabled and x.device.type == "cpu" and (kh, kw) == (3, 3) and tuple(stride) == (1, 1)
            and tuple(dilation) == (1, 1) and groups == 1 and c >= MIN_CHANNELS and f >= MIN_CHANNELS
            and x.dim() == 4 and x.shape[2] >= 3 and x.shape[3] >= 3)


def _bt(d0, d1, d2, d3):
    """B^T along one axis: the 4 rows of an input tile → 4 transformed rows."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


def _b(v0, v1, v2, v3):
    """B along one axis (the adjoint of :func:`_bt`)."""
    return v0, v1 - v2 + v3, v1 + v2 - v0, -v3


def _at(m0, m1, m2, m3):
    """A^T along one axis: 4 transformed rows → the 2 output rows."""
    return m0 + m1 + m2, m1 - m2 - m3


def _a(y0, y1):
    """A along one axis (the adjoint of :func:`_at`)."""
    return y0, y0 + y1, y0 - y1, -y1


def _input_tiles(xh: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """(N, 2th+2, 2tw+2, C) channels-last input → V = B^T d B, (16, N*th*tw, C)."""
    rows = _bt(*(xh[:, r:r + 2 * th:2] for r in range(4)))
    out = [v for t in rows for v in _bt(*(t[:, :, s:s + 2 * tw:2] for s in range(4)))]
    return torch.stack(out).reshape(16, -1, xh.shape[-1])


def _output_tiles(m: torch.Tensor, n: int, th: int, tw: int) -> torch.Tensor:
    """M (16, N*th*tw, F) → Y = A^T M A as (N, 2th, 2tw, F)."""
    m = m.view(4, 4, n, th, tw, -1)
    rows = _at(*m.unbind(0))  # 2 x (4, N, th, tw, F)
    y = torch.stack([torch.stack(_at(*r.unbind(0)), dim=3) for r in rows], dim=2)  # (N, th, 2, tw, 2, F)
    return y.reshape(n, 2 * th, 2 * tw, -1)


def _grad_tiles(gh: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """(N, 2th, 2tw, F) output gradient → dM = A dY A^T, (16, N*th*tw, F)."""
    rows = _a(gh[:, 0::2], gh[:, 1::2])
    out = [v for t in rows for v in _a(t[:, :, 0::2], t[:, :, 1::2])]
    return torch.stack(out).reshape(16, -1, gh.shape[-1])


def _fold(dv: torch.Tensor, n: int, th: int, tw: int) -> torch.Tensor:
    """dV (16, N*th*tw, C) → dd = B dV B^T, overlap-added onto the (N, 2th+2, 2tw+2, C) input."""
    dv = dv.view(4, 4, n, th, tw, -1)
    rows = _b(*dv.unbind(0))  # 4 x (4, N, th, tw, C): tile row r of every tile, by column component

    def add_along(parts, dim):  # 4 pieces at stride 2, overlapping by 2 → length 2t+2 along dim
        size = list(parts[0].shape)
        t = size[dim]
        size[dim] = t + 1
        even, odd = parts[0].new_zeros(size), parts[0].new_zeros(size)
        even.narrow(dim, 0, t).add_(parts[0])
        even.narrow(dim, 1, t).add_(parts[2])
        odd.narrow(dim, 0, t).add_(parts[1])
        odd.narrow(dim, 1, t).add_(parts[3])
        return torch.stack([even, odd], dim=dim + 1).flatten(dim, dim + 1)

    cols = [add_along(_b(*r.unbind(0)), 2) for r in rows]  # 4 x (N, th, 2tw+2, C)
    return add_along(cols, 1)


class Winograd3x3(torch.autograd.Function):
    """conv2d(x, weight) for a stride-1 3x3 kernel on an already padded input, via F(2x2, 3x3); see module."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        f = weight.shape[0]
        ho, wo = h - 2, w - 2
        th, tw = -(-ho // 2), -(-wo // 2)
        xh = x.permute(0, 2, 3, 1)  # NHWC (free for a channels-last input)
        if 2 * th + 2 != h or 2 * tw + 2 != w:  # an odd output size: one zero row / column completes the tiles
            xh = F.pad(xh, (0, 0, 0, 2 * tw + 2 - w, 0, 2 * th + 2 - h))
        v = _input_tiles(xh, th, tw)
        u = torch.einsum("ai,bj,fcij->abcf", _G, _G, weight.float()).reshape(16, c, f).to(x.dtype)  # G g G^T
        m = torch.bmm(v, u)
        y = _output_tiles(m, n, th, tw)[:, :ho, :wo]
        ctx.save_for_backward(v, u)
        ctx.shape = (n, c, h, w, th, tw, weight.dtype)
        return y.permute(0, 3, 1, 2)  # (N, F, Ho, Wo), channels-last strides

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        v, u = ctx.saved_tensors
        n, c, h, w, th, tw, wdtype = ctx.shape
        gh = grad.to(v.dtype).permute(0, 2, 3, 1)
        ho, wo = gh.shape[1], gh.shape[2]
        if (2 * th, 2 * tw) != (ho, wo):
            gh = F.pad(gh, (0, 0, 0, 2 * tw - wo, 0, 2 * th - ho))
        dm = _grad_tiles(gh, th, tw)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            dx = _fold(torch.bmm(dm, u.transpose(1, 2)), n, th, tw)
            grad_x = dx[:, :h, :w].permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            du = torch.bmm(v.transpose(1, 2), dm).float().view(4, 4, c, -1)  # (4, 4, C, F)
            gw = torch.einsum("ai,bj,abcf->fcij", _G, _G, du)  # G^T dU G
            grad_w = gw.to(wdtype)
        return grad_x, grad_w


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            padding: tuple[int, int, int, int] = (0, 0, 0, 0)) -> torch.Tensor:
    """``F.conv2d(F.pad(x, padding), weight, bias)`` for a stride-1 3x3 kernel, through Winograd F(2x2, 3x3).

    Args:
        x: (N, C, H, W) input, ideally channels-last.
        weight: (F, C, 3, 3).
        bias: (F,) or None.
        padding: (left, right, top, bottom) zero padding, F.pad's order.

    Returns:
        (N, F, H + top + bottom - 2, W + left + right - 2), channels-last strides. Under CPU autocast the
        computation (transforms and GEMMs) runs in the autocast dtype, as ``F.conv2d`` would.
    """
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    if any(padding):
        x = F.pad(x, padding)
    with torch.autocast("cpu", enabled=False):
        y = Winograd3x3.apply(x, weight)
        return y + bias.view(1, -1, 1, 1) if bias is not None else y

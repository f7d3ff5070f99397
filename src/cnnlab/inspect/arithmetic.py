"""The arithmetic behind one output value of a layer, with the real numbers: the first tutorial's hand-made
kernel demo (:mod:`cnnlab.inspect.kernels`) generalised to any trained model's conv, pooling, activation,
batch-norm and dense layers, and to the softmax over the logits.

The pure functions (:func:`conv_pixel`, :func:`pool_pixel`, :func:`softmax_math`, ...) take numpy arrays
and recompute one value the way the layer does, in float64. :func:`explain` runs a model on one image,
captures a layer's input and output with a forward hook, recomputes the chosen value from the input and
the layer's parameters, and reports it beside the value the layer actually produced (``actual``), so a
reader can check the arithmetic: they agree to float32 rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlab.errors import CnnlabError, one_of
from cnnlab.models.spec import ACTIVATIONS, Pool2D
from cnnlab.models.spec import Activation as SpecActivation
from cnnlab.models.summary import eval_mode, model_device

TOP_TERMS = 12  # dense units: the largest contributions listed one by one, the rest summed


@dataclass(frozen=True)
class _Math:
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: arrays as nested lists (NaN → None), plus ``kind``."""
        return {"kind": self.kind, **{f.name: _plain(getattr(self, f.name)) for f in fields(self)}}  # type: ignore


def _plain(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v] if v.ndim else _plain(v.item())
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, np.generic):
        return _plain(v.item())
    return v


@dataclass(frozen=True)
class ConvPixel(_Math):
    """``output = activation(sum(patch * kernel) + bias)`` for output (channel, row, col).

    Attributes:
        origin: (row, col) of the patch's top-left corner in the unpadded input (negative inside padding).
        step: (row, col) distance between patch samples (the dilation).
        input_channels: the input channels the kernel reads (all, or one group's).
        patch: (C_in, kh, kw) input values under the kernel; zero where it lies on padding.
        kernel: (C_in, kh, kw) the filter's weights.
        products: patch * kernel.
        channel_sums: (C_in,) sum of the products per input channel.
        bias: the filter's bias (0 without one).
        pre_activation: channel_sums.sum() + bias.
        activation: the function applied inside the layer (``linear`` = none).
        output: activation(pre_activation).
    """

    kind = "conv"
    channel: int
    row: int
    col: int
    origin: tuple[int, int]
    step: tuple[int, int]
    input_channels: list[int]
    patch: np.ndarray
    kernel: np.ndarray
    products: np.ndarray
    channel_sums: np.ndarray
    bias: float
    pre_activation: float
    activation: str
    output: float
    actual: float | None = None


@dataclass(frozen=True)
class PoolPixel(_Math):
    """``output = max(window)`` or ``mean(window)`` (real pixels only, as TensorFlow) for (channel, row, col).

    Attributes:
        window: (kh, kw) input values; NaN where the window lies on padding.
        winner: (row, col) in ``window`` of the maximum (max pooling), else None.
    """

    kind = "pool"
    channel: int
    row: int
    col: int
    pool: str
    origin: tuple[int, int]
    window: np.ndarray
    winner: tuple[int, int] | None
    output: float
    actual: float | None = None


@dataclass(frozen=True)
class ElementPixel(_Math):
    """A function of one input value (an activation layer, batch normalisation): ``output = f(input)``."""

    kind = "element"
    index: tuple[int, ...]
    function: str
    formula: str
    input: float
    output: float
    actual: float | None = None


@dataclass(frozen=True)
class DenseUnit(_Math):
    """``output = activation(inputs · weights + bias)`` for one unit, with the largest terms listed.

    Attributes:
        terms: the ``TOP_TERMS`` largest |input × weight| as (input index, input, weight, product).
        rest: the sum of the other products; ``sum(products of terms) + rest + bias = pre_activation``.
    """

    kind = "dense"
    unit: int
    inputs: int
    terms: list[tuple[int, float, float, float]]
    rest: float
    bias: float
    pre_activation: float
    activation: str
    output: float
    actual: float | None = None


@dataclass(frozen=True)
class SoftmaxMath(_Math):
    """``p_i = exp(z_i - max z) / sum_j exp(z_j - max z)``: the logits become probabilities."""

    kind = "softmax"
    logits: np.ndarray
    shifted: np.ndarray
    exps: np.ndarray
    total: float
    probs: np.ndarray


# ------------------------------------------------------------------------------------------ pure functions


def _activate(name: str, value: float) -> float:
    fn = ACTIVATIONS.get(name)
    if name not in ACTIVATIONS:
        raise one_of("activation", name, ACTIVATIONS)
    return value if fn is None else float(fn(torch.tensor(value, dtype=torch.float64)))


def _check_position(what: str, pos: tuple[int, ...], size: tuple[int, ...]) -> None:
    if len(pos) != len(size) or any(not 0 <= p < s for p, s in zip(pos, size, strict=False)):
        ranges = ", ".join(f"0..{s - 1}" for s in size)
        raise CnnlabError(f"{what} {tuple(pos)} is outside the layer's output {tuple(size)}; use {ranges}")


def conv_pixel(inputs: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, channel: int, row: int, col: int, *,
               stride: tuple[int, int] = (1, 1), pad: tuple[int, int, int, int] = (0, 0, 0, 0),
               dilation: tuple[int, int] = (1, 1), groups: int = 1, activation: str = "linear") -> ConvPixel:
    """The numbers behind a 2-D convolution's output (channel, row, col) for one image.

    Like a CNN layer (and the tutorial's loop) the kernel is not flipped (cross-correlation).

    Args:
        inputs: (C_in, H, W) the layer's input.
        weight: (C_out, C_in / groups, kh, kw).
        bias: (C_out,) or None.
        channel, row, col: the output value.
        stride: (rows, cols).
        pad: zeros added as (left, right, top, bottom), ``torch.nn.functional.pad``'s order.
        dilation: (rows, cols) spacing of the kernel taps.
        groups: as ``nn.Conv2d``.
        activation: applied after the bias (``linear`` = none).

    Raises:
        CnnlabError: the position is outside the output.
    """
    x = np.asarray(inputs, np.float64)
    w = np.asarray(weight, np.float64)
    c_out, cpg, kh, kw = w.shape
    left, right, top, bottom = pad
    (sh, sw), (dh, dw) = stride, dilation
    h, wd = x.shape[1] + top + bottom, x.shape[2] + left + right
    size = (c_out, (h - dh * (kh - 1) - 1) // sh + 1, (wd - dw * (kw - 1) - 1) // sw + 1)
    _check_position("output position", (channel, row, col), size)
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right)))
    group = channel // (c_out // groups)
    cin = list(range(group * cpg, (group + 1) * cpg))
    r0, c0 = row * sh, col * sw
    patch = padded[cin, r0:r0 + dh * (kh - 1) + 1:dh, c0:c0 + dw * (kw - 1) + 1:dw]
    kernel = w[channel]
    products = patch * kernel
    sums = products.sum(axis=(1, 2))
    b = float(bias[channel]) if bias is not None else 0.0
    pre = float(sums.sum()) + b
    return ConvPixel(channel, row, col, (r0 - top, c0 - left), (dh, dw), cin, patch, kernel, products, sums, b,
                     pre, activation, _activate(activation, pre))


def pool_pixel(inputs: np.ndarray, pool: str, channel: int, row: int, col: int, *, size: tuple[int, int],
               stride: tuple[int, int], pad: tuple[int, int, int, int] = (0, 0, 0, 0)) -> PoolPixel:
    """The window behind a max or average pooling output (channel, row, col); padding never counts.

    Args:
        inputs: (C, H, W) the layer's input.
        pool: ``max`` or ``avg``.
        size, stride: (rows, cols).
        pad: (left, right, top, bottom) padding around the input.

    Raises:
        CnnlabError: the position is outside the output, or an unknown ``pool``.
    """
    if pool not in ("max", "avg"):
        raise one_of("pooling", pool, ("max", "avg"))
    x = np.asarray(inputs, np.float64)
    left, right, top, bottom = pad
    h, w = x.shape[1] + top + bottom, x.shape[2] + left + right
    out = (x.shape[0], (h - size[0]) // stride[0] + 1, (w - size[1]) // stride[1] + 1)
    _check_position("output position", (channel, row, col), out)
    padded = np.pad(x[channel], ((top, bottom), (left, right)), constant_values=np.nan)
    r0, c0 = row * stride[0], col * stride[1]
    window = padded[r0:r0 + size[0], c0:c0 + size[1]]
    if pool == "max":
        flat = int(np.nanargmax(window))
        winner = (flat // window.shape[1], flat % window.shape[1])
        value = float(window[winner])
    else:
        winner, value = None, float(np.nanmean(window))
    return PoolPixel(channel, row, col, pool, (r0 - top, c0 - left), window, winner, value)


def dense_unit(inputs: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, unit: int, *,
               activation: str = "linear", top: int = TOP_TERMS) -> DenseUnit:
    """The weighted sum behind one unit of a dense layer.

    Args:
        inputs: (F,) the layer's input.
        weight: (units, F), ``nn.Linear``'s layout.
        bias: (units,) or None.
        unit: the output unit.
        activation: applied after the bias.
        top: how many of the largest |products| to list.

    Raises:
        CnnlabError: ``unit`` is out of range.
    """
    x = np.asarray(inputs, np.float64).ravel()
    w = np.asarray(weight, np.float64)
    _check_position("unit", (unit,), (w.shape[0],))
    products = x * w[unit]
    order = np.argsort(-np.abs(products), kind="stable")[:top]
    terms = [(int(i), float(x[i]), float(w[unit, i]), float(products[i])) for i in order]
    b = float(bias[unit]) if bias is not None else 0.0
    pre = float(products.sum()) + b
    rest = float(products.sum() - products[order].sum())
    return DenseUnit(unit, int(x.size), terms, rest, b, pre, activation, _activate(activation, pre))


def softmax_math(logits: np.ndarray) -> SoftmaxMath:
    """Logits (K,) → probabilities, step by step, shifted by the largest logit as every stable softmax is."""
    z = np.asarray(logits, np.float64).ravel()
    shifted = z - z.max()
    exps = np.exp(shifted)
    total = float(exps.sum())
    return SoftmaxMath(z, shifted, exps, total, exps / total)


# ------------------------------------------------------------------------------------------ on a model


def _conv_pad(m: nn.Conv2d) -> tuple[int, int, int, int]:
    extra = getattr(m, "extra_pad", None)  # cnnlab's Keras Conv2D: asymmetric 'same' padding, applied first
    if extra is not None:
        return tuple(int(p) for p in extra)
    if isinstance(m.padding, str):
        return tuple(int(p) for p in m._reversed_padding_repeated_twice) if m.padding == "same" else (0, 0, 0, 0)
    ph, pw = m.padding
    return (pw, pw, ph, ph)


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _activation_name(m: nn.Module) -> str:
    name = getattr(m, "activation", "linear")
    return name if isinstance(name, str) else "linear"


def _explain_conv(m: nn.Conv2d, x: np.ndarray, pos: tuple[int, ...]) -> ConvPixel:
    if m.padding_mode != "zeros":
        raise CnnlabError(f"padding mode {m.padding_mode!r} is not shown; only zero padding is")
    bias = m.bias.detach().cpu().numpy() if m.bias is not None else None
    return conv_pixel(x, m.weight.detach().cpu().numpy(), bias, *pos, stride=_pair(m.stride), pad=_conv_pad(m),
                      dilation=_pair(m.dilation), groups=m.groups, activation=_activation_name(m))


def _explain_pool(m: nn.Module, x: np.ndarray, pos: tuple[int, ...]) -> PoolPixel:
    if isinstance(m, Pool2D):
        return pool_pixel(x, m.kind, *pos, size=m.size, stride=m.stride, pad=m.pad)
    if getattr(m, "ceil_mode", False) or _pair(getattr(m, "dilation", 1)) != (1, 1):
        raise CnnlabError("pooling with ceil_mode or dilation is not shown; pick a conv or activation layer")
    ph, pw = _pair(m.padding)
    k = _pair(m.kernel_size)
    s = _pair(m.stride if m.stride is not None else m.kernel_size)
    return pool_pixel(x, "max" if isinstance(m, nn.MaxPool2d) else "avg", *pos, size=k, stride=s, pad=(pw, pw, ph, ph))


def _explain_dense(m: nn.Linear, x: np.ndarray, pos: tuple[int, ...]) -> DenseUnit:
    bias = m.bias.detach().cpu().numpy() if m.bias is not None else None
    return dense_unit(x, m.weight.detach().cpu().numpy(), bias, pos[0], activation=_activation_name(m))


def _explain_element(m: nn.Module, x: np.ndarray, pos: tuple[int, ...]) -> ElementPixel:
    _check_position("position", pos, x.shape)
    value = float(x[pos])
    if isinstance(m, nn.BatchNorm2d):
        if m.running_mean is None or m.running_var is None:
            raise CnnlabError("batch norm without running statistics uses each batch's own; nothing fixed to show")
        c = pos[0]
        with torch.no_grad():
            mean, var = float(m.running_mean[c]), float(m.running_var[c])
            g = float(m.weight[c]) if m.weight is not None else 1.0
            b = float(m.bias[c]) if m.bias is not None else 0.0
        out = (value - mean) / math.sqrt(var + m.eps) * g + b
        formula = f"(x - {mean:.6g}) / sqrt({var:.6g} + {m.eps:g}) * {g:.6g} + {b:.6g}"
        return ElementPixel(pos, "batch norm", formula, value, out)
    name = m.activation if isinstance(m, SpecActivation) else type(m).__name__.lower()
    with torch.no_grad():
        out = float(m(torch.tensor([value], dtype=torch.float64)))
    formula = "max(0, x)" if name == "relu" else f"{name}(x)"
    return ElementPixel(pos, name, formula, value, out)


def _explainer(m: nn.Module) -> Callable[[nn.Module, np.ndarray, tuple[int, ...]], _Math] | None:
    if isinstance(m, nn.Conv2d):
        return _explain_conv
    if isinstance(m, (Pool2D, nn.MaxPool2d, nn.AvgPool2d)):
        return _explain_pool
    if isinstance(m, nn.Linear):
        return _explain_dense
    if isinstance(m, (nn.BatchNorm2d, SpecActivation)) or type(m).__module__ == "torch.nn.modules.activation":
        return _explain_element
    return None


def explainable(model: nn.Module, layer: str) -> bool:
    """Whether :func:`explain` can show ``layer``'s arithmetic (conv, pooling, dense, activation, batch norm)."""
    m = dict(model.named_modules()).get(layer)
    return layer != "" and m is not None and _explainer(m) is not None


def explain(model: nn.Module, x: torch.Tensor, layer: str, position: tuple[int, ...] | None = None) -> _Math:
    """Recomputes one output value of ``layer`` for one image from the layer's real input and parameters.

    Args:
        model: the classifier (run in eval mode without gradients; hooks removed afterwards).
        x: one normalised image (1, C, H, W).
        layer: a name from ``dict(model.named_modules())``.
        position: (channel, row, col) for a feature map, (unit,) for a vector. Left out trailing parts
            go to the largest value: (channel,) picks that channel's strongest pixel, None the layer's.

    Returns:
        :class:`ConvPixel`, :class:`PoolPixel`, :class:`DenseUnit` or :class:`ElementPixel`, with
        ``actual`` = the value the layer produced.

    Raises:
        CnnlabError: unknown layer, a layer type without arithmetic here, or a position out of range.
    """
    modules = dict(model.named_modules())
    m = modules.get(layer) if layer else None
    if m is None:
        raise one_of("layer", layer, [n for n in modules if n and _explainer(modules[n])])
    how = _explainer(m)
    if how is None:
        raise CnnlabError(f"layer {layer!r} ({type(m).__name__}) has no arithmetic to show; pick a conv, pooling, "
                          "dense, activation or batch-norm layer")
    seen: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if "in" not in seen:  # a layer called twice keeps its first call
            seen["in"], seen["out"] = inputs[0].detach().cpu()[0], output.detach().cpu()[0]

    handle = m.register_forward_hook(hook)
    try:
        with eval_mode(model), torch.no_grad():
            model(x[:1].to(model_device(model)))
    finally:
        handle.remove()
    if "in" not in seen:
        raise CnnlabError(f"layer {layer!r} is not called by the model's forward pass; pick a layer it uses")
    inp, out = seen["in"].double().numpy(), seen["out"].double().numpy()
    position = tuple(int(p) for p in (position or ()))
    if len(position) < out.ndim:  # the rest at the largest value: the most telling place to look
        _check_position("position", position, out.shape[:len(position)])
        sub = out[position]
        position += tuple(int(i) for i in np.unravel_index(int(np.argmax(sub)), sub.shape))
    _check_position("position", position, out.shape)
    return replace(how(m, inp, position), actual=float(out[position]))

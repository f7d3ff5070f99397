"""A Keras-style layer list checked and sized without PyTorch: every layer's output shape and parameters.

The one implementation of a layer list's rules: which layer types and keys exist, what each key may hold,
and how each layer changes the shape: TensorFlow's 'valid' / 'same' arithmetic (output ``(n - k) // s + 1``
or ``ceil(n / s)``, odd 'same' padding at the end), Flatten's product, Dense's units. It also counts the
parameters the way Keras's ``model.summary()`` does (Conv2D ``filters * (C * kh * kw + bias)``, Dense
``units * (in + bias)``, BatchNormalization gamma / beta trainable and its moving mean / variance not).
:func:`cnnlab.models.spec.build_spec` builds its modules from what :func:`infer_spec` returns, so a layer
list's summary can be worked out here, without importing torch (~1.2 s of start-up), and equals the traced one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cnnlab.errors import CnnlabError, one_of
from cnnlab.models.registry import MAX_INPUT_PIXELS
from cnnlab.models.specinfo import keras_name

Shape = tuple[int, ...]  # (C, H, W) for feature maps, (F,) after Flatten

# The activations a layer may name; cnnlab.models.spec.ACTIVATIONS gives each its function (a test pins both alike).
ACTIVATION_NAMES = ("linear", "relu", "sigmoid", "tanh", "softmax", "elu", "selu", "gelu", "silu", "swish",
                    "leaky_relu", "softplus")

KEYS = {
    "Conv2D": {"filters", "kernel_size", "strides", "padding", "activation", "use_bias"},
    "MaxPooling2D": {"pool_size", "strides", "padding"},
    "AveragePooling2D": {"pool_size", "strides", "padding"},
    "GlobalAveragePooling2D": set(), "GlobalMaxPooling2D": set(), "Flatten": set(),
    "Dense": {"units", "activation", "use_bias"},
    "Dropout": {"rate"},
    "BatchNormalization": {"momentum", "epsilon", "center", "scale"},
    "Activation": {"activation"},
}
# Limits on what a layer list may ask to be built (and a model file may claim): generous for real models (VGG-16
# at 224x224 has 138 million parameters, its largest feature map 64x224x224 = 3.2 million values).
MAX_PARAMS = 2**31  # parameters in all: 8 GiB of float32
MAX_SIDE = 8192  # a kernel, pool window or stride larger than the largest image side is a mistake
MAX_ACTIVATION = 2**28  # values in one layer's output for one image (1 GiB of float32)

_REQUIRED = {"Conv2D": ("filters", "kernel_size"), "Dense": ("units",), "Dropout": ("rate",), "Activation": ("activation",)}


@dataclass(frozen=True)
class SpecLayer:
    """One checked layer of a layer list.

    Attributes:
        kind: the Keras layer type (``Conv2D``).
        name: its Keras name (``conv2d_1``) or the one the list gives.
        settings: the layer's keys as given, ``units: num_classes`` filled in (what ``SpecModel.spec`` keeps).
        in_shape: its input without the batch, (C, H, W) or (F,).
        out_shape: its output without the batch.
        params: parameters as Keras counts them (BatchNormalization's moving statistics included).
        trainable: how many of ``params`` are trained.
        args: what building it needs, checked: ``filters``/``units``, ``kernel``/``size`` and ``stride`` pairs,
            ``pad`` (left, right, top, bottom), ``activation``, ``bias``, ``pool`` (max/avg), ``rate``,
            ``momentum`` (PyTorch's sense), ``eps``, ``center``, ``scale``.
    """

    kind: str
    name: str
    settings: dict
    in_shape: Shape
    out_shape: Shape
    params: int
    trainable: int
    args: dict[str, Any] = field(default_factory=dict)


def infer_spec(layers: Sequence[Mapping[str, Any]], *, input_shape: Sequence[int],
               num_classes: int | None = None) -> list[SpecLayer]:
    """Checks a layer list and works out every layer's output shape and parameters from ``input_shape``.

    Args:
        layers: Keras-named layer dicts (``type`` plus that layer's keys; optional ``name``). A Dense
            layer may say ``units: num_classes`` to get as many units as the data has classes.
        input_shape: (C, H, W) of one input image.
        num_classes: when given, the last Dense layer must have this many units.

    Raises:
        CnnlabError: unknown layer type or key, missing key, impossible shape (e.g. a kernel larger than
            its input), Dense on a feature map without Flatten, or a class-count mismatch.
    """
    if not layers:
        raise CnnlabError("model.layers is empty; list at least one layer (e.g. {type: Dense, units: 10})")
    shape: Shape = tuple(int(s) for s in input_shape)
    _check_input(shape)
    found: list[SpecLayer] = []
    counts: dict[str, int] = {}
    names: set[str] = set()
    total = 0
    last = len(layers) - 1
    for i, raw in enumerate(layers):
        if not isinstance(raw, Mapping):
            raise CnnlabError(f"model.layers.{i} must be a mapping like {{type: Conv2D, filters: 32}}, got {raw!r}")
        layer = dict(raw)
        kind = layer.pop("type", None)
        if not isinstance(kind, str) or kind not in KEYS:  # a list or mapping would not even hash
            raise one_of(f"layer type in model.layers.{i}", kind, KEYS)
        name = keras_name(kind, layer.pop("name", None), counts)
        where = f"model.layers.{i} ({name}: {kind})"
        layer.pop("input_shape", None)  # pasted from Keras code; the data decides the input shape
        _check_keys(kind, layer, where)
        if name in names:
            raise CnnlabError(f"{where}: duplicate layer name {name!r}")
        names.add(name)
        if kind == "Dense" and layer.get("units") == "num_classes":
            if num_classes is None:
                raise CnnlabError(f"{where}: units: num_classes needs the data's class count")
            layer["units"] = num_classes  # placeholder for "as many units as the data has classes"
        args, out, params, trainable = _size(kind, layer, shape, where, final=(i == last))
        total += params
        _check_limits(out, total, where)
        found.append(SpecLayer(kind, name, {"type": kind, "name": name, **layer}, shape, out, params, trainable, args))
        shape = out
    if len(shape) != 1:
        raise CnnlabError(f"the model ends with a {shape} feature map; end with Flatten and Dense(units=classes)")
    if num_classes is not None and shape[0] != num_classes:
        raise CnnlabError(f"the last layer outputs {shape[0]} values but the data has {num_classes} classes; "
                          f"set the last Dense layer's units to {num_classes}")
    return found


def _check_input(shape: Shape) -> None:
    if len(shape) >= 2 and _prod(shape[-2:]) > MAX_INPUT_PIXELS:
        raise CnnlabError(f"the input image of {' x '.join(map(str, shape))} has over {MAX_INPUT_PIXELS:,} pixels "
                          "(cnnlab's limit, 8192 x 8192); use smaller images")
    if _prod(shape) > MAX_ACTIVATION:
        raise CnnlabError(f"the input image of {' x '.join(map(str, shape))} has over {MAX_ACTIVATION:,} values "
                          "(cnnlab's limit per layer); use smaller images or fewer channels")


def _check_limits(out: Shape, total: int, where: str) -> None:
    """Refuses a layer whose output or the model's parameters so far exceed cnnlab's limits (before building)."""
    if _prod(out) > MAX_ACTIVATION:
        raise CnnlabError(f"{where}: its output {out} holds {_prod(out):,} values per image, over cnnlab's limit of "
                          f"{MAX_ACTIVATION:,} (2**28) per layer; use fewer filters/units or a smaller input")
    if total > MAX_PARAMS:
        raise CnnlabError(f"{where}: the model reaches {total:,} parameters here, over cnnlab's limit of "
                          f"{MAX_PARAMS:,} (2**31); use fewer filters/units or a smaller input")


def _prod(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _check_keys(kind: str, layer: dict, where: str) -> None:
    unknown = set(layer) - KEYS[kind]
    if unknown:
        raise CnnlabError(f"{where}: unknown key {sorted(unknown)[0]!r}; valid: {', '.join(sorted(KEYS[kind])) or 'none'}")
    for key in _REQUIRED.get(kind, ()):
        if key not in layer:
            raise CnnlabError(f"{where}: missing {key!r}")


def activation(name: Any, where: str) -> str:
    """The activation's key (``None`` / ``"None"`` / ``"none"`` mean ``linear``), case-insensitive."""
    key = "linear" if name in (None, "None", "none") else str(name).lower()
    if key not in ACTIVATION_NAMES:
        raise one_of(f"activation in {where}", name, ACTIVATION_NAMES)
    return key


def _pair(value: Any, key: str, where: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise CnnlabError(f"{where}: {key} must be an integer or [h, w], got {value!r}")
    if isinstance(value, int):
        pair = (value, value)
    elif isinstance(value, Sequence) and len(value) == 2 and all(type(v) is int for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise CnnlabError(f"{where}: {key} must be an integer or [h, w], got {value!r}")
    if min(pair) < 1:
        raise CnnlabError(f"{where}: {key} must be ≥ 1, got {value!r}")
    if max(pair) > MAX_SIDE:  # Keras's rules would size it (same padding), but no kernel can run it
        raise CnnlabError(f"{where}: {key} {value!r} is over {MAX_SIDE} (cnnlab's largest image side); use a "
                          "smaller value")
    return pair


def same_pad(size: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding: output ceil(size / s); odd padding goes to the end."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def out_size(size: int, k: int, s: int, padding: str) -> int:
    """Output length of a window ``k`` at stride ``s`` over ``size`` under TensorFlow's padding rules."""
    return -(-size // s) if padding == "same" else (size - k) // s + 1


def _need_map(shape: Shape, where: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise CnnlabError(f"{where} needs a (C, H, W) feature map but gets a flat vector of {shape[0]}; "
                          "move it before Flatten/Dense")
    return shape  # type: ignore[return-value]


def _check_int(layer: dict, key: str, where: str, minimum: int = 1) -> int:
    v = layer[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise CnnlabError(f"{where}: {key} must be an integer ≥ {minimum}, got {v!r}")
    return v


def _flag(layer: dict, key: str, where: str) -> bool:
    value = layer.get(key, True)
    if not isinstance(value, bool):
        raise CnnlabError(f"{where}: {key} must be true or false, got {value!r}")
    return value


def _padding(layer: dict, where: str) -> str:
    pad = str(layer.get("padding", "valid")).lower()
    if pad not in ("valid", "same"):
        raise CnnlabError(f"{where}: padding must be 'valid' or 'same', got {layer.get('padding')!r}")
    return pad


def _spatial(shape, k, s, pad, where, what) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    c, h, w = shape
    if pad == "valid" and (k[0] > h or k[1] > w):
        raise CnnlabError(f"{where}: {what} {k[0]}x{k[1]} is larger than its {h}x{w} input; use padding: same, "
                          "a smaller kernel, fewer pooling layers, or a larger input")
    out = (out_size(h, k[0], s[0], pad), out_size(w, k[1], s[1], pad))
    if pad == "same":
        top, bottom = same_pad(h, k[0], s[0])
        left, right = same_pad(w, k[1], s[1])
        return out, (left, right, top, bottom)
    return out, (0, 0, 0, 0)


Sized = tuple[dict[str, Any], Shape, int, int]  # (build arguments, output shape, params, trainable)


def _size(kind: str, layer: dict, shape: Shape, where: str, final: bool) -> Sized:
    """One layer's checked arguments, output shape and (params, trainable), in the order its keys are checked."""
    if kind == "Conv2D":
        c, _, _ = _need_map(shape, where)
        filters = _check_int(layer, "filters", where)
        k = _pair(layer["kernel_size"], "kernel_size", where)
        s = _pair(layer.get("strides", 1), "strides", where)
        pad = _padding(layer, where)
        (oh, ow), pads = _spatial(shape, k, s, pad, where, "kernel")
        act = activation(layer.get("activation"), where)
        bias = bool(layer.get("use_bias", True))
        n = filters * (c * k[0] * k[1] + bias)
        args = {"filters": filters, "kernel": k, "stride": s, "pad": pads, "activation": act, "bias": bias}
        return args, (filters, oh, ow), n, n
    if kind in ("MaxPooling2D", "AveragePooling2D"):
        c, _, _ = _need_map(shape, where)
        k = _pair(layer.get("pool_size", 2), "pool_size", where)
        s = _pair(layer.get("strides") or k, "strides", where)
        pad = _padding(layer, where)
        (oh, ow), pads = _spatial(shape, k, s, pad, where, "pool window")
        return {"pool": "max" if kind == "MaxPooling2D" else "avg", "size": k, "stride": s, "pad": pads}, (c, oh, ow), 0, 0
    if kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        c, _, _ = _need_map(shape, where)
        return {"pool": "max" if kind == "GlobalMaxPooling2D" else "avg"}, (c,), 0, 0
    if kind == "Flatten":
        return {}, (_prod(shape),), 0, 0
    if kind == "Dense":
        return _dense(layer, shape, where, final)
    if kind == "Dropout":
        rate = layer["rate"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise CnnlabError(f"{where}: rate must be a number in [0, 1), got {rate!r}")
        return {"rate": float(rate)}, shape, 0, 0
    if kind == "BatchNormalization":
        return _batch_norm(layer, shape, where)
    act = activation(layer["activation"], where)
    if act == "softmax" and not final:
        raise CnnlabError(f"{where}: softmax is only supported as the last layer (the model returns logits)")
    return {"activation": act}, shape, 0, 0


def _dense(layer: dict, shape: Shape, where: str, final: bool) -> Sized:
    if len(shape) != 1:
        raise CnnlabError(f"{where} gets a {shape} feature map; add a Flatten (or a global pooling) layer before it")
    units = _check_int(layer, "units", where)
    act = activation(layer.get("activation"), where)
    if act == "softmax" and not final:
        raise CnnlabError(f"{where}: softmax is only supported on the last layer (the model returns logits)")
    bias = bool(layer.get("use_bias", True))
    n = units * (shape[0] + bias)
    return {"units": units, "activation": act, "bias": bias}, (units,), n, n


def _real(layer: dict, key: str, default: float, where: str, low: float, high: float, low_open: bool = False) -> float:
    """A real number (not a bool or text) in [low, high] ((low, high] when ``low_open``)."""
    value = layer.get(key, default)
    ok = type(value) in (int, float) and (low < value if low_open else low <= value) and value <= high
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise CnnlabError(f"{where}: {key} must be a number in {interval}, got {str(value)[:40]}")
    return float(value)


def _batch_norm(layer: dict, shape: Shape, where: str) -> Sized:
    # Keras's momentum 0.99 weights the old running value; PyTorch's momentum weights the new batch.
    momentum = 1.0 - _real(layer, "momentum", 0.99, where, 0.0, 1.0)
    eps = _real(layer, "epsilon", 1e-3, where, 0.0, math.inf, low_open=True)
    center, scale = _flag(layer, "center", where), _flag(layer, "scale", where)
    c = shape[0]
    # gamma (scale) and beta (center) are trained; the moving mean and variance are Keras's non-trainable weights
    trainable = c * (center + scale)
    args = {"momentum": momentum, "eps": eps, "center": center, "scale": scale}
    return args, shape, trainable + 2 * c, trainable

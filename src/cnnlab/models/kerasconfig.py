"""A Keras model config (parsed JSON, untrusted) → cnnlab's Keras-named layer list, without torch.

A Sequential model, or a functional one whose layers form one chain, maps layer for layer; a layer without an
exact cnnlab equivalent is a one-line error naming it and its class. Values are passed on as the file holds
them, so that :func:`cnnlab.models.specshape.infer_spec` checks them the way Keras does (an integer is an
integer: not a bool, a float or a string). Everything the walk meets is checked for its JSON type first; a
config of another shape is one line naming the file and the layer.

A leading ``Rescaling(scale, offset)`` becomes the run's input normalisation (``x * scale + offset`` on 0..255
pixels is ``(x / 255 - mean) / std`` with ``std = 1 / (255 scale)``, ``mean = -offset * std``); without one,
inputs are pixels / 255, as in the tutorials. Random augmentation layers, identities at inference, are left out.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.models.specshape import ACTIVATION_NAMES

MAX_LAYERS = 10_000  # layers in one model config (VGG-16 has 23)
MAX_INBOUND_ITEMS = 10_000  # JSON values in one layer's inbound_nodes

# Keras class name → cnnlab layer type (Keras 3 aliases included).
TYPES = {
    "Conv2D": "Conv2D", "Convolution2D": "Conv2D", "MaxPooling2D": "MaxPooling2D", "MaxPool2D": "MaxPooling2D",
    "AveragePooling2D": "AveragePooling2D", "AvgPool2D": "AveragePooling2D",
    "GlobalAveragePooling2D": "GlobalAveragePooling2D", "GlobalAvgPool2D": "GlobalAveragePooling2D",
    "GlobalMaxPooling2D": "GlobalMaxPooling2D", "GlobalMaxPool2D": "GlobalMaxPooling2D", "Flatten": "Flatten",
    "Dense": "Dense", "Dropout": "Dropout", "BatchNormalization": "BatchNormalization", "Activation": "Activation",
    "ReLU": "Activation", "Softmax": "Activation",
}
# Identities at inference (Keras runs them only in training): left out of the model.
INFERENCE_IDENTITY = ("RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast",
                      "RandomBrightness", "GaussianNoise", "GaussianDropout")
# Activations whose Keras and PyTorch definitions agree (Keras 3's leaky_relu slope is 0.2, PyTorch's 0.01).
IMPORTABLE_ACTIVATIONS = tuple(a for a in ACTIVATION_NAMES if a != "leaky_relu")


@dataclass
class KerasLayer:
    """One layer of a Keras config: its name, Keras class and config mapping."""

    name: str
    kind: str
    config: dict

    @property
    def where(self) -> str:
        return f"layer {self.name[:80]!r} ({self.kind[:40]})"


@dataclass(frozen=True)
class Mapped:
    """A config mapped to cnnlab: input (C, H, W), (spec, Keras layer) pairs, normalisation, dropped layers."""

    input_shape: tuple[int, int, int]
    pairs: list[tuple[dict, KerasLayer]]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    rescaling: bool
    dropped: tuple[str, ...]


def model_chain(config: Any, path: Path) -> tuple[str, list[KerasLayer], Any]:
    """(model name, layers in call order, the input's batch shape when the config gives it) of a model config.

    Raises:
        CnnlabError: a config that is not a Sequential / functional model of at most :data:`MAX_LAYERS` layers
            written as Keras writes them, or a functional model whose layers do not form one chain.
    """
    if not isinstance(config, dict):
        raise CnnlabError(f"{path}: the model config is JSON {type(config).__name__}, not a mapping with class_name "
                          "and config; save the model again with model.save()")
    kind, body = config.get("class_name"), config.get("config", {})
    raw = body.get("layers") if isinstance(body, dict) else body  # Keras < 2.3: a Sequential's config is the list
    name = body.get("name") if isinstance(body, dict) else None
    name = name if isinstance(name, str) else path.stem
    if kind not in ("Sequential", "Functional", "Model"):
        raise CnnlabError(f"{path}: a {str(kind)[:60]} model cannot be imported; save a Sequential or functional model")
    if not isinstance(raw, list):
        raise CnnlabError(f"{path}: the model config's layers are {type(raw).__name__}, not a list; "
                          "save the model again with model.save()")
    if len(raw) > MAX_LAYERS:
        raise CnnlabError(f"{path}: the model has {len(raw):,} layers, over cnnlab's limit of {MAX_LAYERS:,} layers; "
                          "import a smaller model")
    layers = [_layer(item, i, path) for i, item in enumerate(raw)]
    if kind == "Sequential":
        return name, layers, body.get("build_input_shape") if isinstance(body, dict) else None
    return name, _functional(layers, raw, path), None


def _layer(item: Any, i: int, path: Path) -> KerasLayer:
    cfg = item.get("config", {}) if isinstance(item, dict) else None
    kind = item.get("class_name") if isinstance(item, dict) else None
    if not isinstance(cfg, dict) or not isinstance(kind, str):
        raise CnnlabError(f"{path}: layer {i} of the model config is not a mapping with class_name and config; "
                          "save the model again with model.save()")
    name = item.get("name") or cfg.get("name") or f"layer_{i}"
    if not isinstance(name, str):
        raise CnnlabError(f"{path}: layer {i} ({kind}) has the name {name!r}, not text; save the model again")
    return KerasLayer(name, kind, cfg)


def _inbound(item: dict, layer: KerasLayer, path: Path) -> list[str]:
    """Names of the layers feeding ``item`` in a functional config (Keras 2's lists and Keras 3's dicts).

    Walked with a stack, not recursion: a file's nesting depth never meets Python's recursion limit.
    """
    found: list[str] = []
    stack, seen = [item.get("inbound_nodes", [])], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_INBOUND_ITEMS:
            raise CnnlabError(f"{path}: {layer.where}: inbound_nodes holds over {MAX_INBOUND_ITEMS:,} values; "
                              "save the model again with model.save()")
        if isinstance(node, dict):
            cfg = node.get("config")
            history = cfg.get("keras_history") if isinstance(cfg, dict) else None
            if node.get("class_name") == "__keras_tensor__" and isinstance(history, list) and history:
                found.append(str(history[0]))
            else:
                stack.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            if len(node) >= 3 and isinstance(node[0], str) and type(node[1]) is int:
                found.append(node[0])  # Keras 2: [layer_name, node_index, tensor_index, kwargs]
            else:
                stack.extend(reversed(node))
    return found


def _functional(order: list[KerasLayer], items: list, path: Path) -> list[KerasLayer]:
    """A functional model's layers from its input to its output, when each takes the previous one's output.

    Linear in the number of layers: who feeds whom is counted once, not searched per layer.
    """
    feeds = {layer.name: _inbound(item, layer, path) for layer, item in zip(order, items, strict=True)}
    if len(feeds) != len(order):
        dup = next(n for n, c in Counter(layer.name for layer in order).items() if c > 1)
        raise CnnlabError(f"{path}: two layers are named {dup!r}; save the model again with model.save()")
    consumers = Counter(name for f in feeds.values() for name in f)
    following: dict[str, KerasLayer] = {}
    for layer in order:
        if len(feeds[layer.name]) > 1 or consumers[layer.name] > 1:
            raise CnnlabError(f"{path}: {layer.where} joins or splits branches; cnnlab imports "
                              "models whose layers form one chain (Sequential-like)")
        if feeds[layer.name]:
            following[feeds[layer.name][0]] = layer
    chain, current = [], next((layer for layer in order if not feeds[layer.name]), None)
    while current is not None and len(chain) <= len(order):
        chain.append(current)
        current = following.get(current.name)
    if len(chain) != len(order):
        raise CnnlabError(f"{path}: the functional model's layers do not form one chain from its input to its output")
    return chain


# ------------------------------------------------------------------------------------------ mapping


def map_layers(chain: Sequence[KerasLayer], batch_shape: Any, path: Path) -> Mapped:
    """The chain as cnnlab layer specs (values unchecked: :func:`~cnnlab.models.specshape.infer_spec` checks them).

    Raises:
        CnnlabError: a layer with no cnnlab equivalent or a setting cnnlab does not compute, a Rescaling after
            other layers, no fixed (None, H, W, C) input, or a model ending in sigmoid / one output.
    """
    pairs: list[tuple[dict, KerasLayer]] = []
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    dropped: list[str] = []
    rescaling = False
    last = max((i for i, layer in enumerate(chain) if layer.kind in TYPES), default=-1)
    for i, layer in enumerate(chain):
        batch_shape = batch_shape or layer.config.get("batch_input_shape") or layer.config.get("batch_shape")
        if layer.kind == "InputLayer" or layer.kind in INFERENCE_IDENTITY:
            dropped.append(layer.name)
        elif layer.kind == "Rescaling":
            if pairs:
                raise CnnlabError(f"{path}: {layer.where} comes after other layers; cnnlab folds only a leading "
                                  "Rescaling into the input normalisation")
            mean, std = _rescaling(layer.config, f"{path}: {layer.where}")
            dropped.append(layer.name)
            rescaling = True
        elif layer.kind in TYPES:
            try:
                pairs.append((_spec(layer, f"{path}: {layer.where}", final=i == last), layer))
            except (TypeError, ValueError, KeyError, AttributeError) as exc:  # a shape no check above foresaw
                raise CnnlabError(f"{path}: {layer.where} has a config cnnlab cannot read ({type(exc).__name__}: "
                                  f"{str(exc)[:80]}); save the model again with model.save()") from None
        else:
            raise CnnlabError(f"{path}: {layer.where} has no cnnlab equivalent; importable layers: InputLayer, "
                              f"Rescaling, {', '.join(sorted(set(TYPES.values())))} (and random augmentation layers)")
    if not pairs:
        raise CnnlabError(f"{path}: the model has no layers cnnlab can import")
    shape = _input_shape(batch_shape, path)
    if len(mean) not in (1, shape[0]):
        raise CnnlabError(f"{path}: the Rescaling layer has {len(mean)} values for {shape[0]} channels; "
                          "give it one value or one per channel")
    return Mapped(shape, pairs, mean, std, rescaling, tuple(dropped))


def check_head(pairs: list[tuple[dict, KerasLayer]], path: Path) -> None:
    """Refuses a binary sigmoid / one-output head (cnnlab classifiers end in one softmax score per class)."""
    spec, layer = pairs[-1]
    if spec.get("activation") == "sigmoid" or (spec["type"] == "Dense" and spec["units"] == 1):
        raise CnnlabError(f"{path}: {layer.where} ends the model in sigmoid / one output; cnnlab classifiers end "
                          "in one softmax score per class, e.g. Dense(2, activation='softmax') for two classes")


def _input_shape(batch_shape: Any, path: Path) -> tuple[int, int, int]:
    if (not isinstance(batch_shape, (list, tuple)) or len(batch_shape) != 4
            or not all(type(d) is int and d > 0 for d in batch_shape[1:])):
        raise CnnlabError(f"{path}: the model's input is {str(batch_shape)[:80]}, not a fixed (None, H, W, C) "
                          "image shape; give the Keras model an Input((H, W, C)) and save it again")
    _, h, w, c = batch_shape
    return (c, h, w)


def _numbers(value: Any) -> list[float] | None:
    """A number or a flat list of real numbers as floats; None for anything else (bools, text, nesting)."""
    items = value if isinstance(value, list) else [value]
    if not items or len(items) > 4096 or not all(type(v) in (int, float) for v in items):
        return None
    floats = [float(v) for v in items]
    return floats if all(math.isfinite(v) for v in floats) else None


def _rescaling(cfg: dict, where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    scale, offset = _numbers(cfg.get("scale", 1.0)), _numbers(cfg.get("offset", 0.0))
    if scale is None or offset is None or not all(s > 0 for s in scale) or len(offset) not in (1, len(scale)):
        raise CnnlabError(f"{where}: only a positive scale (one value or one per channel) and an offset of the same "
                          f"length can become the input normalisation, got scale={str(cfg.get('scale'))[:40]}")
    if len(scale) == 1 and len(offset) > 1:
        scale = scale * len(offset)
    std = [1.0 / (255.0 * s) for s in scale]
    offsets = offset * len(std) if len(offset) == 1 else offset
    return tuple(-o * s for o, s in zip(offsets, std, strict=True)), tuple(std)


def _activation(cfg: dict, key: str, where: str) -> str:
    value = cfg.get(key, "linear")
    name = "linear" if value is None else value if isinstance(value, str) else None
    if name not in IMPORTABLE_ACTIVATIONS:
        raise CnnlabError(f"{where}: activation {str(value)[:60]!r} has no exact cnnlab equivalent; importable: "
                          f"{', '.join(IMPORTABLE_ACTIVATIONS)}")
    return name


def _check(cfg: dict, where: str, **expected: Any) -> None:
    """Errors when a config key holds something other than the values cnnlab's layer computes."""
    for key, allowed in expected.items():
        value = cfg.get(key)
        value = list(value) if isinstance(value, tuple) else value
        bool_slips = type(value) is bool and not any(type(a) is bool for a in allowed)  # True == 1 in Python
        if value is not None and (bool_slips or value not in allowed):
            raise CnnlabError(f"{where}: {key}={str(value)[:40]} cannot be imported (cnnlab computes {allowed[0]!r})")


def _flag(cfg: dict, key: str, where: str) -> bool:
    value = cfg.get(key, True)
    if not isinstance(value, bool):
        raise CnnlabError(f"{where}: {key} must be true or false, got {str(value)[:40]}; save the model again")
    return value


def _given(cfg: dict, *keys: str) -> dict:
    """The keys the config holds, as it holds them (a missing required key is infer_spec's one-line error)."""
    return {k: cfg[k] for k in keys if k in cfg}


def _batch_norm(cfg: dict, where: str) -> dict:
    axis = cfg.get("axis", -1)
    axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
    if type(axis) is not int or axis not in (-1, 1, 3):
        raise CnnlabError(f"{where}: axis={str(cfg.get('axis'))[:40]} cannot be imported: cnnlab normalises the "
                          "channel axis of (None, H, W, C) images; use BatchNormalization(axis=-1) and save again")
    spec = _given(cfg, "momentum", "epsilon")
    spec.update({key: False for key in ("center", "scale") if _flag(cfg, key, where) is False})
    return spec


def _spec(layer: KerasLayer, where: str, *, final: bool) -> dict:
    """The cnnlab spec of one mappable Keras layer."""
    cfg, kind = layer.config, TYPES[layer.kind]
    spec: dict[str, Any] = {"type": kind, "name": re.sub(r"[.\s]", "_", layer.name)}
    if kind in ("Conv2D", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        _check(cfg, where, data_format=("channels_last",), dilation_rate=([1, 1], 1), groups=(1,),
               keepdims=(False,))
    if kind == "Conv2D":
        spec.update(_given(cfg, "filters", "kernel_size", "strides"), padding=cfg.get("padding", "valid"),
                    activation=_activation(cfg, "activation", where), use_bias=_flag(cfg, "use_bias", where))
    elif kind in ("MaxPooling2D", "AveragePooling2D"):
        spec.update(_given(cfg, "pool_size", "strides", "padding"))
    elif kind == "Dense":
        spec.update(_given(cfg, "units"), activation=_activation(cfg, "activation", where),
                    use_bias=_flag(cfg, "use_bias", where))
    elif kind == "Dropout":
        spec.update(_given(cfg, "rate"))
    elif kind == "BatchNormalization":
        spec.update(_batch_norm(cfg, where))
    elif layer.kind == "Activation":
        spec["activation"] = _activation(cfg, "activation", where)
    elif layer.kind == "ReLU":
        _check(cfg, where, max_value=(None,), negative_slope=(0, 0.0), threshold=(0, 0.0))
        spec["activation"] = "relu"
    elif layer.kind == "Softmax":
        _check(cfg, where, axis=(-1,))
        spec["activation"] = "softmax"
    if spec.get("activation") == "softmax" and not final:
        raise CnnlabError(f"{where}: softmax before the last layer cannot be imported (cnnlab applies it only to "
                          "the output)")
    return spec

"""Keras models read without TensorFlow: a ``.h5`` (Keras 2, or Keras 3's legacy format) or ``.keras`` file
(Keras 3) → cnnlab's Keras-named layer list (:mod:`cnnlab.models.spec`) and a PyTorch state dict.

The files are read with h5py and zipfile only. ``.h5``: the root attribute ``model_config`` (JSON) and the
weights under ``model_weights/<layer>/`` in the order of each group's ``weight_names`` attribute (Keras's
``legacy_h5_format``). ``.keras``: a zip of ``config.json``, ``metadata.json`` and ``model.weights.h5`` whose
groups ``layers/<path>/vars/0, 1, ...`` hold each layer's variables in creation order, with the layer's name
in the ``vars`` group's ``name`` attribute (Keras's ``saving_lib``).

A Sequential model, or a functional one whose layers form one chain, maps layer for layer; a layer
without an exact cnnlab equivalent is a one-line error naming it and its class. Weights change layout:

* conv kernels HWIO (kh, kw, in, out) → OIHW (out, in, kh, kw);
* dense kernels (in, out) → (out, in);
* the first Dense after a Flatten of channels-last maps (and any BatchNormalization between them) gets
  its input rows permuted from Keras's (H, W, C) flattening order to PyTorch's (C, H, W) order;
* BatchNormalization's gamma, beta, moving mean and variance → weight, bias, running mean and variance
  (``center=False`` / ``scale=False`` layers have no bias / weight, in Keras and here).

A leading ``Rescaling(scale, offset)`` becomes the run's input normalisation (``x * scale + offset`` on
0..255 pixels is ``(x / 255 - mean) / std`` with ``std = 1 / (255 scale)``, ``mean = -offset * std``);
without one, inputs are pixels / 255, as in the tutorials. Random augmentation layers, identities at
inference, are left out.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.spec import ACTIVATIONS, SpecModel, build_spec

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
IMPORTABLE_ACTIVATIONS = tuple(a for a in ACTIVATIONS if a != "leaky_relu")
_BatchNorm = nn.modules.batchnorm._BatchNorm  # BatchNorm1d and BatchNorm2d


@dataclass(frozen=True)
class KerasModel:
    """A Keras model as cnnlab sees it.

    Attributes:
        name: the Keras model's name.
        keras_version: the version that saved the file.
        layers: cnnlab layer specs (``type``, ``name`` = the Keras layer name, that type's keys).
        input_shape: (C, H, W) of one image.
        num_classes: outputs of the last layer.
        state_dict: the converted weights, keyed as the model :func:`build_keras` returns names them.
        mean, std: the input normalisation, ``(x / 255 - mean) / std``.
        rescaling: the normalisation came from a Rescaling layer (else it is the tutorials' x / 255).
        params: Keras's (total, trainable) parameter counts: every stored variable, BatchNorm's moving
            statistics and frozen layers' weights counted as non-trainable.
        dropped: layers left out: InputLayer, Rescaling (now the normalisation), inference identities.
    """

    name: str
    keras_version: str
    layers: list[dict]
    input_shape: tuple[int, int, int]
    num_classes: int
    state_dict: dict[str, torch.Tensor]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    rescaling: bool
    params: tuple[int, int]
    dropped: tuple[str, ...]


@dataclass
class _Layer:
    name: str
    kind: str
    config: dict


Weights = dict[str, list[np.ndarray]]  # layer name → its variables in Keras's creation order


def read_keras(path: str | Path) -> KerasModel:
    """Reads a Keras model file and converts it (see the module docstring).

    Args:
        path: a ``.h5`` / ``.hdf5`` file written by ``model.save`` or a ``.keras`` file.

    Raises:
        CnnlabError: missing or unreadable file, a weights-only file, a layer cnnlab cannot map (named with
            its class), a model that is not one chain, or weights that do not fit the layers.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise CnnlabError(f"Keras model file {p} does not exist; pass a .h5 or .keras file written by model.save()")
    config, weights, version = _read_file(p)
    body = config.get("config")
    name = str(body.get("name", p.stem)) if isinstance(body, dict) else p.stem
    chain, batch_shape = _chain(config, p)
    shape, mapped, mean, std, dropped = _map_layers(chain, batch_shape, p)
    specs = [spec for spec, _ in mapped]
    model = build_spec(specs, input_shape=shape)
    state, params = _convert(model, mapped, weights, p)
    return KerasModel(name, version, specs, shape, _out_features(model, shape), state, mean, std,
                      any(layer.kind == "Rescaling" for layer in chain), params, dropped)


def build_keras(km: KerasModel) -> SpecModel:
    """The cnnlab model of ``km`` with its converted weights (eval mode)."""
    model = build_spec(km.layers, input_shape=km.input_shape, num_classes=km.num_classes)
    model.load_state_dict(km.state_dict, strict=True)
    return model.eval()


# ------------------------------------------------------------------------------------------ the files


def _read_file(path: Path) -> tuple[dict, Weights, str]:
    """(model config, weights by layer name, Keras version) of a ``.h5`` or ``.keras`` file."""
    with open(path, "rb") as f:
        magic = f.read(8)
    try:
        if magic.startswith(b"PK"):
            return _read_zip(path)
        if magic == b"\x89HDF\r\n\x1a\n":
            return _read_h5(path)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise CnnlabError(f"{path} is not a readable Keras model file ({type(exc).__name__}: {exc}); "
                          "save it again with model.save()") from None
    raise CnnlabError(f"{path} is neither an HDF5 (.h5) nor a zip (.keras) file; pass a file written by model.save()")


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _read_h5(path: Path) -> tuple[dict, Weights, str]:
    with h5py.File(path, "r") as f:
        if "model_config" not in f.attrs:
            raise CnnlabError(f"{path} holds weights only (no model config: it was written by save_weights); "
                              "save the whole model with model.save('model.h5') or model.save('model.keras')")
        config = json.loads(_text(f.attrs["model_config"]))
        group = f.get("model_weights", f)
        version = _text(group.attrs.get("keras_version", f.attrs.get("keras_version", "unknown")))
        weights: Weights = {}
        for layer in (_text(n) for n in group.attrs.get("layer_names", [])):
            names = [_text(n) for n in group[layer].attrs.get("weight_names", [])]
            weights[layer] = [np.asarray(group[layer][n], dtype=np.float32) for n in names]
    return config, weights, version


def _read_zip(path: Path) -> tuple[dict, Weights, str]:
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        if "config.json" not in names or "model.weights.h5" not in names:
            raise CnnlabError(f"{path} is a zip but not a Keras 3 .keras file (no config.json / model.weights.h5)")
        config = json.loads(z.read("config.json"))
        meta = json.loads(z.read("metadata.json")) if "metadata.json" in names else {}
        blob = z.read("model.weights.h5")
    weights: Weights = {}
    with h5py.File(io.BytesIO(blob), "r") as f:
        if "layers" in f:
            for key, group in f["layers"].items():
                if "vars" not in group:
                    continue
                vars_ = group["vars"]
                layer = _text(vars_.attrs.get("name", key))
                weights[layer] = [np.asarray(vars_[str(i)], dtype=np.float32) for i in range(len(vars_))]
    return config, weights, str(meta.get("keras_version", "unknown"))


# -------------------------------------------------------------------------------------- the layer chain


def _chain(config: dict, path: Path) -> tuple[list[_Layer], list | None]:
    """The model's layers in call order, and the input's batch shape (None, H, W, C) when the config says."""
    kind = config.get("class_name")
    body = config.get("config", {})
    if kind == "Sequential":
        raw = body.get("layers", body) if isinstance(body, dict) else body  # Keras < 2.3: config is the list
        layers = [_layer(item) for item in raw]
        shape = body.get("build_input_shape") if isinstance(body, dict) else None
        return layers, shape
    if kind in ("Functional", "Model"):
        return _functional(body, path), None
    raise CnnlabError(f"{path}: a {kind} model cannot be imported; save a Sequential or functional model")


def _layer(item: Mapping) -> _Layer:
    cfg = dict(item.get("config", {}))
    return _Layer(str(item.get("name") or cfg.get("name", "")), str(item.get("class_name")), cfg)


def _inbound(item: Mapping) -> list[str]:
    """Names of the layers feeding ``item`` in a functional config (Keras 2's lists and Keras 3's dicts)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            history = node.get("config", {}).get("keras_history") if isinstance(node.get("config"), dict) else None
            if node.get("class_name") == "__keras_tensor__" and history:
                found.append(str(history[0]))
                return
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            if len(node) >= 3 and isinstance(node[0], str) and isinstance(node[1], int):
                found.append(node[0])  # Keras 2: [layer_name, node_index, tensor_index, kwargs]
                return
            for value in node:
                walk(value)

    walk(item.get("inbound_nodes", []))
    return found


def _functional(body: dict, path: Path) -> list[_Layer]:
    """A functional model's layers from its input to its output, when each takes the previous one's output."""
    items = body.get("layers", [])
    order = [_layer(item) for item in items]
    feeds = {layer.name: _inbound(item) for layer, item in zip(order, items, strict=True)}
    for layer in order:
        if len(feeds[layer.name]) > 1 or sum(layer.name in f for f in feeds.values()) > 1:
            raise CnnlabError(f"{path}: layer {layer.name!r} ({layer.kind}) joins or splits branches; cnnlab imports "
                              "models whose layers form one chain (Sequential-like)")
    chain, current = [], next((layer for layer in order if not feeds[layer.name]), None)
    by_name = {layer.name: layer for layer in order}
    while current is not None:
        chain.append(current)
        current = next((by_name[n] for n, f in feeds.items() if f == [current.name]), None)
    if len(chain) != len(order):
        raise CnnlabError(f"{path}: the functional model's layers do not form one chain from its input to its output")
    return chain


# ------------------------------------------------------------------------------------------ mapping


def _map_layers(chain: Sequence[_Layer], batch_shape: list | None, path: Path):
    """(input (C, H, W), (cnnlab spec, Keras layer) pairs, mean, std, dropped layer names) of the chain."""
    specs: list[tuple[dict, _Layer]] = []
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    dropped: list[str] = []
    last = max((i for i, layer in enumerate(chain) if layer.kind in TYPES), default=-1)
    for i, layer in enumerate(chain):
        batch_shape = batch_shape or layer.config.get("batch_input_shape") or layer.config.get("batch_shape")
        where = f"layer {layer.name!r} ({layer.kind})"
        if layer.kind == "InputLayer" or layer.kind in INFERENCE_IDENTITY:
            dropped.append(layer.name)
        elif layer.kind == "Rescaling":
            if specs:
                raise CnnlabError(f"{path}: {where} comes after other layers; cnnlab folds only a leading "
                                  "Rescaling into the input normalisation")
            mean, std = _rescaling(layer.config, where)
            dropped.append(layer.name)
        elif layer.kind in TYPES:
            specs.append((_spec(layer, where, final=i == last), layer))
        else:
            raise CnnlabError(f"{path}: {where} has no cnnlab equivalent; importable layers: InputLayer, Rescaling, "
                              f"{', '.join(sorted(set(TYPES.values())))} (and random augmentation layers)")
    if not specs:
        raise CnnlabError(f"{path}: the model has no layers cnnlab can import")
    last_spec, last_layer = specs[-1]
    if last_spec.get("activation") == "sigmoid" or (last_spec["type"] == "Dense" and last_spec["units"] == 1):
        raise CnnlabError(f"{path}: layer {last_layer.name!r} ({last_layer.kind}) ends the model in sigmoid / one "
                          "output; cnnlab classifiers end in one softmax score per class, e.g. Dense(2, "
                          "activation='softmax') for two classes")
    return _input_shape(batch_shape, path), specs, mean, std, tuple(dropped)


def _input_shape(batch_shape: Any, path: Path) -> tuple[int, int, int]:
    if (not isinstance(batch_shape, (list, tuple)) or len(batch_shape) != 4
            or not all(isinstance(d, int) and d > 0 for d in batch_shape[1:])):
        raise CnnlabError(f"{path}: the model's input is {batch_shape!r}, not a fixed (None, H, W, C) image "
                          "shape; give the Keras model an Input((H, W, C)) and save it again")
    _, h, w, c = batch_shape
    return (c, h, w)


def _rescaling(cfg: dict, where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    scale = np.atleast_1d(np.asarray(cfg.get("scale", 1.0), dtype=np.float64))
    offset = np.atleast_1d(np.asarray(cfg.get("offset", 0.0), dtype=np.float64))
    if scale.ndim != 1 or offset.ndim != 1 or not (scale > 0).all():
        raise CnnlabError(f"{where}: only a positive scale (one value or one per channel) can become the input "
                          f"normalisation, got scale={cfg.get('scale')!r}")
    std = 1.0 / (255.0 * scale)
    mean = -offset * std
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _activation(cfg: dict, key: str, where: str) -> str:
    value = cfg.get(key, "linear")
    name = "linear" if value is None else value if isinstance(value, str) else None
    if name not in IMPORTABLE_ACTIVATIONS:
        raise CnnlabError(f"{where}: activation {value!r} has no exact cnnlab equivalent; importable: "
                          f"{', '.join(IMPORTABLE_ACTIVATIONS)}")
    return name


def _check(cfg: dict, where: str, **expected: Any) -> None:
    """Errors when a config key holds something other than the values cnnlab's layer computes."""
    for key, allowed in expected.items():
        value = cfg.get(key)
        value = list(value) if isinstance(value, tuple) else value
        if value is not None and value not in allowed:
            raise CnnlabError(f"{where}: {key}={value!r} cannot be imported (cnnlab computes {allowed[0]!r})")


def _spec(layer: _Layer, where: str, *, final: bool) -> dict:
    """The cnnlab spec of one mappable Keras layer."""
    cfg, kind = layer.config, TYPES[layer.kind]
    spec: dict[str, Any] = {"type": kind, "name": re.sub(r"[.\s]", "_", layer.name)}
    if kind in ("Conv2D", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        _check(cfg, where, data_format=("channels_last",), dilation_rate=([1, 1], 1), groups=(1,),
               keepdims=(False,))
    if kind == "Conv2D":
        spec.update(filters=int(cfg["filters"]), kernel_size=list(cfg["kernel_size"]), strides=list(cfg["strides"]),
                    padding=cfg.get("padding", "valid"), activation=_activation(cfg, "activation", where),
                    use_bias=bool(cfg.get("use_bias", True)))
    elif kind in ("MaxPooling2D", "AveragePooling2D"):
        spec.update(pool_size=list(cfg["pool_size"]), strides=list(cfg.get("strides") or cfg["pool_size"]),
                    padding=cfg.get("padding", "valid"))
    elif kind == "Dense":
        spec.update(units=int(cfg["units"]), activation=_activation(cfg, "activation", where),
                    use_bias=bool(cfg.get("use_bias", True)))
    elif kind == "Dropout":
        spec["rate"] = float(cfg["rate"])
    elif kind == "BatchNormalization":
        axis = cfg.get("axis", -1)
        if (axis[0] if isinstance(axis, list) and len(axis) == 1 else axis) not in (-1, 1, 3):
            raise CnnlabError(f"{where}: axis={axis!r} cannot be imported (cnnlab normalises the channel axis)")
        spec.update(momentum=float(cfg.get("momentum", 0.99)), epsilon=float(cfg.get("epsilon", 1e-3)))
        spec.update({key: False for key in ("center", "scale") if cfg.get(key, True) is False})
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


# ------------------------------------------------------------------------------------------- weights


def _convert(model: SpecModel, mapped: list[tuple[dict, _Layer]], weights: Weights,
             path: Path) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
    """The state dict of ``model`` from Keras's variables, and Keras's (total, trainable) counts."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    layers = {spec["name"]: layer for spec, layer in mapped}
    x = torch.zeros(1, *model.input_shape)
    order: torch.Tensor | None = None  # PyTorch's (C, H, W) feature i is Keras's (H, W, C) feature order[i]
    total = train = 0
    with torch.no_grad():
        for name, module in model.named_children():
            layer = layers[name]
            src = weights.get(layer.name, [])
            if isinstance(module, nn.Flatten) and x.ndim == 4 and layer.config.get("data_format") != "channels_first":
                _, c, h, w = x.shape
                order = torch.arange(h * w * c).reshape(h, w, c).permute(2, 0, 1).flatten()
            for key, value in _layer_tensors(module, layer, src, order, path).items():
                if state[f"{name}.{key}"].shape != value.shape:
                    raise CnnlabError(f"{path}: layer {layer.name!r} ({layer.kind}): {key} has shape "
                                      f"{tuple(value.shape)}, the layer needs {tuple(state[f'{name}.{key}'].shape)}")
                state[f"{name}.{key}"] = value
            if isinstance(module, nn.Linear):
                order = None
            size = sum(a.size for a in src)
            moving = sum(a.size for a in src[-2:]) if isinstance(module, _BatchNorm) else 0
            total += size
            train += size - moving if layer.config.get("trainable", True) is not False else 0
            x = module.eval()(x)
    return state, (total, train)


def _layer_tensors(module: nn.Module, layer: _Layer, src: list[np.ndarray], order: torch.Tensor | None,
                   path: Path) -> dict[str, torch.Tensor]:
    """One layer's converted tensors by state-dict key (without the layer's prefix)."""
    if not isinstance(module, (nn.Conv2d, nn.Linear, _BatchNorm)):
        return {}
    where = f"layer {layer.name!r} ({layer.kind})"
    if isinstance(module, _BatchNorm):
        names = [*(["gamma"] if layer.config.get("scale", True) else []),
                 *(["beta"] if layer.config.get("center", True) else []), "moving_mean", "moving_variance"]
    else:
        names = ["kernel", *(["bias"] if module.bias is not None else [])]
    if len(src) != len(names):
        raise CnnlabError(f"{path}: {where} has {len(src)} stored variables, expected {len(names)} "
                          f"({', '.join(names)}); is the file complete?")
    t = {n: torch.from_numpy(np.ascontiguousarray(a)) for n, a in zip(names, src, strict=True)}
    if isinstance(module, nn.Conv2d):
        out = {"weight": t["kernel"].permute(3, 2, 0, 1)}  # HWIO → OIHW
    elif isinstance(module, nn.Linear):
        kernel = t["kernel"][order] if order is not None and len(order) == t["kernel"].shape[0] else t["kernel"]
        out = {"weight": kernel.t()}  # (in, out) → (out, in)
    else:
        renamed = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
        out = {renamed[k]: v for k, v in t.items()}
        if order is not None and len(order) == module.num_features:  # between Flatten and Dense: same order
            out = {k: v[order] for k, v in out.items()}
    if "bias" in t:
        out["bias"] = t["bias"]
    return {k: v.contiguous() for k, v in out.items()}


def _out_features(model: nn.Module, shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, *shape))
    if out.ndim != 2:
        raise CnnlabError(f"the model ends with a {tuple(out.shape[1:])} output, not one score per class; "
                          "cnnlab imports classifiers ending in Dense")
    return int(out.shape[1])

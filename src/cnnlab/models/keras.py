"""Keras models read without TensorFlow: a ``.h5`` (Keras 2, or Keras 3's legacy format) or ``.keras`` file
(Keras 3) → cnnlab's Keras-named layer list (:mod:`cnnlab.models.spec`) and a PyTorch state dict.

The file is read as untrusted input by :mod:`cnnlab.models.kerasfile` (bounded config, variables checked before
they are read, no HDF5 link or storage leading outside the file) and its config mapped by
:mod:`cnnlab.models.kerasconfig`. The layer list is then checked and sized by
:func:`cnnlab.models.specshape.infer_spec` (within its parameter and activation limits) before any module is
built or any weight read. Weights change layout:

* conv kernels HWIO (kh, kw, in, out) → OIHW (out, in, kh, kw);
* dense kernels (in, out) → (out, in);
* the first Dense after a Flatten of channels-last maps (and any BatchNormalization between them) gets
  its input rows permuted from Keras's (H, W, C) flattening order to PyTorch's (C, H, W) order;
* BatchNormalization's gamma, beta, moving mean and variance → weight, bias, running mean and variance
  (``center=False`` / ``scale=False`` layers have no bias / weight, in Keras and here).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.kerasconfig import (
    IMPORTABLE_ACTIVATIONS,
    INFERENCE_IDENTITY,
    TYPES,
    KerasLayer,
    Mapped,
    check_head,
    map_layers,
    model_chain,
)
from cnnlab.models.kerasfile import KerasFile, check_variable, open_keras, read_variable
from cnnlab.models.spec import SpecModel, build_spec
from cnnlab.models.specshape import SpecLayer, infer_spec

__all__ = ["IMPORTABLE_ACTIVATIONS", "INFERENCE_IDENTITY", "TYPES", "KerasModel", "build_keras", "read_keras"]


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


_BatchNorm = nn.modules.batchnorm._BatchNorm  # BatchNorm1d and BatchNorm2d
Found = list[tuple[str, h5py.Dataset]]  # a layer's (variable name, dataset) pairs, checked, not yet read


def read_keras(path: str | Path) -> KerasModel:
    """Reads a Keras model file and converts it (see the module docstring).

    Order: config (bounded) → layer list → :func:`~cnnlab.models.specshape.infer_spec` (shapes, parameter and
    activation limits) → every variable's link, storage, type and shape checked → the model built → the
    variables read. Nothing the file claims is allocated before it is checked.

    Args:
        path: a ``.h5`` / ``.hdf5`` file written by ``model.save`` or a ``.keras`` file.

    Raises:
        CnnlabError: missing or unreadable file, a weights-only file, a layer cnnlab cannot map (named with
            its class), a model that is not one chain, a model over cnnlab's limits (named), a config or
            variable of the wrong type or shape, or HDF5 links / storage leading outside the file.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise CnnlabError(f"Keras model file {p} does not exist; pass a .h5 or .keras file written by model.save()")
    with open_keras(p) as kf:
        name, chain, batch_shape = model_chain(kf.config, p)
        mapped = map_layers(chain, batch_shape, p)
        specs = [spec for spec, _ in mapped.pairs]
        try:
            found = infer_spec(specs, input_shape=mapped.input_shape)
        except CnnlabError as exc:
            raise CnnlabError(f"{p}: {exc}") from None
        check_head(mapped.pairs, p)
        kf.open_weights(sum(layer.params for layer in found))
        stored = _find_variables(kf, mapped, found)
        model = build_spec(specs, input_shape=mapped.input_shape)
        state = _convert(model, mapped, found, stored, p)
        version = kf.version
    params = (sum(f.params for f in found),
              sum(f.trainable for f, (_, layer) in zip(found, mapped.pairs, strict=True)
                  if layer.config.get("trainable", True) is not False))
    return KerasModel(name, version, specs, mapped.input_shape, found[-1].out_shape[0], state, mapped.mean,
                      mapped.std, mapped.rescaling, params, mapped.dropped)


def build_keras(km: KerasModel) -> SpecModel:
    """The cnnlab model of ``km`` with its converted weights (eval mode)."""
    model = build_spec(km.layers, input_shape=km.input_shape, num_classes=km.num_classes)
    model.load_state_dict(km.state_dict, strict=True)
    return model.eval()


# ------------------------------------------------------------------------------------------- weights


def _expected(found: SpecLayer, layer: KerasLayer) -> list[tuple[str, tuple[int, ...]]]:
    """The variables Keras stores for one layer, (name, shape) in its creation order."""
    a, shape = found.args, found.in_shape
    if found.kind == "Conv2D":
        kernel = [("kernel", (*a["kernel"], shape[0], a["filters"]))]  # HWIO
        return kernel + ([("bias", (a["filters"],))] if a["bias"] else [])
    if found.kind == "Dense":
        return [("kernel", (shape[0], a["units"]))] + ([("bias", (a["units"],))] if a["bias"] else [])
    if found.kind == "BatchNormalization":
        names = [*(["gamma"] if a["scale"] else []), *(["beta"] if a["center"] else []), "moving_mean",
                 "moving_variance"]
        return [(n, (shape[0],)) for n in names]
    return []


def _find_variables(kf: KerasFile, mapped: Mapped, found: list[SpecLayer]) -> dict[str, list[h5py.Dataset]]:
    """Each weighted layer's datasets (by spec name), their links, storage, types and shapes checked, none read."""
    stored: dict[str, list[h5py.Dataset]] = {}
    for f, (spec, layer) in zip(found, mapped.pairs, strict=True):
        expected = _expected(f, layer)
        if not expected:
            continue
        src = kf.variables(layer.name)
        if len(src) != len(expected):
            raise CnnlabError(f"{kf.path}: {layer.where} has {len(src)} stored variables, expected "
                              f"{len(expected)} ({', '.join(n for n, _ in expected)}); is the file complete?")
        for (name, shape), (_, d) in zip(expected, src, strict=True):
            check_variable(d, shape, kf.path, f"{layer.where} {name}")
        stored[spec["name"]] = [d for _, d in src]
    return stored


def _convert(model: SpecModel, mapped: Mapped, found: list[SpecLayer], stored: dict[str, list[h5py.Dataset]],
             path: Path) -> dict[str, torch.Tensor]:
    """The state dict of ``model`` from Keras's variables (read here, each after its checks)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    order: torch.Tensor | None = None  # PyTorch's (C, H, W) feature i is Keras's (H, W, C) feature order[i]
    for f, (spec, layer) in zip(found, mapped.pairs, strict=True):
        name = spec["name"]
        module = model.get_submodule(name)
        if f.kind == "Flatten" and len(f.in_shape) == 3 and layer.config.get("data_format") != "channels_first":
            c, h, w = f.in_shape
            order = torch.arange(h * w * c).reshape(h, w, c).permute(2, 0, 1).flatten()
        expected = _expected(f, layer)
        src = [read_variable(d, shape, path, f"{layer.where} {n}")
               for (n, shape), d in zip(expected, stored.get(name, []), strict=True)]
        for key, value in _layer_tensors(module, [n for n, _ in expected], src, order).items():
            state[f"{name}.{key}"] = value
        if isinstance(module, nn.Linear):
            order = None
    return state


def _layer_tensors(module: nn.Module, names: list[str], src: list[np.ndarray],
                   order: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """One layer's converted tensors by state-dict key (without the layer's prefix); shapes checked before."""
    if not isinstance(module, (nn.Conv2d, nn.Linear, _BatchNorm)):
        return {}
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

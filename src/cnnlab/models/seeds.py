"""The tutorials' own models, as layer specs (the same lists a user writes in YAML).

Parameter counts equal Keras's for the same architecture at the tutorial's input (tests pin them).
Importing this module does not import torch (the builders do), so the catalogue lists these models fast.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import TYPE_CHECKING, NamedTuple

from cnnlab.models.registry import MODELS, ModelEntry
from cnnlab.models.specinfo import spec_meta

if TYPE_CHECKING:
    from cnnlab.models.spec import SpecModel


def _conv(filters, k=3, **kw):
    return {"type": "Conv2D", "filters": filters, "kernel_size": k, "activation": "relu", **kw}


_POOL = {"type": "MaxPooling2D", "pool_size": 2}
_FLAT = {"type": "Flatten"}
_OUT = {"type": "Dense", "units": "num_classes", "activation": "softmax"}


def _dense(units, activation="relu"):
    return {"type": "Dense", "units": units, "activation": activation}


def _drop(rate):
    return {"type": "Dropout", "rate": rate}


def _act(name):
    return {"type": "Activation", "activation": name}


class SeedSpec(NamedTuple):
    """A tutorial model: its one-line description, the tutorial's input (C, H, W) and its layer list.

    A Dense layer's ``units: num_classes`` is filled in at build time.
    """

    description: str
    input_shape: tuple[int, int, int]
    layers: list[dict]


SEED_SPECS: dict[str, SeedSpec] = {name: SeedSpec(*spec) for name, spec in {
    "dnn_128": (
        "Tutorial 1 DNN: Flatten-Dense128-Dense10 (Fashion-MNIST)", (1, 28, 28),
        [_FLAT, _dense(128), _OUT]),
    "cnn_64x2": (
        "Tutorial 1 CNN: Conv64-Pool-Conv64-Pool-Dense128-Dense10 (Fashion-MNIST)", (1, 28, 28),
        [_conv(64), _POOL, _conv(64), _POOL, _FLAT, _dense(128), _OUT]),
    "cnn_32_64": (
        "Tutorial 1 CNN, Conv32 variant: Conv32-Pool-Conv64-Pool-Dense128-Dense10", (1, 28, 28),
        [_conv(32), _POOL, _conv(64), _POOL, _FLAT, _dense(128), _OUT]),
    "cnn_32x1": (
        "Tutorial 1 exercise: one Conv32-Pool then Dense128-Dense10 (MNIST)", (1, 28, 28),
        [_conv(32), _POOL, _FLAT, _dense(128), _OUT]),
    "fc_1024": (
        "Tutorial 2 fully-connected net: 784-1024-10 (MNIST, SGD + L2)", (1, 28, 28),
        [_FLAT, _dense(1024), _OUT]),
    "cnn_32_64_dropout": (
        "Tutorial 2 CNN: Conv32-Conv64-Pool-Drop.25-Dense128-Drop.5-Dense10 (MNIST)", (1, 28, 28),
        [_conv(32), _conv(64), _POOL, _drop(0.25), _FLAT, _dense(128), _drop(0.5), _OUT]),
    "cnn_64k5": (
        "Tutorial 2 CNN: Conv64 5x5-Pool-Dense100-Dense10 (MNIST)", (1, 28, 28),
        [_conv(64, 5), _POOL, _FLAT, _dense(100), _OUT]),
    "fc_200x2_dropout": (
        "Tutorial 2 FC net: Dense200-Drop.15-Dense200-Dense10 (MNIST)", (1, 28, 28),
        [_FLAT, _dense(200), _drop(0.15), _dense(200), _OUT]),
    "cifar_basic": (
        "Tutorial 3 basic CIFAR-10 CNN: (Conv32x2-Pool-Drop)-(Conv64x2-Pool-Drop)-Dense256-Drop-Dense10",
        (3, 32, 32),
        [_conv(32, activation=None), _act("relu"), _conv(32, activation=None), _act("relu"), _POOL, _drop(0.25),
         _conv(64, activation=None), _act("relu"), _conv(64, activation=None), _act("relu"), _POOL, _drop(0.25),
         _FLAT, _dense(256, None), _act("relu"), _drop(0.5),
         {"type": "Dense", "units": "num_classes"}, _act("softmax")]),
    "cifar_improved": (
        "Tutorial 3 improved CIFAR-10 CNN: 3x(Conv-Conv-Pool-Drop) 'same' 32/64/128, Dense512-Dense256 (use with augmentation)",
        (3, 32, 32),
        [*[layer for f in (32, 64, 128) for layer in (
            _conv(f, padding="same"), _conv(f, padding="same"), _POOL, _drop(0.25))],
         _FLAT, _dense(512), _drop(0.5), _dense(256), _drop(0.5), _OUT]),
    "cnn_64x2_linear64": (
        "Tutorial 4 CNN: Conv64-Pool-Conv64-Pool-Dense64(linear)-Dense10 (Fashion-MNIST)", (1, 28, 28),
        [_conv(64), _POOL, _conv(64), _POOL, _FLAT, _dense(64, None), _OUT]),
}.items()}


def seed_layers(name: str, num_classes: int | str = "num_classes") -> list[dict]:
    """The layer list of a tutorial model (a fresh copy, safe to edit).

    The output layer keeps the placeholder ``units: num_classes`` unless a count is given.
    """
    layers = copy.deepcopy(SEED_SPECS[name].layers)
    for layer in layers:
        if layer.get("units") == "num_classes":
            layer["units"] = num_classes
        if layer.get("activation") is None and "activation" in layer:
            layer["activation"] = "linear"
    return layers


def _builder(name: str, *, num_classes: int = 10, input_shape: tuple[int, int, int] | None = None) -> SpecModel:
    # lazy: start-up time, spec imports torch (~1.1 s) and only building a model needs it, not listing one
    from cnnlab.models.spec import build_spec

    shape = input_shape or SEED_SPECS[name].input_shape
    return build_spec(seed_layers(name, num_classes), input_shape=shape, num_classes=num_classes)


for _name, _spec in SEED_SPECS.items():
    _fn = partial(_builder, _name)
    _fn.__doc__ = _spec.description
    MODELS.add(_name, ModelEntry(_name, _fn, spec_meta(_spec.layers, _spec.input_shape, num_classes=10)))

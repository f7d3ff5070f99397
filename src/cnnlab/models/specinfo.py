"""What a Keras-style layer list says without building it: Keras's layer names and the model's metadata.

Kept apart from :mod:`cnnlab.models.spec` (which builds the layers with PyTorch) so that the tutorial models
register, and ``cnnlab models`` lists them, without importing torch (~1.1 s of start-up).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cnnlab.models.registry import ModelMeta

# Keras's model files (Keras 2 HDF5, Keras 3 zip), read by cnnlab.models.keras; named here so that telling one
# apart from a YAML file needs no torch.
KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")

# Keras's automatic name of each layer type (keras.layers.Layer: the snake-case class name).
KERAS_NAMES = {
    "Conv2D": "conv2d", "MaxPooling2D": "max_pooling2d", "AveragePooling2D": "average_pooling2d",
    "GlobalAveragePooling2D": "global_average_pooling2d", "GlobalMaxPooling2D": "global_max_pooling2d",
    "Flatten": "flatten", "Dense": "dense", "Dropout": "dropout",
    "BatchNormalization": "batch_normalization", "Activation": "activation",
}


def keras_name(kind: str, given: Any, counts: dict[str, int]) -> str:
    """Keras's automatic layer name (``conv2d``, ``conv2d_1``, ...) unless the spec gives one.

    ``counts`` holds how many layers of each base name came before; it is updated.
    """
    base = KERAS_NAMES[kind]
    n = counts.get(base, 0)
    counts[base] = n + 1
    return str(given or (base if n == 0 else f"{base}_{n}"))


def spec_meta(layers: Sequence[Mapping[str, Any]], input_shape: Sequence[int], num_classes: int = 10) -> ModelMeta:
    """Metadata of a layer list: its head is the last Dense layer, its first conv the first Conv2D.

    Args:
        layers: Keras-named layer dicts, as :func:`cnnlab.models.spec.build_spec` takes them.
        input_shape: (C, H, W) of one input image.
        num_classes: the model's outputs.
    """
    counts: dict[str, int] = {}
    names = [(layer.get("type"), keras_name(layer.get("type"), layer.get("name"), counts))
             for layer in layers if layer.get("type") in KERAS_NAMES]
    dense = [n for kind, n in names if kind == "Dense"]
    conv = [n for kind, n in names if kind == "Conv2D"]
    return ModelMeta(tuple(input_shape), num_classes, head=dense[-1] if dense else None,
                     first_conv=conv[0] if conv else None)

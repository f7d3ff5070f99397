"""Which images excite a unit most: every channel's response over a whole image set, then its top-k.

A unit is one channel of a feature-map layer (its response to an image = the channel's spatial mean,
the same objective :func:`cnnlab.inspect.maximize.maximize_filters` climbs) or one unit of a vector layer.
OpenAI Microscope's "dataset examples" and the top-9 image patches of Zeiler & Fergus (2014, *Visualizing
and Understanding Convolutional Networks*) are this list for a fixed model; here it is for any run.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from cnnlab.data.tensors import Normalizer
from cnnlab.errors import CnnlabError, one_of
from cnnlab.models.summary import eval_mode, model_device


class _Stop(Exception):
    """Raised by the hook once the layer has run: the deeper layers are not needed."""


def unit_scores(model: nn.Module, images_u8: torch.Tensor, normalizer: Normalizer, layer: str, *,
                batch_size: int = 256) -> np.ndarray:
    """Every unit's response of ``layer`` to every image.

    Args:
        model: the classifier.
        images_u8: uint8 images (N, C, H, W), e.g. a test set.
        normalizer: the model's input normalisation.
        layer: a name from ``dict(model.named_modules())`` with a (N, C, h, w) or (N, F) output.
        batch_size: images per forward pass (the pass stops at ``layer``).

    Returns:
        float32 (N, units): a channel's spatial mean for feature maps, the value itself for vectors.

    Raises:
        CnnlabError: unknown layer, a layer the forward pass does not call, or another output shape.
    """
    modules = dict(model.named_modules())
    if not layer or layer not in modules:
        raise one_of("layer", layer, [n for n in modules if n])
    rows: list[torch.Tensor] = []

    def hook(_m: nn.Module, _inputs: object, out: object) -> None:
        if not isinstance(out, torch.Tensor) or out.ndim not in (2, 4):
            shape = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
            raise CnnlabError(f"layer {layer!r} outputs {shape}; units need a (C, H, W) or (F,) output")
        rows.append((out.float().mean(dim=(2, 3)) if out.ndim == 4 else out.float()).cpu())
        raise _Stop

    device = model_device(model)
    handle = modules[layer].register_forward_hook(hook)
    try:
        with eval_mode(model), torch.no_grad():
            for start in range(0, images_u8.shape[0], batch_size):
                before = len(rows)
                with contextlib.suppress(_Stop):
                    model(normalizer(images_u8[start:start + batch_size].to(device)))
                if len(rows) == before:
                    raise CnnlabError(f"layer {layer!r} is not called by the model's forward pass; pick one it uses")
    finally:
        handle.remove()
    if not rows:
        return np.zeros((0, 0), np.float32)
    return torch.cat(rows).numpy()


def top_images(scores: np.ndarray, unit: int, k: int = 9) -> list[tuple[int, float]]:
    """The ``k`` images with the largest response of ``unit``, strongest first (ties: lower index first).

    Args:
        scores: (N, units) from :func:`unit_scores`.
        unit: the column.
        k: how many.

    Returns:
        (image index, response) pairs.

    Raises:
        CnnlabError: ``unit`` out of range.
    """
    if not 0 <= unit < scores.shape[1]:
        raise CnnlabError(f"unit {unit} is out of range; the layer has units 0..{scores.shape[1] - 1}")
    column = scores[:, unit]
    order = np.argsort(-column, kind="stable")[:k]
    return [(int(i), float(column[i])) for i in order]

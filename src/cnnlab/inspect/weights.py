"""Learned weights as pictures: conv kernels, and the class templates of a fully-connected network."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from cnnlab.errors import CnnlabError, one_of
from cnnlab.models.summary import layer_kind


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the model's ``nn.Conv2d`` layers (subclasses included), in definition order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def conv_filters(model: nn.Module, layer: str | None = None) -> np.ndarray:
    """The kernels of one conv layer.

    Args:
        model: any model with 2-D convolutions.
        layer: a name from ``dict(model.named_modules())``; default the first ``nn.Conv2d`` in definition
            order (the first one the forward pass uses, for every usual architecture).

    Returns:
        float32 array (out_channels, in_channels / groups, kh, kw), e.g. (64, 1, 3, 3).

    Raises:
        CnnlabError: the model has no Conv2d, or ``layer`` is unknown or not a Conv2d.
    """
    convs = conv_layers(model)
    if not convs:
        raise CnnlabError("the model has no Conv2d layer, so it has no filters to show; "
                          "for a fully-connected model use the dense templates view")
    name = convs[0] if layer is None else layer
    module = dict(model.named_modules()).get(name)
    if not isinstance(module, nn.Conv2d) or name == "":
        raise one_of("conv layer", name, convs)
    return module.weight.detach().float().cpu().numpy()


def _infer_image_shape(features: int) -> tuple[int, int, int]:
    # A square gray or RGB image; both cannot fit the same count (s² = 3t² has no integer solution).
    for c in (1, 3):
        side = math.isqrt(features // c)
        if features % c == 0 and side * side * c == features:
            return c, side, side
    raise CnnlabError(f"cannot tell the image shape behind {features} input features; pass input_shape=(C, H, W)")


def dense_templates(model: nn.Module, input_shape: Sequence[int] | None = None) -> np.ndarray:
    """What each class's output "looks for" in a fully-connected model: tutorial 002's templates.

    The dense layers' weights are multiplied through, ``W = W1 @ W2 @ ... @ Wk`` in Keras's (in, out)
    orientation, and each class's column is reshaped to the input image. This is a linearisation: it
    ignores activations, dropout, normalisation and biases, so it shows the linear part of each class score
    (exact only for a network without hidden non-linearities).

    Args:
        model: Flatten followed by a stack of ``nn.Linear`` layers (any names, nested or not).
        input_shape: (C, H, W) of one image; default a square gray or RGB image matching the first dense
            layer's input size (784 → (1, 28, 28), 3072 → (3, 32, 32)).

    Returns:
        float32 array (classes, C, H, W).

    Raises:
        CnnlabError: the model has conv layers, no dense layer, dense sizes that do not chain, or an input
            shape that does not match the first dense layer.
    """
    modules = list(model.named_modules())
    convs = [n for n, m in modules if n and layer_kind(m) == "conv"]
    if convs:
        raise CnnlabError(f"dense templates need a fully-connected model (Flatten → Dense ...), but {convs[0]!r} "
                          "is a convolution; use the filters or feature-map views for conv nets")
    dense = [(n, m) for n, m in modules if isinstance(m, nn.Linear)]
    if not dense:
        raise CnnlabError("dense templates need a fully-connected model, but this one has no Dense/Linear layer")
    for (prev_name, prev), (name, cur) in zip(dense, dense[1:], strict=False):
        if prev.out_features != cur.in_features:
            raise CnnlabError(f"dense layers {prev_name!r} ({prev.out_features} outputs) and {name!r} "
                              f"({cur.in_features} inputs) do not form one chain; templates need a plain dense stack")
    features = dense[0][1].in_features
    shape = tuple(int(s) for s in input_shape) if input_shape is not None else _infer_image_shape(features)
    if math.prod(shape) != features:
        raise CnnlabError(f"input shape {shape} has {math.prod(shape)} values but the first dense layer "
                          f"{dense[0][0]!r} takes {features}")
    with torch.no_grad():
        # torch weights are (out, in); the product Wk ... W2 W1 is (classes, features) = (W1 @ ... @ Wk)ᵀ
        w = dense[-1][1].weight.detach().double().cpu()
        for _, layer in reversed(dense[:-1]):
            w = w @ layer.weight.detach().double().cpu()
    return w.float().numpy().reshape(-1, *shape)

"""Layer outputs ("feature maps") of any model, picked by ``named_modules`` names.

The tutorials' two pictures: one filter of the first conv/pool layers for a few test images
(:func:`feature_map_grid`), and every channel of one layer for one image (:func:`channel_maps`). Both are
numpy arrays; ``plot_maps`` draws them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from cnnlab.data.tensors import Normalizer
from cnnlab.errors import CnnlabError, one_of
from cnnlab.models.summary import eval_mode, is_layer, layer_kind, model_device, spec_types, trace

FEATURE_KINDS = ("conv", "pool")  # what the tutorials' default columns show


def capture(model: nn.Module, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Outputs of ``layers`` for the float batch ``x``, via forward hooks.

    Runs in eval mode without gradients; train/eval flags are restored and the hooks removed even when
    the forward pass fails. Outputs are cloned (a later in-place ReLU would otherwise overwrite them) and
    returned on CPU. A layer called several times in one pass keeps its first output.

    Args:
        model: maps (N, C, H, W) floats to logits.
        x: normalised input batch (N, C, H, W); moved to the model's device.
        layers: names from ``dict(model.named_modules())``.

    Returns:
        name → output tensor, e.g. (N, 64, 26, 26) for a conv layer, (N, 128) for a dense one.

    Raises:
        CnnlabError: unknown layer name, or a layer whose output is not a tensor.
    """
    modules = dict(model.named_modules())
    modules.pop("", None)  # the model itself is not a layer
    for name in layers:
        if name not in modules:
            raise one_of("layer", name, modules)
    out: dict[str, torch.Tensor] = {}
    bad: list[str] = []

    def hook_for(name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if name in out or name in bad:
                return
            if isinstance(output, torch.Tensor):
                out[name] = output.detach().clone().cpu()
            else:
                bad.append(name)

        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in dict.fromkeys(layers)]
    try:
        with eval_mode(model), torch.no_grad():
            model(x.to(model_device(model)))
    finally:
        for h in handles:
            h.remove()
    if bad:
        raise CnnlabError(f"layer {bad[0]!r} returns a non-tensor output (e.g. a tuple); pick one of its sublayers")
    missing = [n for n in layers if n not in out]
    if missing:
        raise CnnlabError(f"layer {missing[0]!r} is not called by the model's forward pass; pick a layer it uses")
    return out


def execution_order(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """Names of the modules a forward pass calls, in the order they start (each once, model excluded).

    Containers come before their children (``layer1``, ``layer1.0``, ``layer1.0.conv1``...), so filtering
    this list gives "the first four conv/pool layers" of any architecture.

    Args:
        model: maps (N, C, H, W) floats to logits.
        input_shape: (C, H, W) of one image.
    """
    return list(dict.fromkeys(call.name for call in trace(model, input_shape)))


def feature_map_layers(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """Names of the layers whose output is a (N, C, H, W) feature map, in execution order."""
    names = [c.name for c in trace(model, input_shape) if c.output_size is not None and len(c.output_size) == 4]
    return list(dict.fromkeys(names))


def default_feature_layers(model: nn.Module, input_shape: Sequence[int], count: int = 4) -> list[str]:
    """The first ``count`` conv/pool layers with 4-D outputs (the tutorial's conv2d, max_pooling2d, ...).

    Raises:
        CnnlabError: the model has no conv or pooling layer with a feature-map output.
    """
    modules = dict(model.named_modules())
    types = spec_types(model)
    # Layers only, so a conv block (GoogLeNet's BasicConv2d) and its inner conv are not both picked.
    picked = [n for n in feature_map_layers(model, input_shape)
              if is_layer(modules[n]) and layer_kind(modules[n], types.get(n)) in FEATURE_KINDS]
    if not picked:
        raise CnnlabError("the model has no conv or pooling layer with a (C, H, W) output to show feature maps of; "
                          "it looks fully connected (try the dense templates view)")
    return picked[:count]


def _check_images(images_u8: torch.Tensor) -> torch.Tensor:
    if images_u8.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 0..255 (they are normalised here), got {images_u8.dtype}")
    if images_u8.ndim == 3:
        images_u8 = images_u8.unsqueeze(0)
    if images_u8.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W) or (C, H, W), got {tuple(images_u8.shape)}")
    return images_u8


def _feature_maps(model: nn.Module, images_u8: torch.Tensor, normalizer: Normalizer,
                  layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Captures ``layers`` and checks each is a (N, C, H, W) map; errors list the valid layers."""
    input_shape = tuple(images_u8.shape[1:])
    modules = dict(model.named_modules())
    unknown = [n for n in layers if n not in modules or n == ""]
    if unknown:
        raise one_of("feature-map layer", unknown[0], feature_map_layers(model, input_shape))
    maps = capture(model, normalizer(images_u8), layers)
    for name in layers:
        if maps[name].ndim != 4:
            shape = tuple(maps[name].shape[1:])
            raise CnnlabError(f"layer {name!r} outputs {shape}, not a (C, H, W) feature map; valid feature-map "
                              f"layers: {', '.join(feature_map_layers(model, input_shape))}")
    return maps


def feature_map_grid(
    model: nn.Module,
    images_u8: torch.Tensor,
    normalizer: Normalizer,
    *,
    layers: Sequence[str] | None = None,
    filter_index: int = 1,
) -> tuple[list[list[np.ndarray]], list[str]]:
    """One channel of several layers for several images: the first tutorial's feature-map picture.

    Args:
        model: maps (N, C, H, W) floats to logits.
        images_u8: uint8 images (N, C, H, W), one row each (the CLI picks test images 0, 7 and 26).
        normalizer: turns the images into the model's input.
        layers: layer names, one column each; default the first four conv/pool layers in execution order.
        filter_index: the channel shown in every column (the tutorial's ``CONVOLUTION_NUMBER``).

    Returns:
        (maps, layer names): ``maps[i][j]`` is image i's channel ``filter_index`` of layer j, a float32
        (H_j, W_j) array (sizes differ per layer, hence nested lists).

    Raises:
        CnnlabError: unknown layer, a layer without a (C, H, W) output, or a filter index out of range.
    """
    images_u8 = _check_images(images_u8)
    names = list(layers) if layers is not None else default_feature_layers(model, tuple(images_u8.shape[1:]))
    if not names:
        raise CnnlabError("no layers given; name at least one feature-map layer")
    maps = _feature_maps(model, images_u8, normalizer, names)
    for name in names:
        channels = maps[name].shape[1]
        if not 0 <= filter_index < channels:
            raise CnnlabError(f"filter index {filter_index} is out of range for layer {name!r} with {channels} "
                              f"channels; use 0..{channels - 1}")
    grid = [[maps[name][i, filter_index].float().numpy() for name in names] for i in range(images_u8.shape[0])]
    return grid, names


def channel_maps(model: nn.Module, image_u8: torch.Tensor, normalizer: Normalizer, layer: str) -> np.ndarray:
    """Every channel of one layer for one image (tutorial 002's grid of 32 or 64 small maps).

    Args:
        model: maps (N, C, H, W) floats to logits.
        image_u8: one uint8 image (C, H, W) or (1, C, H, W).
        normalizer: turns the image into the model's input.
        layer: a layer name with a (C, H, W) output.

    Returns:
        float32 array (C, H, W) of the layer's output.

    Raises:
        CnnlabError: unknown layer or a layer without a (C, H, W) output.
    """
    image_u8 = _check_images(image_u8)
    if image_u8.shape[0] != 1:
        raise ValueError(f"channel_maps takes one image, got a batch of {image_u8.shape[0]}")
    return _feature_maps(model, image_u8, normalizer, [layer])[layer][0].float().numpy()


def degenerate(values: np.ndarray | torch.Tensor, *, rtol: float = 1e-6) -> str | None:
    """Why a 2-D map (a channel, a heat map) should not be drawn as a picture, or None if it can be.

    Drawing min-max scales a map; a constant map would then show its float rounding as loud noise, and
    a 1×1 map is a single number stretched over a square. Both deserve words instead.

    Args:
        values: (H, W) values.
        rtol: spread below ``rtol × max(1, |largest value|)`` counts as constant.

    Returns:
        e.g. ``"constant: every value is 0"``, ``"1×1: a single value (0.731)"``, ``"not finite (NaN or
        inf values)"``, or None.
    """
    a = values.detach().cpu().double().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, np.float64)
    if a.size == 0:
        return "empty"
    if not np.isfinite(a).all():
        return "not finite (NaN or inf values)"
    if a.size == 1:
        return f"{'×'.join(map(str, a.shape or (1,)))}: a single value ({float(a.ravel()[0]):.4g})"
    lo, hi = float(a.min()), float(a.max())
    if hi - lo <= rtol * max(1.0, abs(hi), abs(lo)):
        return f"constant: every value is {hi:.4g}"
    return None

"""Pixel-importance maps: occlusion, saliency, integrated gradients and Grad-CAM (all via Captum).

Every function is a pure view: it takes a model and a *normalised* batch ``x`` of shape (N, C, H, W)
(what the model sees, i.e. ``normalizer(images_u8)``) plus one target class per image, and returns a
float tensor heat map of shape (N, H, W) on the CPU. Larger values mean "more important for the target
class". The model is run in eval mode (Dropout off, BatchNorm on running statistics); its previous
training flags are restored afterwards, and no hooks or ``requires_grad`` changes are left behind.

Layers are named as in ``dict(model.named_modules())`` (e.g. ``conv2d_3`` or ``layer1.0.conv1``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.data.tensors import Normalizer
from cnnlab.errors import CnnlabError
from cnnlab.inspect.weights import conv_layers
from cnnlab.models.summary import eval_mode, model_device

Targets = int | Sequence[int] | torch.Tensor

_PREDICT_BATCH = 256  # images per forward pass in select_correct
_ROWS_PER_PASS = 512  # rows per forward pass of the perturbation-based methods (occlusion, IG)


@dataclass(frozen=True)
class ModelProbe:
    """What one traced forward pass saw."""

    num_classes: int
    convs: list[str]  # Conv2d module names in forward (execution) order
    watched_shape: tuple[int, ...] | None  # output shape of the watched module, None if it never ran


def probe_model(model: nn.Module, x: torch.Tensor, watch: nn.Module | None = None) -> ModelProbe:
    """Runs one no-grad eval-mode forward pass on ``x`` and records what happened.

    Args:
        model: the classifier.
        x: a normalised batch on the model's device (one image is enough).
        watch: a submodule whose first output shape to record.
    """
    order: list[str] = []
    shapes: list[tuple[int, ...]] = []
    handles = []

    def conv_hook(name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(_m: nn.Module, _inp: object, _out: object) -> None:
            if name not in order:  # a module reused in forward counts once, at its first call
                order.append(name)
        return hook

    def watch_hook(_m: nn.Module, _inp: object, out: object) -> None:
        if not shapes and isinstance(out, torch.Tensor):
            shapes.append(tuple(out.shape))

    try:
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                handles.append(m.register_forward_hook(conv_hook(name)))
        if watch is not None:
            handles.append(watch.register_forward_hook(watch_hook))
        with eval_mode(model), torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    if logits.ndim != 2:
        raise CnnlabError(f"the model returns shape {tuple(logits.shape)}; expected (N, classes) logits")
    return ModelProbe(int(logits.shape[1]), order, shapes[0] if shapes else None)


def conv_layer_names(model: nn.Module, x: torch.Tensor | None = None) -> list[str]:
    """Names of the model's ``nn.Conv2d`` layers in forward order.

    Args:
        model: the classifier.
        x: a sample batch (one image is enough) to trace the true execution order with hooks;
            without it the registration order of ``named_modules()`` is used.
    """
    if x is None:
        return conv_layers(model)
    return probe_model(model, x[:1].to(model_device(model))).convs


def require_spatial(probe: ModelProbe, layer: str, purpose: str) -> tuple[int, int, int, int]:
    """The watched layer's (N, C, H, W) output shape; any other output raises CnnlabError naming the conv layers."""
    shape = probe.watched_shape
    if shape is None or len(shape) != 4:
        got = "gives no tensor output in forward" if shape is None else f"outputs shape {shape}"
        raise CnnlabError(f"layer {layer!r} {got}; {purpose} needs a spatial (N, C, H, W) output; "
                          f"conv layers: {', '.join(probe.convs) or '(none)'}")
    return shape


def resolve_layer(model: nn.Module, name: str, suggestions: Sequence[str] | None = None) -> nn.Module:
    """The submodule called ``name``; an unknown name raises CnnlabError listing the conv layers."""
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    valid = list(suggestions) if suggestions is not None else conv_layer_names(model)
    raise CnnlabError(f"unknown layer {name!r}; conv layers: {', '.join(valid) or '(none)'} "
                      "(any name from model.named_modules() with an (N, C, H, W) output also works)")


def check_targets(targets: Targets, n: int, num_classes: int, class_word: str = "target class") -> torch.Tensor:
    """``targets`` as an int64 tensor (n,) (one int is broadcast); out-of-range classes raise CnnlabError."""
    t = torch.as_tensor(targets, dtype=torch.long).flatten().cpu()
    if t.numel() == 1:
        t = t.expand(n).clone()
    if t.numel() != n:
        raise CnnlabError(f"got {t.numel()} target classes for {n} images; give one per image or a single one")
    bad = t[(t < 0) | (t >= num_classes)]
    if bad.numel():
        raise CnnlabError(f"{class_word} {int(bad[0])} out of range; valid: 0..{num_classes - 1}")
    return t


def _prepare(
    model: nn.Module, x: torch.Tensor, targets: Targets, watch: nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor, ModelProbe]:
    """Validated (x on the model's device, int64 targets (N,), probe of the first image)."""
    if x.ndim != 4 or not x.is_floating_point():
        raise CnnlabError(f"expected a normalised float batch (N, C, H, W), got {x.dtype} {tuple(x.shape)}; "
                          "pass normalizer(images_u8)")
    x = x.detach().to(model_device(model))
    probe = probe_model(model, x[:1], watch)
    t = check_targets(targets, x.shape[0], probe.num_classes)
    return x, t.to(x.device), probe


def select_correct(
    model: nn.Module,
    images_u8: torch.Tensor,
    labels: torch.Tensor,
    normalizer: Normalizer,
    n: int,
    *,
    seed: int = 0,
) -> torch.Tensor:
    """Picks up to ``n`` random images that the model classifies correctly (heat maps explain a hit).

    Args:
        model: the classifier.
        images_u8: uint8 images (N, C, H, W).
        labels: true classes (N,).
        normalizer: the model's input normalisation.
        n: how many to pick; fewer come back if fewer are correct.
        seed: seed of the random choice.

    Returns:
        int64 indices into ``images_u8`` (ascending, at most ``n``).
    """
    device = model_device(model)
    preds = []
    with eval_mode(model), torch.no_grad():
        for i in range(0, images_u8.shape[0], _PREDICT_BATCH):
            batch = normalizer(images_u8[i:i + _PREDICT_BATCH].to(device))
            preds.append(model(batch).argmax(dim=1).cpu())
    pred = torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)
    correct = torch.nonzero(pred == labels.cpu(), as_tuple=False).flatten()
    pick = torch.randperm(correct.numel(), generator=torch.Generator().manual_seed(seed))[:n]
    return correct[pick].sort().values


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def occlusion(
    model: nn.Module,
    x: torch.Tensor,
    targets: Targets,
    *,
    window: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] | None = None,
    baseline: float = 0.0,
) -> torch.Tensor:
    """Occlusion sensitivity: how much the target score drops when a patch is blanked out.

    A ``window`` square (all channels at once) slides over the image; each pixel gets the mean drop of
    the target logit over the windows covering it, summed over channels. Positive = occluding it lowers
    the target score (important); negative = the patch argues against the class.

    Args:
        model: the classifier.
        x: normalised batch (N, C, H, W).
        targets: class per image (or one class for all).
        window: patch side in pixels (or (h, w)); default ``round(H / 7)``, at least 2 (4 px on 28×28,
            5 px on 32×32), as in the tutorials' 7×7-ish grid.
        stride: step between patches; default ``window // 2`` (at least 1), so windows overlap by half
            and the map is smoother than the grid.
        baseline: value written into the patch, in normalised units (0 = the dataset mean when the
            normaliser subtracts it, black for plain ``x / 255``).

    Returns:
        (N, H, W) float tensor on the CPU.
    """
    from captum.attr import Occlusion  # start-up: Captum's import (~0.4 s) only when attributing

    x, t, _ = _prepare(model, x, targets)
    n, c, h, w = x.shape
    default = min(h, w, max(2, round(h / 7)))  # never larger than the image (a 1-pixel image gets 1)
    wh, ww = _pair(window) if window is not None else (default, default)
    sh, sw = _pair(stride) if stride is not None else (max(1, wh // 2), max(1, ww // 2))
    if not (1 <= wh <= h and 1 <= ww <= w):
        raise CnnlabError(f"occlusion `window` {wh}x{ww} does not fit {h}x{w} images; use 1..{min(h, w)} pixels")
    if sh < 1 or sw < 1:
        raise CnnlabError(f"occlusion `stride` {sh}x{sw} must be at least 1 pixel")
    with eval_mode(model):
        attr = Occlusion(model).attribute(
            x, sliding_window_shapes=(c, wh, ww), strides=(c, sh, sw), baselines=baseline, target=t,
            perturbations_per_eval=max(1, _ROWS_PER_PASS // n))
    return attr.detach().sum(dim=1).cpu()


def saliency(model: nn.Module, x: torch.Tensor, targets: Targets) -> torch.Tensor:
    """Vanilla gradient saliency: |d target logit / d pixel|, max over channels.

    Returns:
        (N, H, W) non-negative float tensor on the CPU.
    """
    from captum.attr import Saliency  # start-up: Captum's import (~0.4 s) only when attributing

    x, t, _ = _prepare(model, x, targets)
    with eval_mode(model):
        # x is a fresh detached tensor, so switching on its grad does not touch the caller's batch
        attr = Saliency(model).attribute(x.requires_grad_(), target=t, abs=True)
    return attr.detach().amax(dim=1).cpu()


def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    targets: Targets,
    *,
    steps: int = 32,
    baseline: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Integrated gradients from a baseline to the image, summed over channels.

    Args:
        model: the classifier.
        x: normalised batch (N, C, H, W).
        targets: class per image (or one class for all).
        steps: points on the path (Gauss-Legendre rule); 32 is plenty for small images.
        baseline: start of the path in normalised units (a number or a tensor broadcastable to ``x``);
            None = all zeros (the dataset mean image when normalised, black for ``x / 255``).

    Returns:
        (N, H, W) float tensor on the CPU; positive = evidence for the target class. Per image the map
        sums to about ``score(x) - score(baseline)`` (completeness).
    """
    from captum.attr import IntegratedGradients  # start-up: Captum's import (~0.4 s) only when attributing

    x, t, _ = _prepare(model, x, targets)
    if isinstance(baseline, torch.Tensor):
        baseline = baseline.to(x.device, x.dtype)
    with eval_mode(model):
        attr = IntegratedGradients(model).attribute(
            x, baselines=baseline, target=t, n_steps=steps,
            internal_batch_size=max(x.shape[0], _ROWS_PER_PASS))
    return attr.detach().sum(dim=1).cpu()


def gradcam(model: nn.Module, x: torch.Tensor, targets: Targets, *, layer: str | None = None) -> torch.Tensor:
    """Grad-CAM: a layer's feature maps weighted by their mean gradient, ReLU, upsampled to the image.

    Args:
        model: the classifier.
        x: normalised batch (N, C, H, W).
        targets: class per image (or one class for all).
        layer: module name with an (N, C, h, w) output; default the last conv layer in forward order.

    Returns:
        (N, H, W) non-negative float tensor on the CPU (bilinear upsampling of the h × w map).

    Raises:
        CnnlabError: unknown layer, a layer without spatial output, or a model without conv layers.
    """
    from captum.attr import (  # start-up: Captum's import (~0.4 s) only when attributing
        LayerAttribution,
        LayerGradCam,
    )

    if layer is None:
        x, t, probe = _prepare(model, x, targets)
        if not probe.convs:
            raise CnnlabError("the model has no Conv2d layers; name one of its `layers` with an (N, C, H, W) "
                              "output for Grad-CAM")
        layer = probe.convs[-1]
        module = resolve_layer(model, layer)  # a Conv2d: its output is 4-D
    else:
        module = resolve_layer(model, layer)
        x, t, probe = _prepare(model, x, targets, watch=module)
        require_spatial(probe, layer, "Grad-CAM")
    with eval_mode(model):
        cam = LayerGradCam(model, module).attribute(x, target=t, relu_attributions=True)
        cam = LayerAttribution.interpolate(cam.detach(), tuple(x.shape[2:]), interpolate_mode="bilinear")
    return cam[:, 0].clamp_min(0).cpu()  # bilinear keeps ≥ 0; clamp guards rounding

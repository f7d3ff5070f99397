"""Activation maximisation: synthesise the input that a filter or an output class responds to most.

Gradient ascent starts from mid-grey plus seeded uniform noise (±0.25) and climbs the target score.
Unregularised ascent finds adversarial high-frequency noise, so every step is regularised (the usual
recipe of the Keras/Lucid tutorials, in its simplest form):

* **pixel parameterisation** in display units: the variable is the image itself, floats in [0, 1] per
  channel, mapped to the model's normalised space by the (affine) ``Normalizer``. It is transparent,
  needs no FFT or colour-decorrelation matrix fitted to the data, and on the 28–64 px images of the
  tutorials it is as good as a decorrelated (Fourier) parameterisation once jitter and blur are on;
* **jitter**: the image is rolled by a random shift of up to ``jitter`` px before each forward pass, so
  a pattern must work at several offsets and pixel-exact noise cancels out;
* **normalised gradient step**: the gradient is divided by its mean absolute value per image (as in the
  Keras tutorial), so ``lr`` is a step in [0, 1] pixel units whatever the activation scale;
* **L2 decay** of the image towards mid-grey each step, which keeps pixels that do not matter neutral;
* **Gaussian blur** every ``blur_every`` steps, which removes the high frequencies the ascent adds;
* **clamp** to [0, 1], i.e. to the normalised range the real images occupy.

All filters of one layer (or all requested classes) are optimised together as one batch; the images are
independent because the model runs in eval mode. Results are deterministic for a seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.data.tensors import Normalizer
from cnnlab.errors import CnnlabError
from cnnlab.inspect.attribution import (
    check_targets,
    conv_layer_names,
    probe_model,
    require_spatial,
    resolve_layer,
)
from cnnlab.models.summary import eval_mode, model_device

# Half-width of the uniform noise around mid-grey in the starting images. A post-ReLU filter that is
# silent everywhere on the start image gets no gradient and stays grey; ±0.1 left about a third of the
# deeper filters of a small CIFAR-10 net silent, ±0.25 only those that are dead on real images too.
_INIT_NOISE = 0.25
Objective = Callable[[torch.Tensor], torch.Tensor]  # normalised batch (K, C, H, W) → scores (K,)


class Maximized(NamedTuple):
    """Result of one maximisation run (one image per filter or class).

    Attributes:
        images: float images (K, C, H, W) in [0, 1] on the CPU.
        scores: target score reached by each final image (K,): mean filter activation or class logit.
        initial: the same score of each random starting image (K,), for comparison. A post-ReLU filter
            with 0 at the start usually stays at 0 (no gradient): it is dead on most inputs.
        indices: the filter or class index of each image.
    """

    images: torch.Tensor
    scores: torch.Tensor
    initial: torch.Tensor
    indices: list[int]


class _Stop(Exception):
    """Raised by a forward hook once the watched layer has run, so deeper layers are skipped."""


def default_layers(model: nn.Module, input_shape: tuple[int, int, int] | None = None) -> list[str]:
    """Conv layers 1, 3, 5 and 7 in forward order (as tutorial 003), or what exists of them.

    With fewer than seven conv layers the last one is added, so the deepest features are always shown
    (2 convs → 1, 2; 4 convs → 1, 3, 4).

    Args:
        model: the classifier.
        input_shape: (C, H, W); when given, the true execution order is traced with a forward pass,
            otherwise the registration order of ``named_modules()`` is used.

    Raises:
        CnnlabError: the model has no Conv2d layers.
    """
    x = None
    if input_shape is not None:
        x = torch.zeros((1, *input_shape), device=model_device(model))
    convs = conv_layer_names(model, x)
    if not convs:
        raise CnnlabError("the model has no Conv2d layers to visualise; name the `layers` to use")
    picked = convs[0:7:2]
    if len(convs) < 7 and convs[-1] not in picked:
        picked.append(convs[-1])
    return picked


def _norm_range(normalizer: Normalizer, channels: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) of shape (1, C, 1, 1): the normalised values of pixel 0 and pixel 255 per channel."""
    ends = torch.tensor([0, 255], dtype=torch.uint8, device=device).view(2, 1, 1, 1).expand(2, channels, 1, 1)
    lo, hi = normalizer(ends.contiguous()).split(1)
    return lo, hi


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur per channel with reflected borders (kernel radius 2σ, at least 1 px)."""
    radius = max(1, math.ceil(2 * sigma))
    radius = min(radius, x.shape[2] - 1, x.shape[3] - 1)  # reflect padding needs pad < size
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _check_ascent(input_shape: tuple[int, int, int], steps: int, lr: float, jitter: int | None, blur_every: int,
                  blur_sigma: float, decay: float) -> None:
    """One-line errors for settings gradient ascent cannot use on ``input_shape`` (never an ``assert``)."""
    side = min(input_shape[1:])
    checks = [(steps >= 1, f"`steps` {steps} (at least 1)"), (lr > 0, f"`lr` {lr} (a positive step)"),
              (jitter is None or 0 <= jitter < side, f"`jitter` {jitter} (0..{side - 1} pixels on {side}-pixel images)"),
              (blur_every >= 0, f"`blur_every` {blur_every} (0 = never, or a step count)"),
              (blur_sigma >= 0, f"`blur_sigma` {blur_sigma} (≥ 0)"), (decay >= 0, f"`decay` {decay} (≥ 0)")]
    problems = [message for ok, message in checks if not ok]
    if problems:
        raise CnnlabError("activation maximisation cannot use " + "; ".join(problems))


def _ascend(
    model: nn.Module,
    objective: Objective,
    count: int,
    input_shape: tuple[int, int, int],
    normalizer: Normalizer,
    *,
    steps: int,
    lr: float,
    jitter: int | None,
    blur_every: int,
    blur_sigma: float,
    decay: float,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Regularised gradient ascent of ``objective`` over ``count`` images; (images, scores, initial)."""
    _check_ascent(input_shape, steps, lr, jitter, blur_every, blur_sigma, decay)
    device = model_device(model)
    c, h, w = input_shape
    lo, hi = _norm_range(normalizer, c, device)
    gen = torch.Generator().manual_seed(seed)  # CPU generator: same draws on any device
    x = (0.5 + 2 * _INIT_NOISE * (torch.rand((count, c, h, w), generator=gen) - 0.5)).to(device)
    shift = max(1, round(min(h, w) / 16)) if jitter is None else jitter  # 2 px on 32×32

    def score(img: torch.Tensor) -> torch.Tensor:
        return objective(lo + img * (hi - lo))

    with eval_mode(model):
        with torch.no_grad():
            initial = score(x)
        for step in range(steps):
            x.requires_grad_(True)
            dy, dx = (torch.randint(-shift, shift + 1, (2,), generator=gen).tolist() if shift else (0, 0))
            total = score(torch.roll(x, shifts=(dy, dx), dims=(2, 3))).sum()
            (grad,) = torch.autograd.grad(total, x)  # only the input: no parameter .grad is touched
            x = x.detach()
            grad = grad / (grad.abs().mean(dim=(1, 2, 3), keepdim=True) + 1e-8)
            x = x + lr * grad
            x = x - decay * (x - 0.5)
            if blur_every and (step + 1) % blur_every == 0:
                x = _gaussian_blur(x, blur_sigma)
            x = x.clamp(0.0, 1.0)
        with torch.no_grad():
            final = score(x)
    return x.detach().cpu(), final.detach().cpu(), initial.detach().cpu()


def _layer_objective(model: nn.Module, module: nn.Module, filters: torch.Tensor) -> Objective:
    """Mean activation of filter ``filters[i]`` of ``module``'s output in image i (spatial mean)."""
    rows = torch.arange(filters.numel(), device=filters.device)

    def objective(x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []

        def hook(_m: nn.Module, _inp: object, out: torch.Tensor) -> None:
            captured.append(out)
            raise _Stop

        handle = module.register_forward_hook(hook)
        try:
            model(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        return captured[0][rows, filters].flatten(1).mean(dim=1)  # (K, h, w) → (K,)

    return objective


def maximize_filters(
    model: nn.Module,
    layer: str,
    filters: Sequence[int] | int | None = None,
    *,
    input_shape: tuple[int, int, int],
    normalizer: Normalizer,
    steps: int = 128,
    lr: float = 0.02,
    jitter: int | None = None,
    blur_every: int = 4,
    blur_sigma: float = 0.5,
    decay: float = 0.002,
    seed: int = 0,
) -> Maximized:
    """Synthesises, for each filter, the image that maximises its mean activation in ``layer``.

    Args:
        model: the classifier.
        layer: module name (``dict(model.named_modules())``) with an (N, C, h, w) output, e.g. ``conv2d_2``;
            for the project's Conv2D layers that is the post-activation output.
        filters: output channels to visualise, or a count n for the first n (capped at the layer's
            width); default 16.
        input_shape: (C, H, W) of the model's images.
        normalizer: the model's input normalisation (maps [0, 1] pixels to model space).
        steps: gradient-ascent steps.
        lr: step size in [0, 1] pixel units (per mean-absolute-normalised gradient).
        jitter: largest random roll per step in px; default ``round(min(H, W) / 16)``, at least 1.
        blur_every: blur every this many steps (0 = never).
        blur_sigma: Gaussian blur σ in px.
        decay: per-step pull of every pixel towards mid-grey (L2 decay), as a fraction.
        seed: seed of the starting noise and the jitter.

    Returns:
        Maximized with images (F, C, H, W) in [0, 1], the activations reached and at the start.

    Raises:
        CnnlabError: unknown layer, a layer without (N, C, h, w) output, or a filter index out of range.
    """
    module = resolve_layer(model, layer)
    device = model_device(model)
    probe = probe_model(model, torch.full((1, *input_shape), 0.0, device=device), module)
    shape = require_spatial(probe, layer, "filter maximisation")
    if filters is None or isinstance(filters, int):
        chosen = list(range(min(16 if filters is None else filters, shape[1])))
    else:
        chosen = list(filters)
    if not chosen:
        raise CnnlabError(f"no filters requested for layer {layer!r}; valid: 0..{shape[1] - 1}")
    idx = check_targets(chosen, len(chosen), shape[1], f"filter of layer {layer!r}").to(device)
    images, scores, initial = _ascend(
        model, _layer_objective(model, module, idx), len(chosen), input_shape, normalizer, steps=steps, lr=lr,
        jitter=jitter, blur_every=blur_every, blur_sigma=blur_sigma, decay=decay, seed=seed)
    return Maximized(images, scores, initial, chosen)


def maximize_layers(
    model: nn.Module,
    layers: Sequence[str] | None = None,
    filters: int | Sequence[int] = 8,
    *,
    input_shape: tuple[int, int, int],
    normalizer: Normalizer,
    seed: int = 0,
    **kwargs: Any,
) -> dict[str, Maximized]:
    """``maximize_filters`` for several layers (default ``default_layers``); feeds ``plot_maximized``.

    Args:
        model: the classifier.
        layers: module names; default conv layers 1, 3, 5, 7.
        filters: how many leading filters per layer (capped at the layer's width), or explicit indices.
        input_shape: (C, H, W) of the model's images.
        normalizer: the model's input normalisation.
        seed: seed shared by all layers.
        **kwargs: ascent settings passed to ``maximize_filters`` (steps, lr, jitter, blur_*, decay).

    Returns:
        layer name → Maximized, in the order given.
    """
    layers = list(layers) if layers is not None else default_layers(model, input_shape)
    out: dict[str, Maximized] = {}
    for name in layers:
        out[name] = maximize_filters(model, name, filters, input_shape=input_shape, normalizer=normalizer,
                                     seed=seed, **kwargs)
    return out


def maximize_classes(
    model: nn.Module,
    classes: Sequence[int],
    *,
    input_shape: tuple[int, int, int],
    normalizer: Normalizer,
    steps: int = 256,
    lr: float = 0.02,
    jitter: int | None = None,
    blur_every: int = 4,
    blur_sigma: float = 0.5,
    decay: float = 0.002,
    seed: int = 0,
) -> Maximized:
    """Synthesises, for each class, the image that maximises its logit (pre-softmax score).

    The logit, not the softmax probability, is climbed: raising a probability is easiest by suppressing
    the other classes, which gives less readable images. Arguments as in ``maximize_filters``.

    Returns:
        Maximized with images (K, C, H, W) in [0, 1], the logits reached and at the start.

    Raises:
        CnnlabError: a class index out of range.
    """
    device = model_device(model)
    num_classes = probe_model(model, torch.zeros((1, *input_shape), device=device)).num_classes
    chosen = list(classes)
    if not chosen:
        raise CnnlabError(f"no classes requested; valid: 0..{num_classes - 1}")
    idx = check_targets(chosen, len(chosen), num_classes, "class").to(device)
    rows = torch.arange(len(chosen), device=device)

    def objective(x: torch.Tensor) -> torch.Tensor:
        return model(x)[rows, idx]

    images, scores, initial = _ascend(
        model, objective, len(chosen), input_shape, normalizer, steps=steps, lr=lr, jitter=jitter,
        blur_every=blur_every, blur_sigma=blur_sigma, decay=decay, seed=seed)
    return Maximized(images, scores, initial, chosen)

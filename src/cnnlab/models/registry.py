"""The model registry: keyword-only builders registered by name, each with its metadata declared beside it.

Like timm's ``default_cfg`` and torchvision's ``Weights.meta``, a :class:`ModelMeta` says what is known
about an architecture without building it: its default input, its classifier module, its first conv,
and the published weights with the preprocessing they expect. Summary, pretrained loading, transfer
learning and input normalisation read it from here and nowhere else.

Every builder has the signature ``builder(*, num_classes: int, input_shape: tuple[int, int, int], **kw)``
with ``input_shape`` as (C, H, W), and returns an ``nn.Module`` mapping a float (N, C, H, W) batch to
(N, num_classes) logits. The softmax of the tutorials' last layer lives in the loss and in ``predict``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cnnlab.errors import CnnlabError
from cnnlab.registry import Registry

if TYPE_CHECKING:  # start-up time: the registry (and `cnnlab models`) must not import torch (~1.1 s)
    from torch import nn

ModelBuilder = Callable[..., "nn.Module"]

# Adam learning rates from scratch (ModelMeta.lr): BatchNorm keeps 1e-3 (Keras's default) stable; the deep
# classics without it need ten times less (measured with cnnlab lr-find: docs/seeds.md).
LR_WITH_BN, LR_WITHOUT_BN = 1e-3, 1e-4

# ImageNet's per-channel statistics (RGB, on 0..1 pixels): what torchvision's published weights expect.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
_TORCHVISION_URL = "https://download.pytorch.org/models/"


@dataclass(frozen=True)
class Weights:
    """One published weight file and how its images were prepared (torchvision's ``Weights.meta``).

    Attributes:
        url: official download URL.
        sha256: leading hex digits of the file's SHA-256, as torchvision writes them into the file name.
        input_size: side of the centre crop the weights were evaluated at, in pixels.
        resize_size: side the shorter image edge is resized to before that crop, in pixels.
        num_classes: outputs of the published head (ImageNet-1k).
        mean: per-channel normalisation mean (RGB, on 0..1 pixels).
        std: per-channel normalisation std.
        transform_input: build the model with ``transform_input=True`` (weights ported from TensorFlow
            expect inputs scaled to [-1, 1]; the model converts ImageNet-normalised input itself).
    """

    url: str
    sha256: str
    input_size: int = 224
    resize_size: int = 256
    num_classes: int = 1000
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    transform_input: bool = False

    @property
    def file_name(self) -> str:
        """The file's official name (also its name in the cache)."""
        return self.url.rsplit("/", 1)[-1]

    @property
    def builder_options(self) -> dict[str, bool]:
        """Keyword arguments the builder needs for these weights to give their published accuracy."""
        return {"transform_input": True} if self.transform_input else {}


def torchvision_weights(file_name: str, **kw) -> Weights:
    """torchvision's IMAGENET1K_V1 file ``<name>-<first 8 hex digits of its SHA-256>.pth``."""
    sha256 = file_name.rsplit("-", 1)[1].split(".", 1)[0]
    return Weights(_TORCHVISION_URL + file_name, sha256, **kw)


@dataclass(frozen=True)
class ModelMeta:
    """What is known about an architecture, declared next to its builder.

    Attributes:
        input_shape: the default input (C, H, W): the tutorial's for its models, ImageNet's for the classics.
        num_classes: the default number of classes (10 for the tutorials, 1000 for ImageNet).
        head: dotted name of the final classifier module (replaced for new classes; trained alone when
            the backbone is frozen). None: the model has no separable head.
        first_conv: dotted name of the first convolution (its RGB kernels are summed for gray input).
        weights: the published ImageNet weights, or None.
        aux_heads: state-dict prefixes of auxiliary heads (GoogLeNet, Inception v3), dropped from a file
            when the model was built without them.
        min_side: the smallest input height/width the architecture reduces to a non-empty feature map.
        lr: a learning rate this architecture trains well at with Adam from scratch: what ``train.lr``
            defaults to for it when the config leaves it unset (None: the generic 0.001). Without BatchNorm
            the deep classics (VGG, AlexNet) need 1e-4: at 1e-3 a VGG-16 collapses to a constant output
            (loss ln C, chance accuracy) within its first epoch.
    """

    input_shape: tuple[int, int, int]
    num_classes: int = 1000
    head: str | None = None
    first_conv: str | None = None
    weights: Weights | None = None
    aux_heads: tuple[str, ...] = ()
    min_side: int = 1
    lr: float | None = None

    @property
    def mean(self) -> tuple[float, ...] | None:
        """The normalisation mean the weights expect (None: no published weights)."""
        return self.weights.mean if self.weights else None

    @property
    def std(self) -> tuple[float, ...] | None:
        """The normalisation std the weights expect (None: no published weights)."""
        return self.weights.std if self.weights else None


@dataclass(frozen=True)
class ModelEntry:
    """A registered builder and its metadata."""

    name: str
    builder: ModelBuilder
    meta: ModelMeta

    @property
    def description(self) -> str:
        """First line of the builder's docstring."""
        return first_line(self.builder.__doc__)


def first_line(doc: str | None) -> str:
    """The first line of a docstring once its ends are stripped ("" for none): a model's one-line description."""
    text = (doc or "").strip()
    return text.splitlines()[0] if text else ""


MODELS: Registry[ModelEntry] = Registry("model")

# Modules that register model families on import (one family per file).
FAMILIES = ("seeds", "vgg", "resnet", "googlenet", "inception", "mobilenet", "alexnet")
_loaded = False


def register_model(meta: ModelMeta, name: str | None = None) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator registering a builder under ``name`` (default: its function name) with its metadata."""

    def deco(fn: ModelBuilder) -> ModelBuilder:
        MODELS.add(name or fn.__name__, ModelEntry(name or fn.__name__, fn, meta))
        return fn

    return deco


def load_families() -> None:
    """Imports every model family module so the registry is complete (idempotent)."""
    global _loaded
    if _loaded:
        return
    for mod in FAMILIES:
        importlib.import_module(f"cnnlab.models.{mod}")
    _loaded = True


def model_entry(name: str) -> ModelEntry:
    """The registered builder and metadata of ``name``; unknown names list the valid ones."""
    load_families()
    return MODELS.get(name)


def model_meta(name: str) -> ModelMeta:
    """The metadata of the registered model ``name``."""
    return model_entry(name).meta


def create_model(name: str, *, num_classes: int, input_shape: Sequence[int], **kwargs) -> nn.Module:
    """Builds the registered model ``name``.

    Raises:
        CnnlabError: an unknown name (listing the valid ones), a class count below 1, an input that is not three
            positive sizes (C, H, W), or options the builder does not take.
    """
    entry = model_entry(name)
    shape = check_build_args(name, num_classes, input_shape)
    try:
        return entry.builder(num_classes=num_classes, input_shape=shape, **kwargs)
    except TypeError as exc:
        if "unexpected keyword" not in str(exc):
            raise
        raise CnnlabError(f"{name}: unknown option ({str(exc).split(')', 1)[-1].strip()}); the tutorial models take "
                          "none, see the builder's docstring for the others") from None


MAX_INPUT_PIXELS = 2**26  # H x W of one input image (8192 x 8192): cnnlab's limit


def check_build_args(name: str, num_classes: int, input_shape: Sequence[int]) -> tuple[int, ...]:
    """What :func:`create_model` checks before it builds ``name``: the class count and the (C, H, W) input.

    Returns:
        ``input_shape`` as a tuple.

    Raises:
        CnnlabError: a class count below 1, or an input that is not three positive sizes (C, H, W).
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise CnnlabError(f"{name}: `num_classes` must be a whole number ≥ 1, got {num_classes!r}")
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(v, int) and v >= 1 for v in shape):
        raise CnnlabError(f"{name}: `input_shape` must be (channels, height, width) of positive sizes, got {shape}")
    if shape[0] > 4 and shape[2] in (1, 3):  # (H, W, C) given, as Keras writes it
        raise CnnlabError(f"{name}: `input_shape` is (C, H, W), channels first; {shape} looks like Keras's (H, W, C): "
                          f"use {(shape[2], shape[0], shape[1])}")
    if shape[1] * shape[2] > MAX_INPUT_PIXELS:  # before any model tries to allocate for it
        raise CnnlabError(f"{name}: `input_shape` {shape} has over {MAX_INPUT_PIXELS:,} pixels (cnnlab's limit, "
                          "8192 x 8192); use smaller images")
    return shape


def model_names() -> list[str]:
    """Every registered model name, sorted."""
    load_families()
    return MODELS.names()


def describe(name: str) -> str:
    """First line of the builder's docstring."""
    return model_entry(name).description


# --- builder checks shared by the classic families ---------------------------------------------------------


def check_input(arch: str, input_shape: Sequence[int], *, min_side: int = 1) -> tuple[int, int, int]:
    """Validates a builder's (C, H, W) before anything is built and returns it as ints.

    ``min_side`` is the smallest height/width the architecture reduces to a non-empty feature map; a
    smaller input, or anything but three positive sizes, raises a one-line :class:`CnnlabError`.
    """
    try:
        c, h, w = (int(v) for v in input_shape)
    except (TypeError, ValueError):
        raise CnnlabError(f"{arch}: input_shape must be (channels, height, width), "
                          f"got {input_shape!r}") from None
    if min(c, h, w) < 1:
        raise CnnlabError(f"{arch}: input_shape sizes must be ≥ 1, got {(c, h, w)}")
    if min(h, w) < min_side:
        raise CnnlabError(f"{arch} needs inputs of at least {min_side}x{min_side} pixels, got {h}x{w}; "
                          f"resize the images to ≥ {min_side} px or pick a model for small images "
                          "(e.g. resnet18)")
    return c, h, w


def reject_options(arch: str, options: Mapping[str, object], valid: Iterable[str]) -> None:
    """Raises a one-line :class:`CnnlabError` if a builder got options it does not know."""
    if options:
        names = ", ".join(sorted(options))
        raise CnnlabError(f"{arch}: unknown option(s) {names}; valid: {', '.join(sorted(valid)) or 'none'}")

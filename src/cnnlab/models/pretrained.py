"""Official torchvision ImageNet weights for the classic families: where they are and how to load them.

The classic builders (``vgg*``, ``resnet*``, ``googlenet``, ``inception_v3``, ``mobilenet_v2``,
``alexnet``) lay out their modules exactly as torchvision does, so torchvision's published weight files
load key for key. :func:`load_pretrained` adapts a file to the model it is loaded into: a different class
count or input size gets a freshly initialised head, one-channel models get the RGB kernels of the first
conv summed, and the auxiliary heads of GoogLeNet / Inception v3 are dropped when the model has none.

Weight files are only ever read as tensors (``torch.load(weights_only=True)`` or safetensors): code in a
model file is never executed. This module also holds the argument checks shared by the classic builders.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cnnlab.data.sources import cache_dir, download_file
from cnnlab.data.tensors import IMAGENET
from cnnlab.errors import CnnlabError

IMAGENET_MEAN: tuple[float, ...] = IMAGENET.mean  # (0.485, 0.456, 0.406), RGB on 0..1 pixels
IMAGENET_STD: tuple[float, ...] = IMAGENET.std  # (0.229, 0.224, 0.225)
_MODELS_URL = "https://download.pytorch.org/models/"


@dataclass(frozen=True)
class WeightSpec:
    """One published weight file and how its images were prepared.

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


def _torchvision(file_name: str, **kw) -> WeightSpec:
    # torchvision names its files "<name>-<first 8 hex digits of the SHA-256>.pth".
    sha256 = file_name.rsplit("-", 1)[1].split(".", 1)[0]
    return WeightSpec(_MODELS_URL + file_name, sha256, **kw)


# The IMAGENET1K_V1 weights of torchvision (the original training recipes), torchvision 0.13 – 0.28.
PRETRAINED: dict[str, WeightSpec] = {
    "alexnet": _torchvision("alexnet-owt-7be5be79.pth"),
    "vgg11": _torchvision("vgg11-8a719046.pth"),
    "vgg11_bn": _torchvision("vgg11_bn-6002323d.pth"),
    "vgg13": _torchvision("vgg13-19584684.pth"),
    "vgg13_bn": _torchvision("vgg13_bn-abd245e5.pth"),
    "vgg16": _torchvision("vgg16-397923af.pth"),
    "vgg16_bn": _torchvision("vgg16_bn-6c64b313.pth"),
    "vgg19": _torchvision("vgg19-dcbb9e9d.pth"),
    "vgg19_bn": _torchvision("vgg19_bn-c79401a0.pth"),
    "resnet18": _torchvision("resnet18-f37072fd.pth"),
    "resnet34": _torchvision("resnet34-b627a593.pth"),
    "resnet50": _torchvision("resnet50-0676ba61.pth"),
    "resnet101": _torchvision("resnet101-63fe2227.pth"),
    "resnet152": _torchvision("resnet152-394f9c45.pth"),
    "googlenet": _torchvision("googlenet-1378be20.pth", transform_input=True),
    "inception_v3": _torchvision("inception_v3_google-0cc3c7bd.pth", input_size=299, resize_size=342,
                                 transform_input=True),
    "mobilenet_v2": _torchvision("mobilenet_v2-b0353104.pth"),
}

# State-dict prefixes of auxiliary heads, dropped from a file when the model was built without them.
AUX_PREFIXES: dict[str, tuple[str, ...]] = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}


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


def tag_model(model: nn.Module, *, arch: str, head: str) -> nn.Module:
    """Records the builder name and the dotted name of the final ``nn.Linear`` on ``model``."""
    model.cnnlab_arch = arch
    model.cnnlab_head = head
    return model


def freeze_backbone(model: nn.Module, *, keep: Iterable[str] = ()) -> list[str]:
    """Freezes every parameter except the head's (``model.cnnlab_head``) and the names in ``keep``.

    Pass ``keep=report.reinitialized`` after :func:`load_pretrained` so that layers which start from a
    fresh initialisation (e.g. VGG's first FC layers at a non-224 input size) are trained too. BatchNorm
    running statistics still update in training mode; put those modules in eval mode to fix them as well.

    Returns:
        Names of the parameters left trainable.
    """
    prefix, keep = model.cnnlab_head + ".", set(keep)
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(prefix) or name in keep)
        if param.requires_grad:
            trainable.append(name)
    return trainable


# --- finding and reading weight files -----------------------------------------------------------------------

def weight_spec(arch: str) -> WeightSpec:
    """The official weights of ``arch``; unknown names raise a one-line error listing the available ones."""
    if arch not in PRETRAINED:
        available = ", ".join(sorted(PRETRAINED))
        raise CnnlabError(f"no official ImageNet weights for {arch!r} (available: {available}); "
                          "pass --weights FILE to start from your own weight file")
    return PRETRAINED[arch]


def weights_dir() -> Path:
    """Where downloaded weight files are cached: ``<cache>/weights``."""
    return cache_dir() / "weights"


def pretrained_path(arch: str, *, weights: str | Path | None = None, download: bool = True) -> Path:
    """Finds the weight file to load: ``weights`` if given, else the cached or downloaded official one.

    Args:
        arch: builder name with an entry in :data:`PRETRAINED` (not needed when ``weights`` is given).
        weights: a local ``.pth`` / ``.pt`` / ``.safetensors`` file (``--weights FILE``); it must exist.
        download: fetch the official file into the cache when it is not there yet.

    Returns:
        Path of a local file.

    Raises:
        CnnlabError: the local file is missing, or the official one is not cached and cannot be
            downloaded (offline, unreachable, checksum mismatch); the message names the URL and where
            to put the file.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise CnnlabError(f"weights file {path} does not exist; check the --weights path")
        return path
    spec = weight_spec(arch)
    dest = weights_dir() / spec.file_name
    if dest.is_file():
        return dest  # verified when it was downloaded
    fix = f"download {spec.url} and save it as {dest}, or pass --weights FILE"
    if not download:
        raise CnnlabError(f"the {arch} ImageNet weights are not cached and downloading is off; {fix}")
    try:
        return download_file([spec.url], dest, sha256=spec.sha256)
    except CnnlabError as exc:
        raise CnnlabError(f"could not get the {arch} ImageNet weights: {exc}; {fix}") from None


_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Checkpoint dictionaries that wrap the state dict under one of these keys are unwrapped.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a state dict (name → tensor) from a PyTorch or safetensors file onto the CPU.

    PyTorch files are read with ``weights_only=True``: only tensors and plain containers are unpickled,
    never code. A checkpoint that wraps the state dict (``{"state_dict": ...}``, ``{"model": ...}``) is
    unwrapped, and a ``module.`` prefix left by ``DataParallel`` is removed.

    Args:
        path: a ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` or ``.safetensors`` file.

    Returns:
        The tensors by parameter/buffer name.

    Raises:
        CnnlabError: the file is missing, of an unsupported type, unreadable, corrupt, or holds something
            other than a state dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CnnlabError(f"weights file {path} does not exist; check the --weights path")
    suffix = path.suffix.lower()
    if suffix != ".safetensors" and suffix not in _TORCH_SUFFIXES:
        raise CnnlabError(f"{path}: unsupported weight file type {suffix or '(no suffix)'!r}; "
                          "use a PyTorch .pth/.pt file or a .safetensors file")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if found := re.search(r"Unsupported global: GLOBAL (\S+)", str(exc)):
            raise CnnlabError(f"{path}: refused to unpickle {found[1]} (weight files are read as tensors "
                              "only, never as code); re-save the model's state_dict() with torch.save"
                              ) from None
        raise CnnlabError(f"cannot read weights file {path} (not a valid PyTorch file); it is truncated, "
                          "corrupt or of another format — fetch it again") from None
    except Exception as exc:  # torch, zipfile and safetensors raise many types for a bad file
        raise CnnlabError(f"cannot read weights file {path} ({_first_line(exc)}); it is truncated, corrupt "
                          "or not a PyTorch/safetensors file — fetch it again") from None
    return _as_state_dict(obj, path)


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _as_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj or not _is_state_dict(obj):
        raise CnnlabError(f"{path} does not hold a state dict (parameter name → tensor); "
                          "save one with torch.save(model.state_dict(), FILE)")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _is_state_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


# --- loading into a model ---------------------------------------------------------------------------------

@dataclass
class LoadReport:
    """What :func:`load_pretrained` did.

    Attributes:
        arch: the architecture the weights were loaded for.
        loaded: model keys copied from the file unchanged.
        adapted: model keys filled from a converted file tensor (RGB first conv summed to one channel).
        reinitialized: model keys left at a fresh initialisation (a replaced head, VGG's FC layers at a
            non-224 input size); train these.
        dropped: file keys that were not used (auxiliary heads, the replaced head).
    """

    arch: str
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"{self.arch}: loaded {len(self.loaded)} tensors"]
        if self.adapted:
            parts.append(f"adapted {', '.join(self.adapted)} (RGB kernels summed for 1-channel input)")
        if self.reinitialized:
            parts.append(f"re-initialised {_modules(self.reinitialized)}")
        if self.dropped:
            parts.append(f"ignored {len(self.dropped)} file tensors ({_modules(self.dropped)})")
        return "; ".join(parts)


def _modules(keys: Iterable[str]) -> str:
    return ", ".join(dict.fromkeys(k.rsplit(".", 1)[0] for k in keys))


def load_pretrained(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, arch: str) -> LoadReport:
    """Loads ``state_dict`` into ``model``, adapting what a different head, input or channel count needs.

    Adaptations, in order: auxiliary-head tensors are dropped when the model has no auxiliary heads; the
    first conv's RGB kernels are summed when the model takes one channel (the response to a gray image
    equals the RGB model's response to that image copied into R, G and B); and when a linear layer's
    shape differs (another class count, or VGG's flatten width at another input size) that layer and
    every linear layer after it up to the head keep a fresh initialisation. Everything else must match
    exactly.

    Args:
        model: a model from one of the classic builders (it has ``cnnlab_head``).
        state_dict: tensors by name, e.g. from :func:`load_state_dict_file`.
        arch: the builder name of the weights, for the auxiliary-head names and messages.

    Returns:
        Which keys were loaded, adapted, re-initialised and dropped.

    Raises:
        CnnlabError: keys missing, unexpected or of another shape beyond those adaptations (the message
            lists the first few).
    """
    own = model.state_dict()
    src = dict(state_dict)
    report = LoadReport(arch)
    aux = AUX_PREFIXES.get(arch, ())

    for key in [k for k in src if k.startswith(aux) and k not in own]:
        report.dropped.append(key)
        del src[key]

    stem = next((f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if stem in src and _gray_stem(own[stem].shape, src[stem].shape):
        src[stem] = src[stem].sum(dim=1, keepdim=True)  # (O, 3, k, k) → (O, 1, k, k)
        report.adapted.append(stem)

    restart = _linears_to_reset(model, own, src, aux)
    for name, _ in restart:
        report.reinitialized += [k for k in (f"{name}.weight", f"{name}.bias") if k in own]
        report.dropped += [k for k in (f"{name}.weight", f"{name}.bias") if src.pop(k, None) is not None]
    # Auxiliary heads the file does not have (saved from a model without them) restart too.
    for prefix in aux:
        if any(k.startswith(prefix) for k in own) and not any(k.startswith(prefix) for k in src):
            restart.append((prefix.rstrip("."), model.get_submodule(prefix.rstrip("."))))
            report.reinitialized += [k for k in own if k.startswith(prefix)]

    _check_fit(arch, own, src, set(report.reinitialized))  # before the model is touched
    for _, module in restart:
        for m in module.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    # strict=False only for the restarted keys; BatchNorm fills a num_batches_tracked the file lacks.
    model.load_state_dict(src, strict=False)
    report.loaded = [k for k in src if k not in report.adapted]
    return report


def _gray_stem(own: torch.Size, file: torch.Size) -> bool:
    # (O, 1, k, k) in the model, (O, 3, k, k) in the file
    if len(own) != 4 or len(file) != 4:
        return False
    return (own[1], file[1]) == (1, 3) and (own[0], own[2:]) == (file[0], file[2:])


def _linears_to_reset(model: nn.Module, own: Mapping, src: Mapping,
                      aux: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    def differs(name: str) -> bool:
        return any(k in src and src[k].shape != own[k].shape for k in (f"{name}.weight", f"{name}.bias"))

    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    main = [(n, m) for n, m in linears if not n.startswith(aux)]
    # Once one layer of the classifier chain restarts, the pretrained layers after it lose their meaning.
    first = next((i for i, (n, _) in enumerate(main) if differs(n)), len(main))
    return main[first:] + [(n, m) for n, m in linears if n.startswith(aux) and differs(n)]


def _check_fit(arch: str, own: Mapping, src: Mapping, reinitialized: set[str]) -> None:
    # num_batches_tracked is absent from older torchvision files; BatchNorm fills it in.
    missing = [k for k in own
               if k not in src and k not in reinitialized and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in src if k not in own]
    shapes = [f"{k} {tuple(src[k].shape)} in the file vs {tuple(own[k].shape)}"
              for k in src if k in own and src[k].shape != own[k].shape]
    problems = [f"{label} {_first(keys)}" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if keys]
    if problems:
        raise CnnlabError(f"the weights do not fit {arch}: " + "; ".join(problems)
                          + f" — are they {arch} weights, for a model of the same variant?")


def _first(items: list[str], n: int = 3) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def apply_pretrained(model: nn.Module, *, arch: str, weights: str | Path | None = None,
                     download: bool = True) -> LoadReport:
    """:func:`pretrained_path` → :func:`load_state_dict_file` → :func:`load_pretrained` in one call."""
    path = pretrained_path(arch, weights=weights, download=download)
    return load_pretrained(model, load_state_dict_file(path), arch=arch)

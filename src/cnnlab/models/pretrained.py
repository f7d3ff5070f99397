"""Official torchvision ImageNet weights for the classic families: where they are and how to load them.

The classic builders (``vgg*``, ``resnet*``, ``googlenet``, ``inception_v3``, ``mobilenet_v2``,
``alexnet``) lay out their modules exactly as torchvision does, so torchvision's published weight files
(declared in each builder's :class:`~cnnlab.models.registry.ModelMeta`) load key for key.
:func:`load_pretrained` adapts a file to the model it is loaded into: a different class count or input
size gets a freshly initialised head, one-channel models get the RGB kernels of the first conv summed,
and the auxiliary heads of GoogLeNet / Inception v3 are dropped when the model has none.

Weight files are only ever read as tensors (:mod:`cnnlab.models.weights`): code in a model file is never
executed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cnnlab.config import ModelConfig
from cnnlab.errors import CnnlabError
from cnnlab.io import cache_dir, download_file
from cnnlab.models.registry import MODELS, ModelMeta, Weights, create_model, load_families, model_meta
from cnnlab.models.weights import load_into, load_state_dict_file


def published_weights(arch: str) -> Weights:
    """The official weights of ``arch``; a model without any raises a one-line error listing those with some."""
    meta = model_meta(arch)
    if meta.weights is None:
        load_families()
        available = ", ".join(n for n in MODELS.names() if MODELS.get(n).meta.weights)
        raise CnnlabError(f"no official ImageNet weights for {arch!r} (available: {available}); "
                          "set `model.weights` to a weight file of your own instead")
    return meta.weights


def weights_dir() -> Path:
    """Where downloaded weight files are cached: ``<cache>/weights``."""
    return cache_dir() / "weights"


def pretrained_path(arch: str, *, weights: str | Path | None = None, download: bool = True) -> Path:
    """Finds the weight file to load: ``weights`` if given, else the cached or downloaded official one.

    Args:
        arch: a registered model with published weights (not needed when ``weights`` is given).
        weights: a local ``.pth`` / ``.pt`` / ``.safetensors`` file (``model.weights``); it must exist.
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
            raise CnnlabError(f"`model.weights` {path} does not exist; check the path")
        return path
    spec = published_weights(arch)
    dest = weights_dir() / spec.file_name
    if dest.is_file():
        return dest  # verified when it was downloaded
    fix = f"download {spec.url} and save it as {dest}, or set `model.weights` to a local file"
    if not download:
        raise CnnlabError(f"the {arch} ImageNet weights are not cached and downloading is off; {fix}")
    try:
        return download_file([spec.url], dest, sha256=spec.sha256)
    except CnnlabError as exc:
        raise CnnlabError(f"could not get the {arch} ImageNet weights: {exc}; {fix}") from None


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
        model: a model built by the registered builder ``arch``.
        state_dict: tensors by name, e.g. from :func:`cnnlab.models.weights.load_state_dict_file`.
        arch: the registered name of the weights' architecture; its metadata names the first conv and
            the auxiliary heads.

    Returns:
        Which keys were loaded, adapted, re-initialised and dropped.

    Raises:
        CnnlabError: keys missing, unexpected or of another shape beyond those adaptations (the message
            lists the first few).
    """
    own = model.state_dict()
    src = dict(state_dict)
    report = LoadReport(arch)
    meta = model_meta(arch)
    aux = meta.aux_heads

    for key in [k for k in src if k.startswith(aux) and k not in own]:
        report.dropped.append(key)
        del src[key]

    stem = f"{meta.first_conv}.weight" if meta.first_conv else None
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


def load_initial_weights(model: nn.Module, cfg: ModelConfig, log: Callable[[str], None]) -> LoadReport | None:
    """Loads the official (``model.pretrained``) or a local (``model.weights``) file into ``model``.

    Registered models with published weights adapt the file (new head for another class count, grey
    first conv); other models need a state dict of exactly their architecture (e.g. another run's
    model.safetensors).

    Raises:
        CnnlabError: no published weights for the model, or a file that is missing, unreadable or does
            not fit.
    """
    if not (cfg.pretrained or cfg.weights):
        return None
    meta = model_meta(cfg.name) if cfg.name and not cfg.layers else None
    if meta is None or meta.weights is None:
        if cfg.pretrained:
            if meta is not None:
                published_weights(cfg.name)  # raises, listing the models that have weights
            raise CnnlabError("model.pretrained: a model given by model.layers has no published weights; "
                              "set `model.weights` to a weight file of your own instead")
        load_into(model, load_state_dict_file(cfg.weights), cfg.weights)
        log(f"Weights: loaded {cfg.weights}")
        return None
    report = apply_pretrained(model, arch=cfg.name, weights=cfg.weights)
    log(f"Weights: {report}")
    return report


def published_layout(arch: str, shapes: Mapping[str, Iterable[int]]) -> bool:
    """Whether tensors of these shapes (name → shape) are laid out as ``arch``'s published ImageNet weights: the
    same names and shapes (auxiliary heads and BatchNorm's ``num_batches_tracked`` aside) as the model built for
    the weights' input size and 1,000 classes. Such a file is, in all likelihood, those weights (or a copy of
    them): it needs their preprocessing."""
    meta = model_meta(arch)
    if meta.weights is None:
        return False
    w = meta.weights
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised for real
        ref = create_model(arch, num_classes=w.num_classes, input_shape=(3, w.input_size, w.input_size),
                           **w.builder_options).state_dict()

    def layout(named: Iterable[tuple[str, Iterable[int]]]) -> dict[str, tuple[int, ...]]:
        return {k: tuple(s) for k, s in named if not k.startswith(meta.aux_heads) and not k.endswith("num_batches_tracked")}

    return layout(shapes.items()) == layout((k, v.shape) for k, v in ref.items())


def has_published_layout(arch: str, weights: str | Path) -> bool:
    """:func:`published_layout` of a weight file, reading only its shapes (never the tensors).

    Raises:
        CnnlabError: the file is missing or unreadable.
    """
    if model_meta(arch).weights is None:
        return False
    return published_layout(arch, {k: v.shape for k, v in load_state_dict_file(weights, device="meta").items()})


def head_parameters(model: nn.Module, meta: ModelMeta, report: LoadReport | None = None) -> set[str]:
    """Names of the parameters of the classifier head, plus layers loading left freshly initialised.

    Raises:
        CnnlabError: the model declares no head.
    """
    if meta.head is None:
        raise CnnlabError("`model.freeze` / model.backbone_lr: this model declares no classifier head; "
                          "use a registered deep CNN (cnnlab models) or a layer list ending in Dense")
    names = {n for n, _ in model.named_parameters() if n.startswith(meta.head + ".")}
    return names | set(report.reinitialized if report else ())  # fresh layers (VGG's FC at 50x50) train too

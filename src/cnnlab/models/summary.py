"""Keras-style ``model.summary()`` for any ``nn.Module``, built on torchinfo's forward trace.

torchinfo runs one dummy image through the model with hooks and records every module call in execution
order with its output size; this module picks the rows a Keras user expects from that trace, writes the
shapes the Keras way (channels last, ``None`` batch) and prints Keras's table (the table itself, and a layer
list's table without a trace, live in :mod:`cnnlab.models.kerastable`, which imports no torch). Totals are counted from
``model.parameters()`` (plus BatchNorm's moving statistics, which Keras counts as non-trainable) so they
are exact whatever rows are shown.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torchinfo
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.kerastable import LayerRow, keras_shape, keras_table

__all__ = ["LayerCall", "LayerRow", "eval_mode", "is_layer", "keras_shape", "keras_table", "layer_kind", "layer_rows",
           "model_device", "param_counts", "preserved_state", "spec_types", "summary_text", "trace"]

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)

# (torch.nn base classes, kind); checked before the class-name fallback below.
_KIND_BASES: tuple[tuple[tuple[type, ...], str], ...] = (
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), "conv"),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
      nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
      nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d), "pool"),
    ((nn.Linear, nn.Bilinear), "dense"),
    ((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d,
      nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm), "norm"),
    ((nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout), "dropout"),
    ((nn.Flatten, nn.Unflatten), "reshape"),
)
# Class-name fragments for project/user layers that subclass nn.Module directly (e.g. a Keras-like
# ``Pool2D``); first match wins, compared case-insensitively.
_KIND_WORDS = (("conv", "conv"), ("pool", "pool"), ("dense", "dense"), ("linear", "dense"), ("norm", "norm"),
               ("dropout", "dropout"), ("flatten", "reshape"), ("reshape", "reshape"), ("activation", "activation"),
               ("relu", "activation"), ("softmax", "activation"), ("sigmoid", "activation"), ("tanh", "activation"))


@dataclass(frozen=True)
class LayerCall:
    """One module call seen by the trace: name, module and output size including the batch of 1."""

    name: str
    module: nn.Module
    output_size: tuple[int, ...] | None  # None when the output is not a single tensor


def is_layer(module: nn.Module) -> bool:
    """Whether ``module`` is one layer (a row) rather than a block to open up.

    Leaves are layers; so are subclasses of torch's own layers even when they hold children (a Keras-like
    ``Conv2D(nn.Conv2d)`` keeping its activation as a submodule, ``nn.MultiheadAttention``).
    """
    if isinstance(module, _CONTAINERS):
        return False
    if next(module.children(), None) is None:
        return True
    return any(c.__module__.startswith("torch.nn.modules.") and c is not nn.Module for c in type(module).__mro__)


def layer_kind(module: nn.Module, type_name: str | None = None) -> str:
    """A coarse category of ``module`` for defaults and colours (see :class:`LayerRow`)."""
    if isinstance(module, nn.Identity):
        return "other"
    for bases, kind in _KIND_BASES:
        if isinstance(module, bases):
            return kind
    if any(c.__module__ == "torch.nn.modules.activation" for c in type(module).__mro__):
        return "activation"
    lowered = (type_name or type(module).__name__).lower()
    for word, kind in _KIND_WORDS:
        if word in lowered:
            return kind
    return "other" if is_layer(module) else "block"


def param_counts(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameters of ``model`` as Keras counts them; shared parameters count once.

    BatchNorm's running mean and variance are buffers in PyTorch but weights in Keras, where
    ``model.summary()`` and ``count_params()`` count them as non-trainable parameters; so they count here
    too (a model imported from Keras shows Keras's totals). Other buffers are not counted.
    """
    params = list(model.parameters())
    stats = sum(m.running_mean.numel() + m.running_var.numel() for m in model.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None)
    return sum(p.numel() for p in params) + stats, sum(p.numel() for p in params if p.requires_grad)


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Restores every submodule's train/eval flag on exit (``model.train(flag)`` would flatten them)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, flag in modes:
            m.training = flag


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Puts ``model`` in eval mode for the block and restores every submodule's own training flag."""
    with preserved_state(model):
        model.eval()
        yield model


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (or buffer); CPU for a parameter-free model."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def _devices(model: nn.Module) -> set[torch.device]:
    return {t.device for t in (*model.parameters(), *model.buffers())}


def trace(model: nn.Module, input_shape: Sequence[int]) -> list[LayerCall]:
    """Every module call of one forward pass of a zero image, in execution order (torchinfo's hooks).

    The pass runs on CPU in eval mode without gradients; the model's device and train/eval flags are put
    back afterwards, and the global RNG is untouched (the dummy is zeros, not random).

    Args:
        model: maps (N, C, H, W) floats to logits.
        input_shape: (C, H, W) of one image.

    Raises:
        CnnlabError: the model cannot run on an image of that shape.
    """
    shape = tuple(int(s) for s in input_shape)
    devices = _devices(model)
    # Single-device models run on CPU and move back; a model split over devices runs where it is.
    home = next(iter(devices)) if len(devices) == 1 else None
    run_on = torch.device("cpu") if len(devices) <= 1 else None
    dummy = torch.zeros((1, *shape), device=run_on or next(iter(model.parameters())).device)
    names = {id(m): n for n, m in model.named_modules()}
    try:
        with preserved_state(model):
            stats = torchinfo.summary(model, input_data=dummy, device=run_on, mode="eval", verbose=0)
    except RuntimeError as exc:
        cause = str(exc.__cause__ or exc).strip().splitlines() or ["unknown error"]
        raise CnnlabError(f"the model cannot run on a {shape} (C, H, W) input: {cause[0]}") from exc
    finally:
        if home is not None and home != torch.device("cpu"):
            model.to(home)
        # torchinfo keeps the last trace of every model class in a module-level cache (even when caching
        # is off); dropping it lets the model be garbage-collected.
        clear = getattr(torchinfo.torchinfo, "clear_cached_forward_pass", None)
        if clear is not None:
            clear()
    calls = []
    for info in stats.summary_list:
        name = names.get(id(info.module))
        if name is None or name == "":  # the root model is not a layer of itself
            continue
        size = info.output_size
        # Containers torchinfo inserts without calling them (ModuleList) have no output size; a tuple
        # output is reported by torchinfo as its first tensor's size.
        single = info.executed and bool(size) and all(isinstance(d, int) for d in size)
        calls.append(LayerCall(name, info.module, tuple(size) if single else None))
    return calls


def spec_types(model: nn.Module) -> dict[str, str]:
    """Keras layer types from a Keras-like model's ``spec`` (list of {name, type}), if it has one."""
    spec = getattr(model, "spec", None)
    if not isinstance(spec, list):
        return {}
    return {str(d["name"]): str(d["type"]) for d in spec if isinstance(d, dict) and "name" in d and "type" in d}


def _under(name: str, parents: set[str]) -> bool:
    parts = name.split(".")
    return any(".".join(parts[:i]) in parents for i in range(1, len(parts)))


def layer_rows(model: nn.Module, input_shape: Sequence[int], *, depth: int | None = None) -> list[LayerRow]:
    """The rows of a Keras-style summary, in execution order.

    Every layer (see :func:`is_layer`) is shown once with its dotted ``named_modules`` name: for a
    Keras-like sequential model that is each top-level layer; for a nested model the layers inside its
    blocks. Layers with parameters that the forward pass never calls come last as ``unused``.

    Args:
        model: maps (N, C, H, W) floats to logits.
        input_shape: (C, H, W) of one image.
        depth: collapse modules nested deeper than this into their ancestor at this depth (1 = top-level
            children only), like torchinfo's ``depth``; None shows every layer.

    Raises:
        CnnlabError: the model cannot run on an image of that shape, or ``depth`` < 1.
    """
    if depth is not None and depth < 1:
        raise CnnlabError(f"summary depth must be ≥ 1 (1 = top-level layers), got {depth}")
    calls = trace(model, input_shape)
    sizes: dict[str, list[tuple[int, ...] | None]] = {}
    modules: dict[str, nn.Module] = {}
    for call in calls:
        sizes.setdefault(call.name, []).append(call.output_size)
        modules[call.name] = call.module
    types = spec_types(model)
    rows: list[LayerRow] = []
    taken: set[str] = set()

    def add(name: str, module: nn.Module, out: list[tuple[int, ...] | None] | None) -> None:
        kind_type = types.get(name, type(module).__name__)
        if out is None:
            text, shape = "unused", None
        else:
            first = out[0]
            same = first is not None and all(o == first for o in out)
            text, shape = (keras_shape(first), first[1:]) if same else ("multiple", None)
        total, trainable = param_counts(module)
        rows.append(LayerRow(name, kind_type, text, total, trainable, layer_kind(module, kind_type), shape))
        taken.add(name)

    for name, out in sizes.items():
        level = name.count(".") + 1
        if _under(name, taken) or (depth is not None and level > depth):
            continue
        module = modules[name]
        if is_layer(module) or level == depth:
            add(name, module, out)
    for name, module in model.named_modules():
        level = name.count(".") + 1
        if (name and name not in sizes and (is_layer(module) or level == depth) and param_counts(module)[0]
                and not _under(name, taken) and (depth is None or level <= depth)):
            add(name, module, None)
    return rows


def summary_text(model: nn.Module, input_shape: Sequence[int], *, title: str | None = None,
                 depth: int | None = None) -> str:
    """The whole Keras-style summary of ``model`` with exact totals (what ``cnnlab summary`` prints)."""
    rows = layer_rows(model, input_shape, depth=depth)
    return keras_table(rows, title, params=param_counts(model))

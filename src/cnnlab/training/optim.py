"""Optimisers and per-step learning-rate schedules built from :class:`TrainConfig`."""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Iterable

import torch
from torch import nn

from cnnlab.config import TrainConfig
from cnnlab.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")


def _dynamo_loaded() -> bool:
    return sys.modules.get("torch._dynamo") is not None  # None: its import is blocked (as a test does)


def _dynamo_free(name: str) -> Callable:
    """``Optimizer.<name>`` calling torch's own function under its ``@torch._disable_dynamo`` wrapper until
    ``torch._dynamo`` is loaded, the wrapped one after."""
    wrapped = getattr(torch.optim.Optimizer, name)
    plain = wrapped.__wrapped__  # the wrapper is made with functools.wraps (torch/_compile.py)

    @functools.wraps(plain)
    def method(self, *args, **kwargs):
        return (wrapped if _dynamo_loaded() else plain)(self, *args, **kwargs)

    return method


@functools.cache
def _torch_steps(step: Callable) -> tuple[Callable, Callable]:
    """torch's ``step`` as ``Optimizer`` leaves it once an instance exists, split into (the step under its
    no-grad wrapper ``_use_grad_for_differentiable``, the step's own body).

    ``Optimizer._patch_step_function`` may have put its profiler/hook wrapper (marked ``hooked``) around the
    class's ``step``; our subclass gets its own, so that one is peeled off, or hooks would fire twice.
    """
    while getattr(step, "hooked", False):
        step = step.__wrapped__
    return step, step.__wrapped__


class _WithoutDynamo:
    """Mixin: a torch optimiser whose construction and steps do not import ``torch._dynamo``.

    Why: importing it costs 1.0-1.5 s on a 2-core CPU (``python -X importtime``), paid by every ``cnnlab
    train`` before its first step, and torch 2.13 imports it in every optimiser, whatever the flags:
    ``Optimizer.add_param_group`` (called by ``__init__``), ``zero_grad``, ``state_dict`` and
    ``load_state_dict`` are wrapped in ``torch._disable_dynamo`` (torch/_compile.py), which imports it on the
    first call, and ``step`` in ``_use_grad_for_differentiable`` (torch/optim/optimizer.py), which imports it
    on every call for ``torch._dynamo.graph_break()``.

    Both wrappers only matter while dynamo traces, and nothing can trace before ``torch._dynamo`` is imported.
    So until it is, these methods call torch's own functions under the wrappers (``__wrapped__``; the step
    under ``torch.no_grad()``, which is what ``_use_grad_for_differentiable`` sets for a non-differentiable
    optimiser): the same code, so the same state, state_dict and bits as torch's optimiser; step hooks,
    the profiler's ``Optimizer.step#Adam.step`` and schedulers are torch's own (the subclass is one). Once
    dynamo is loaded, or with ``differentiable=True``, every call goes to torch's wrapped method.
    """

    add_param_group = _dynamo_free("add_param_group")
    zero_grad = _dynamo_free("zero_grad")
    state_dict = _dynamo_free("state_dict")
    load_state_dict = _dynamo_free("load_state_dict")

    def step(self, closure=None):
        """torch's ``step`` (see the class); returns the closure's loss."""
        with_no_grad, body = _torch_steps(super().step.__func__)
        if self.defaults["differentiable"] or _dynamo_loaded():
            return with_no_grad(self, closure)
        with torch.no_grad():
            return body(self, closure)


class Adam(_WithoutDynamo, torch.optim.Adam):
    """``torch.optim.Adam`` without the ``torch._dynamo`` import (see ``_WithoutDynamo``)."""


class AdamW(_WithoutDynamo, torch.optim.AdamW):
    """``torch.optim.AdamW`` without the ``torch._dynamo`` import (see ``_WithoutDynamo``)."""


class SGD(_WithoutDynamo, torch.optim.SGD):
    """``torch.optim.SGD`` without the ``torch._dynamo`` import (see ``_WithoutDynamo``)."""


class RMSprop(_WithoutDynamo, torch.optim.RMSprop):
    """``torch.optim.RMSprop`` without the ``torch._dynamo`` import (see ``_WithoutDynamo``)."""


def _fused_ok(device: torch.device) -> dict:
    # Fused kernels exist for CPU and CUDA float tensors in torch ≥ 2.4; one kernel per step instead of a
    # Python loop over parameters.
    return {"fused": True} if device.type in ("cpu", "cuda") else {}


@OPTIMIZERS.register("adam")
def _adam(groups, cfg: TrainConfig, device):
    # eps 1e-7 is Keras's default (PyTorch's is 1e-8); keeps per-epoch results comparable with the tutorials.
    return Adam(groups, lr=cfg.peak_lr, eps=1e-7, weight_decay=cfg.weight_decay, **_fused_ok(device))


@OPTIMIZERS.register("adamw")
def _adamw(groups, cfg: TrainConfig, device):
    return AdamW(groups, lr=cfg.peak_lr, eps=1e-7, weight_decay=cfg.weight_decay, **_fused_ok(device))


@OPTIMIZERS.register("sgd")
def _sgd(groups, cfg: TrainConfig, device):
    return SGD(groups, lr=cfg.peak_lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
               weight_decay=cfg.weight_decay, **_fused_ok(device))


@OPTIMIZERS.register("rmsprop")
def _rmsprop(groups, cfg: TrainConfig, device):
    # Keras RMSprop: rho 0.9, eps 1e-7.
    return RMSprop(groups, lr=cfg.peak_lr, alpha=0.9, eps=1e-7, momentum=cfg.momentum if cfg.momentum else 0.0,
                   weight_decay=cfg.weight_decay)


def make_param_groups(model: nn.Module, cfg: TrainConfig, *, head: set[str] | None = None, backbone_lr: float = 1.0) -> list[dict]:
    """Parameter groups: one for everything, or head / backbone when the backbone gets its own rate.

    With a head, every parameter is included (frozen ones simply get no gradient until unfrozen). Each
    group carries ``lr_scale`` so schedules scale every group's rate together.
    """
    if not head:
        params = [p for p in model.parameters() if p.requires_grad]
        return [{"params": params, "lr": cfg.peak_lr, "lr_scale": 1.0, "name": "all"}]
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if n in head], "lr": cfg.peak_lr, "lr_scale": 1.0, "name": "head"}]
    body = [p for n, p in named if n not in head]
    if body:
        groups.append({"params": body, "lr": cfg.peak_lr * backbone_lr, "lr_scale": backbone_lr, "name": "backbone"})
    return groups


def make_optimizer(groups: list[dict], cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """The configured optimiser over ``groups``."""
    return OPTIMIZERS.get(cfg.optimizer)(groups, cfg, device)


def lr_factor(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based) of ``total``.

    constant: 1 after an optional linear warm-up. cosine: warm-up then cosine decay to 0.
    onecycle: linear warm-up over the first 25% (or ``warmup_epochs``) from 1/25 of the peak, then
    cosine annealing to peak/1e4 — the shape of PyTorch's OneCycleLR, computed statelessly so a resumed run
    continues exactly where it stopped.
    """
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "onecycle":
        warm = warm or max(1, int(0.25 * total))
        if step < warm:
            return 1 / 25 + (1 - 1 / 25) * step / warm
        t = (step - warm) / max(1, total - warm)
        return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    if warm and step < warm:
        return (step + 1) / warm
    if cfg.schedule == "cosine":
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    """Applies ``base_lr * factor`` (times each group's ``lr_scale``); returns the head/main rate."""
    for g in optimizer.param_groups:
        lr = base_lr * factor * g.get("lr_scale", 1.0)
        if isinstance(g["lr"], torch.Tensor):
            g["lr"].fill_(lr)
        else:
            g["lr"] = lr
    return base_lr * factor


def l2_penalty(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """Sum of squares of the given kernels (Keras's ``l2`` regulariser without its factor)."""
    params = list(params)
    if not params:
        return torch.zeros(())
    return torch.stack([p.float().pow(2).sum() for p in params]).sum()


def l2_targets(model: nn.Module) -> list[torch.Tensor]:
    """Conv and dense kernels (not biases, not norm scales) — what Keras's kernel_regularizer covers."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.requires_grad]

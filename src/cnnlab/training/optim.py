"""Optimisers and per-step learning-rate schedules built from :class:`TrainConfig`."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from cnnlab.config import TrainConfig
from cnnlab.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")


def _fused_ok(device: torch.device) -> dict:
    # Fused kernels exist for CPU and CUDA float tensors in torch ≥ 2.4; one kernel per step instead of a
    # Python loop over parameters.
    return {"fused": True} if device.type in ("cpu", "cuda") else {}


@OPTIMIZERS.register("adam")
def _adam(groups, cfg: TrainConfig, device):
    # eps 1e-7 is Keras's default (PyTorch's is 1e-8); keeps per-epoch results comparable with the tutorials.
    return torch.optim.Adam(groups, lr=cfg.peak_lr, eps=1e-7, weight_decay=cfg.weight_decay, **_fused_ok(device))


@OPTIMIZERS.register("adamw")
def _adamw(groups, cfg: TrainConfig, device):
    return torch.optim.AdamW(groups, lr=cfg.peak_lr, eps=1e-7, weight_decay=cfg.weight_decay, **_fused_ok(device))


@OPTIMIZERS.register("sgd")
def _sgd(groups, cfg: TrainConfig, device):
    return torch.optim.SGD(groups, lr=cfg.peak_lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           weight_decay=cfg.weight_decay, **_fused_ok(device))


@OPTIMIZERS.register("rmsprop")
def _rmsprop(groups, cfg: TrainConfig, device):
    # Keras RMSprop: rho 0.9, eps 1e-7.
    return torch.optim.RMSprop(groups, lr=cfg.peak_lr, alpha=0.9, eps=1e-7, momentum=cfg.momentum if cfg.momentum else 0.0,
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

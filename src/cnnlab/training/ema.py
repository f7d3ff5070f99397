"""An exponential moving average of a model's weights: the weights a run evaluates and keeps (``train.ema``).

Polyak-style averaging of the iterates (Polyak & Juditsky 1992) as TensorFlow's
``tf.train.ExponentialMovingAverage`` and timm's ``ModelEmaV3`` apply it: after optimiser step ``t``
(counted from 1),

    ema_t = d_t * ema_{t-1} + (1 - d_t) * w_t,    d_t = min(decay, (1 + t) / (10 + t))

The warm-up of ``d_t`` (TensorFlow's ``num_updates``) lets the average follow the fast early steps of a short
run instead of remembering the random initial weights for ~1/(1-decay) steps. Floating-point buffers
(BatchNorm's running statistics) are averaged like the weights, integer ones (``num_batches_tracked``) copied.

Why not ``torch.optim.swa_utils.AveragedModel``: its ``update_parameters`` reads its step counter from a
tensor on every step (a host sync on CUDA), and it has no warm-up; the update itself is the same
``torch._foreach_lerp_`` its ``get_ema_multi_avg_fn`` uses.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightEMA:
    """The moving average of ``model``'s weights, held in a copy of the model.

    Args:
        model: the network being trained (unwrapped from DDP); copied at construction, so the average starts at
            its current weights.
        decay: the largest per-step decay ``d`` (0 < d < 1; e.g. 0.999 averages over about 1,000 steps).

    Attributes:
        module: the copy holding the averaged weights (eval mode, no gradients): evaluate and save this.
        updates: optimiser steps averaged so far.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    def _pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple]]:
        mine = self.module.state_dict(keep_vars=True)
        avg, cur, copies = [], [], []
        for name, value in model.state_dict(keep_vars=True).items():
            target = mine[name]
            if value.is_floating_point():
                avg.append(target.data)
                cur.append(value.data)
            else:
                copies.append((target.data, value.data))
        return avg, cur, copies

    def factor(self, step: int) -> float:
        """``d_t`` of step ``t`` (1-based): ``min(decay, (1 + t) / (10 + t))``."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Folds ``model``'s current weights into the average (call after each optimiser step)."""
        self.updates += 1
        avg, cur, copies = self._pairs(model)
        if avg:
            torch._foreach_lerp_(avg, cur, 1.0 - self.factor(self.updates))
        for target, value in copies:
            target.copy_(value)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Writes the averaged weights and buffers into ``model`` (as Keras's ``finalize_variable_values``)."""
        avg, cur, copies = self._pairs(model)
        torch._foreach_copy_(cur, avg)
        for target, value in copies:
            value.copy_(target)

    def state_dict(self) -> dict[str, Any]:
        """The step count (the averaged weights travel as the checkpoint's model weights)."""
        return {"updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])

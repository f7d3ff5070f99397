"""One epoch of training and one evaluation pass (torchvision's ``train_one_epoch`` / ``evaluate`` shape).

The hot path is a tight loop over slices of a resident uint8 tensor: each batch is cast, normalised and
(optionally) augmented on the training device; metrics accumulate in tensors and are read once per epoch.
An :class:`EpochProgress` carries where the epoch is (batches done, running sums) so that a checkpoint can be
taken part-way through and an epoch resumed from that batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.data.tensors import ImageData, Normalizer, batches
from cnnlab.native.heap import keep_freed_memory
from cnnlab.training.engine import Engine
from cnnlab.training.metrics import Evaluation, confusion_matrix
from cnnlab.training.optim import l2_penalty, l2_targets


@dataclass
class EpochProgress:
    """How far an epoch has got: batches done and the running sums of its loss, correct count and images.

    The sums stay on the training device (no host sync per step); :meth:`state_dict` reads them when a
    checkpoint is written.
    """

    step: int
    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    seconds: float = 0.0  # of training in this epoch so far (the trainer keeps it)

    @classmethod
    def start(cls, device: torch.device) -> EpochProgress:
        """A fresh epoch on ``device``."""
        return cls(0, torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device))

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "loss_sum": self.loss_sum.detach().cpu(), "correct": self.correct.cpu(),
                "seen": self.seen, "seconds": self.seconds}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> EpochProgress:
        return cls(int(state["step"]), state["loss_sum"].to(device), state["correct"].to(device), int(state["seen"]),
                   float(state.get("seconds", 0.0)))


def _prepare(x: torch.Tensor, normalizer: Normalizer, engine: Engine, augment: Callable | None,
             gen: torch.Generator | None) -> torch.Tensor:
    x = x.to(engine.device, non_blocking=True)
    if augment is None:
        return normalizer(x, engine.channels_last)
    x = augment(x.float().div_(255), gen)  # augmentation works on [0, 1] images
    return normalizer.from_unit(x, engine.channels_last)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: ImageData,
    *,
    batch_size: int,
    normalizer: Normalizer,
    engine: Engine,
    generator: torch.Generator,
    label_smoothing: float = 0.0,
    l2: float = 0.0,
    augment: Callable | None = None,
    order: torch.Tensor | None = None,
    progress: EpochProgress | None = None,
    on_batch_start: Callable[[int], None] | None = None,
    on_batch_end: Callable[[int, torch.Tensor], None] | None = None,
    set_train_mode: bool = True,
) -> tuple[float, float]:
    """One pass over ``data``; returns (mean loss, accuracy) as Keras reports them.

    Args:
        order: the positions of ``data`` to visit (default: a permutation drawn from ``generator``).
        generator: the augmentation's random stream (and the order's, when none is given).
        progress: where the epoch is (resume part-way: its ``step`` batches are skipped, its sums continue);
            updated in place. Default: a fresh epoch.
        on_batch_start: ``(batch index)`` before each optimiser step.
        on_batch_end: ``(batch index, loss)`` after each optimiser step (schedules, progress, checkpoints).
        set_train_mode: False leaves the modules' train/eval modes as the caller set them (the trainer does,
            so that a callback can keep frozen BatchNorm layers in eval mode).
    """
    if set_train_mode:
        model.train()
    if order is None:
        order = torch.randperm(len(data), generator=generator)
    progress = progress or EpochProgress.start(engine.device)
    kernels = l2_targets(model) if l2 else []
    # A last batch of one image would break BatchNorm; drop it (at most one image per epoch).
    drop_last = len(order) % batch_size == 1
    for i, (xb, yb) in enumerate(batches(data, batch_size, order=order, start=progress.step, drop_last=drop_last),
                                 start=progress.step):
        if on_batch_start is not None:
            on_batch_start(i)
        x = _prepare(xb, normalizer, engine, augment, generator)
        y = yb.to(engine.device, non_blocking=True)
        with engine.autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        if kernels:
            loss = loss + l2 * l2_penalty(kernels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = y.shape[0]
        progress.loss_sum += loss.detach() * n
        progress.correct += (logits.detach().argmax(1) == y).sum()
        progress.seen += n
        progress.step = i + 1
        if on_batch_end is not None:
            on_batch_end(i, loss.detach())
    seen = max(progress.seen, 1)
    return float(progress.loss_sum) / seen, int(progress.correct) / seen


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    data: ImageData,
    *,
    normalizer: Normalizer,
    engine: Engine,
    batch_size: int = 1000,
    tta: str | None = None,
    keep_probs: bool = False,
) -> Evaluation:
    """Loss, accuracy and confusion matrix of ``model`` on ``data`` (eval mode, no dropout)."""
    loss_sum, conf, probs = evaluate_sums(model, data, normalizer=normalizer, engine=engine, batch_size=batch_size,
                                          tta=tta, keep_probs=keep_probs)
    n = max(len(data), 1)
    return Evaluation(float(loss_sum) / n, float(conf.diag().sum()) / n, conf, data.classes, probs)


@torch.inference_mode()
def evaluate_sums(
    model: nn.Module,
    data: ImageData,
    *,
    normalizer: Normalizer,
    engine: Engine,
    batch_size: int = 1000,
    tta: str | None = None,
    keep_probs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The sums behind :func:`evaluate`: (cross-entropy summed over the images as a float64 scalar on the
    engine's device, (classes, classes) int64 confusion matrix, (N, classes) probabilities or None).

    Sums, not means, so that shards of a set add up to the whole set's result (distributed evaluation); the
    loss accumulates in float64 so that adding the per-batch float32 sums in another grouping changes nothing
    in practice.
    """
    was = model.training
    model.eval()
    keep_freed_memory()  # each batch's activations are freed and reallocated: keep them mapped (native/heap.py)
    loss_sum = torch.zeros((), dtype=torch.float64, device=engine.device)
    preds, probs = [], []
    try:
        for xb, yb in batches(data, batch_size):
            x = normalizer(xb.to(engine.device, non_blocking=True), engine.channels_last)
            y = yb.to(engine.device, non_blocking=True)
            with engine.autocast():
                logits = model(x).float()
                if tta == "hflip":  # average the probabilities of the image and its mirror
                    p = (logits.softmax(1) + model(x.flip(3)).float().softmax(1)) / 2
                    logits = p.log()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            preds.append(logits.argmax(1).cpu())
            if keep_probs:
                probs.append(logits.softmax(1).cpu())
    finally:
        model.train(was)
    pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    conf = confusion_matrix(data.labels, pred, data.num_classes)
    return loss_sum, conf, torch.cat(probs) if keep_probs and probs else None

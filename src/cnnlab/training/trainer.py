"""The fit loop: ``train_one_epoch`` / ``evaluate`` (torchvision's shape) and a :class:`Trainer` around them.

The hot path is a tight loop over slices of a resident uint8 tensor: each batch is cast, normalised and
(optionally) augmented on the training device; metrics accumulate in tensors and are read once per epoch.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.config import TrainConfig
from cnnlab.data.tensors import ImageData, Normalizer, batches
from cnnlab.errors import CnnlabError
from cnnlab.training.callbacks import HOOKS, Callback, StopTraining, overrides
from cnnlab.training.checkpoint import load_checkpoint, save_checkpoint
from cnnlab.training.engine import Engine
from cnnlab.training.metrics import Evaluation, confusion_matrix
from cnnlab.training.optim import l2_penalty, l2_targets, lr_factor, make_optimizer, make_param_groups, set_lr


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
    on_batch_start: Callable[[int], None] | None = None,
    on_batch_end: Callable[[int, torch.Tensor], None] | None = None,
    set_train_mode: bool = True,
) -> tuple[float, float]:
    """One pass over ``data`` in a seeded random order; returns (mean loss, accuracy) as Keras reports them.

    ``on_batch_start(batch_index)`` runs before and ``on_batch_end(batch_index, loss)`` after each
    optimiser step (schedules, progress). ``set_train_mode`` False leaves the modules' train/eval modes as the
    caller set them (the trainer does, so that a callback can keep frozen BatchNorm layers in eval mode).
    """
    if set_train_mode:
        model.train()
    kernels = l2_targets(model) if l2 else []
    loss_sum = torch.zeros((), device=engine.device)
    correct = torch.zeros((), dtype=torch.long, device=engine.device)
    seen = 0
    # A last batch of one image would break BatchNorm; drop it (at most one image per epoch).
    drop_last = len(data) % batch_size == 1
    for i, (xb, yb) in enumerate(batches(data, batch_size, shuffle=True, generator=generator, drop_last=drop_last)):
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
        loss_sum += loss.detach() * n
        correct += (logits.detach().argmax(1) == y).sum()
        seen += n
        if on_batch_end is not None:
            on_batch_end(i, loss.detach())
    return float(loss_sum) / max(seen, 1), int(correct) / max(seen, 1)


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
    was = model.training
    model.eval()
    loss_sum = torch.zeros((), device=engine.device)
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
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            preds.append(logits.argmax(1).cpu())
            if keep_probs:
                probs.append(logits.softmax(1).cpu())
    finally:
        model.train(was)
    pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    n = max(len(data), 1)
    conf = confusion_matrix(data.labels, pred, data.num_classes)
    return Evaluation(float(loss_sum) / n, float(conf.diag().sum()) / n, conf, data.classes,
                      torch.cat(probs) if keep_probs and probs else None)


class Trainer:
    """Runs epochs of ``train_one_epoch`` + ``evaluate`` with callbacks, checkpoints and resume.

    Args:
        model: the network; moved to the engine's device (and channels-last when the engine says so).
        cfg: the training section of the config.
        train_data: images to train on (uint8, resident or memory-mapped).
        val_data: images to validate on after each epoch, or None.
        normalizer: uint8 → model input.
        engine: device, precision and memory format.
        augment: batched augmentation of [0, 1] images, or None.
        callbacks: sorted by their ``order`` (stable); their ``state_key`` values must be unique.
        checkpoint_dir: where ``last``/``best`` checkpoints go (None: no checkpoints).
        param_groups: the optimiser's parameter groups (default: every trainable parameter at
            ``cfg.lr``); transfer learning passes head and backbone groups with their ``lr_scale``.

    Attributes:
        epoch: completed epochs.
        history: one metrics dict per completed epoch.
        stop_reasons: why training was asked to stop (callbacks add to it through :meth:`request_stop`).
        failure: why training failed (a :class:`StopTraining` with ``failed``), or None.
        last_eval: validation of the weights as they are after the last epoch.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        *,
        train_data: ImageData,
        val_data: ImageData | None,
        normalizer: Normalizer,
        engine: Engine,
        augment: Callable | None = None,
        callbacks: Sequence[Callback] = (),
        checkpoint_dir: Path | None = None,
        param_groups: list[dict] | None = None,
    ) -> None:
        self.cfg, self.engine, self.normalizer, self.augment = cfg, engine, normalizer, augment
        self.model = model.to(engine.device)
        if engine.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.train_data = train_data.to(engine.device)
        self.val_data = val_data.to(engine.device) if val_data is not None else None
        self.callbacks = sorted(callbacks, key=lambda cb: cb.order)
        keys = [cb.state_key for cb in self.callbacks]
        if dup := next((k for i, k in enumerate(keys) if k in keys[:i]), None):
            raise ValueError(f"two callbacks share the state_key {dup!r}; give one of them another state_key")
        self._hooks = {h: [cb for cb in self.callbacks if overrides(cb, h)] for h in HOOKS}
        self.checkpoint_dir = checkpoint_dir
        groups = param_groups or make_param_groups(self.model, cfg)
        self.optimizer = make_optimizer(groups, cfg, engine.device)
        self.generator = torch.Generator().manual_seed(cfg.seed)  # data order (and augmentation)
        self.epochs = cfg.epochs
        n = len(train_data)
        self.steps_per_epoch = n // cfg.batch_size + (n % cfg.batch_size > 1)
        if self.steps_per_epoch == 0:  # a last batch of one image is dropped (BatchNorm): no step would run
            raise CnnlabError(f"the training set has {n} image{'s' if n != 1 else ''}: no optimiser step can run; "
                              "give it at least 2 images (a smaller `data.val_split`, more data)")
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.stop_reasons: list[str] = []
        self.failure: str | None = None
        self.lr = cfg.peak_lr
        self.last_eval: Evaluation | None = None

    # -------------------------------------------------------------------------------------- stopping

    def request_stop(self, reason: str) -> None:
        """Asks to stop after the current epoch (every callback still sees it); requests only accumulate."""
        self.stop_reasons.append(reason)

    @property
    def should_stop(self) -> bool:
        """Whether any callback asked to stop (OR of every request)."""
        return bool(self.stop_reasons)

    @property
    def stop_reason(self) -> str | None:
        """The first stop request's reason, or None."""
        return self.stop_reasons[0] if self.stop_reasons else None

    # -------------------------------------------------------------------------------------- the loop

    def dispatch(self, hook: str, *args: Any) -> None:
        """Calls ``hook`` on every callback that implements it, in ``order``."""
        for cb in self._hooks[hook]:
            getattr(cb, hook)(self, *args)

    def fit(self) -> list[dict[str, Any]]:
        """Trains from ``self.epoch`` to ``cfg.epochs`` (or a stop); returns the history."""
        self.dispatch("on_fit_start")
        try:
            while self.epoch < self.epochs and not self.should_stop:
                self._epoch()
        except StopTraining as stop:
            if not stop.failed:
                self.stop_reasons.append(stop.reason)
            else:
                self.failure = stop.reason
        finally:
            self.dispatch("on_fit_end")
        return self.history

    def _epoch(self) -> None:
        self.model.train()
        self.dispatch("on_train_epoch_start")
        start = time.perf_counter()
        total = self.epochs * self.steps_per_epoch
        base = self.epoch * self.steps_per_epoch
        scheduled = self.cfg.schedule != "constant" or self.cfg.warmup_epochs > 0
        if scheduled:  # the rate of this epoch's first step (after a resume, on the possibly re-planned schedule)
            self.lr = set_lr(self.optimizer, self.cfg.peak_lr, lr_factor(self.cfg, base, total, self.steps_per_epoch))
        lr_used = self.lr

        def batch_end(i: int, loss: torch.Tensor) -> None:
            if scheduled:  # per-step schedule: set the rate for the next step
                step = base + i + 1
                self.lr = set_lr(self.optimizer, self.cfg.peak_lr, lr_factor(self.cfg, step, total, self.steps_per_epoch))
            self.dispatch("on_train_batch_end", i, loss)

        starts = self._hooks["on_train_batch_start"]
        loss, acc = train_one_epoch(
            self.model, self.optimizer, self.train_data, batch_size=self.cfg.batch_size, normalizer=self.normalizer,
            engine=self.engine, generator=self.generator, label_smoothing=self.cfg.label_smoothing, l2=self.cfg.l2,
            augment=self.augment, on_batch_start=(lambda i: self.dispatch("on_train_batch_start", i)) if starts else None,
            on_batch_end=batch_end, set_train_mode=False)
        logs: dict[str, Any] = {"epoch": self.epoch + 1, "train_loss": loss, "train_acc": acc,
                                "val_loss": None, "val_acc": None}
        self.last_eval = None
        if self.val_data is not None and math.isfinite(loss):
            self.last_eval = evaluate(self.model, self.val_data, normalizer=self.normalizer, engine=self.engine,
                                      batch_size=self.cfg.eval_batch_size)
            logs.update(val_loss=self.last_eval.loss, val_acc=self.last_eval.acc)
        logs.update(seconds=time.perf_counter() - start, lr=lr_used)
        self.epoch += 1
        self.history.append(logs)
        try:
            self.dispatch("on_train_epoch_end", logs)
        except StopTraining as stop:
            if stop.failed:  # the failed epoch is not part of the run's record
                self.history.pop()
                self.epoch -= 1
            raise

    # ------------------------------------------------------------------------------ state and resume

    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights needed to continue exactly: optimiser, epoch, RNGs, callbacks, history."""
        return {
            "epoch": self.epoch,
            "history": self.history,
            "lr": self.lr,
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": _py_state(),
            "numpy_rng": _np_state(),
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned (the model's weights are restored separately)."""
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.lr = float(state["lr"])
        self.optimizer.load_state_dict(state["optimizer"])
        _restore_layouts(self.optimizer)
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(_py_restore(state["python_rng"]))
        np.random.set_state(_np_restore(state["numpy_rng"]))
        saved = state.get("callbacks", {})
        for cb in self.callbacks:
            if cb.state_key in saved:
                cb.load_state_dict(saved[cb.state_key])

    def save_checkpoint(self, kind: str) -> Path | None:
        """Writes ``checkpoints/<kind>`` (last / best) when the trainer has a checkpoint folder."""
        if self.checkpoint_dir is None:
            return None
        return save_checkpoint(self.checkpoint_dir / kind, self.model, self.state_dict())

    def resume(self, kind: str = "last") -> None:
        """Restores model and training state from ``checkpoints/<kind>``."""
        if self.checkpoint_dir is None:
            raise CnnlabError("this trainer has no checkpoint folder to resume from")
        self.load_state_dict(load_checkpoint(self.checkpoint_dir / kind, self.model))


def _restore_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Gives every per-parameter state tensor (Adam's moments, SGD's momentum) its parameter's memory layout.

    Checkpoints store tensors contiguous (safetensors has no strides), so the moments of a channels-last
    conv weight come back NCHW; a fused optimiser walks param, grad and state as flat memory and would pair
    the wrong elements. ``empty_like`` copies the parameter's strides, ``copy_`` the values.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    optimizer.state[p][key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def _py_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _py_restore(s: list) -> tuple:
    return (s[0], tuple(s[1]), s[2])


def _np_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]


def _np_restore(s: list) -> tuple:
    return (s[0], np.asarray(s[1], dtype=np.uint32), s[2], s[3], s[4])

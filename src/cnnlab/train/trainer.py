"""The fit loop: ``train_one_epoch`` / ``evaluate`` (torchvision's shape) and a :class:`Trainer` around them.

The hot path is a tight loop over slices of a resident uint8 tensor: each batch is cast, normalised and
(optionally) augmented on the training device; metrics accumulate in tensors and are read once per epoch.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.config import TrainConfig
from cnnlab.data.tensors import ImageData, Normalizer, batches
from cnnlab.errors import CnnlabError
from cnnlab.train.callbacks import Callback
from cnnlab.train.checkpoint import load_checkpoint, save_checkpoint
from cnnlab.train.metrics import Evaluation, confusion_matrix
from cnnlab.train.optim import l2_penalty, l2_targets, lr_factor, make_optimizer, param_groups, set_lr


@dataclass(frozen=True)
class Engine:
    """Where and how tensors are computed: device, autocast dtype, memory format."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool

    def autocast(self):
        """bf16 autocast on the engine's device, or nothing in fp32."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @property
    def precision(self) -> str:
        return "bf16" if self.amp_dtype == torch.bfloat16 else "fp32"


def cpu_has_bf16() -> bool:
    """True when oneDNN has native bf16 kernels here (AVX512-BF16 or AMX); emulated bf16 would be slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def make_engine(cfg: TrainConfig) -> Engine:
    """Resolves ``device``, ``precision`` and ``threads`` from the config for this machine."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise CnnlabError("train.device=cuda but no CUDA device is available; use device: auto or cpu")
    device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or available_cores())
    bf16_ok = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()
    if cfg.precision == "bf16" and not bf16_ok:
        raise CnnlabError("train.precision=bf16 but this device has no native bf16; use precision: auto or fp32")
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and bf16_ok)
    return Engine(device, torch.bfloat16 if use_bf16 else None, cfg.channels_last)


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (CPU and CUDA) so a CPU run is repeatable."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> tuple[float, float]:
    """One pass over ``data`` in a seeded random order; returns (mean loss, accuracy) as Keras reports them.

    ``on_step(batch_index, loss)`` runs after each optimiser step (schedules, progress).
    """
    model.train()
    kernels = l2_targets(model) if l2 else []
    loss_sum = torch.zeros((), device=engine.device)
    correct = torch.zeros((), dtype=torch.long, device=engine.device)
    seen = 0
    # A last batch of one image would break BatchNorm; drop it (at most one image per epoch).
    drop_last = len(data) % batch_size == 1
    for i, (xb, yb) in enumerate(batches(data, batch_size, shuffle=True, generator=generator, drop_last=drop_last)):
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
        if on_step is not None:
            on_step(i, loss.detach())
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

    Attributes:
        epoch: completed epochs.
        history: one metrics dict per completed epoch.
        should_stop: set by callbacks to end training after the current epoch.
        stop_reason / failed: why training stopped early / failed (for the final message).
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
        head: set[str] | None = None,
        backbone_lr: float = 1.0,
    ) -> None:
        self.cfg, self.engine, self.normalizer, self.augment = cfg, engine, normalizer, augment
        self.model = model.to(engine.device)
        if engine.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.train_data = train_data.to(engine.device)
        self.val_data = val_data.to(engine.device) if val_data is not None else None
        self.callbacks = list(callbacks)
        self.checkpoint_dir = checkpoint_dir
        self.optimizer = make_optimizer(param_groups(self.model, cfg, head=head, backbone_lr=backbone_lr), cfg, engine.device)
        self.generator = torch.Generator().manual_seed(cfg.seed)  # data order (and augmentation)
        self.epochs = cfg.epochs
        n = len(train_data)
        self.steps_per_epoch = n // cfg.batch_size + (n % cfg.batch_size > 1)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.should_stop = False
        self.stop_reason: str | None = None
        self.failed: str | None = None
        self.lr = cfg.lr
        self.last_eval: Evaluation | None = None  # validation of the weights as they are after the last epoch

    # -------------------------------------------------------------------------------------- the loop

    def fit(self) -> list[dict[str, Any]]:
        """Trains from ``self.epoch`` to ``cfg.epochs`` (or a stop); returns the history."""
        self._call("on_fit_start")
        total = self.epochs * self.steps_per_epoch
        schedule = self.cfg.schedule != "constant" or self.cfg.warmup_epochs > 0
        while self.epoch < self.epochs and not self.should_stop:
            self._call("on_train_epoch_start")
            start = time.perf_counter()
            base = self.epoch * self.steps_per_epoch
            on_step = partial(self._on_step, base, total, schedule)
            if schedule and self.epoch == 0:
                self.lr = set_lr(self.optimizer, self.cfg.lr, lr_factor(self.cfg, 0, total, self.steps_per_epoch))
            lr_used = self.lr
            loss, acc = train_one_epoch(
                self.model, self.optimizer, self.train_data, batch_size=self.cfg.batch_size, normalizer=self.normalizer,
                engine=self.engine, generator=self.generator, label_smoothing=self.cfg.label_smoothing, l2=self.cfg.l2,
                augment=self.augment, on_step=on_step)
            metrics: dict[str, Any] = {"epoch": self.epoch + 1, "train_loss": loss, "train_acc": acc,
                                       "val_loss": None, "val_acc": None}
            if self.val_data is not None and math.isfinite(loss):
                ev = evaluate(self.model, self.val_data, normalizer=self.normalizer, engine=self.engine,
                              batch_size=self.cfg.eval_batch_size)
                metrics.update(val_loss=ev.loss, val_acc=ev.acc)
                self.last_eval = ev
            else:
                self.last_eval = None
            metrics.update(seconds=time.perf_counter() - start, lr=lr_used)
            self.epoch += 1
            self.history.append(metrics)
            for cb in self.callbacks:
                cb.on_epoch_end(self, metrics)
            if self.failed:
                self.history.pop()  # the failed epoch is not part of the run's record
                break
        self._call("on_fit_end")
        return self.history

    def _on_step(self, base: int, total: int, schedule: bool, i: int, loss: torch.Tensor) -> None:
        if schedule:  # per-step schedule: set the rate for the next step
            self.lr = set_lr(self.optimizer, self.cfg.lr, lr_factor(self.cfg, base + i + 1, total, self.steps_per_epoch))
        for cb in self.callbacks:
            cb.on_train_batch_end(self, i, loss)

    def _call(self, hook: str) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self)

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
            "callbacks": {type(cb).__name__: cb.state_dict() for cb in self.callbacks},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.lr = float(state["lr"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(_py_restore(state["python_rng"]))
        np.random.set_state(_np_restore(state["numpy_rng"]))
        saved = state.get("callbacks", {})
        for cb in self.callbacks:
            if type(cb).__name__ in saved:
                cb.load_state_dict(saved[type(cb).__name__])

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

"""Train a new head on cached features of a frozen backbone (the fastai / Keras "extract features once" recipe).

With ``model.freeze: backbone`` for the whole run and no augmentation, every epoch feeds the same images through
the same frozen backbone, so its output never changes: computing it once and training the head on the stored
tensor gives the same result in a fraction of the time (the backbone is ~all of the FLOPs). Users of fastai and
of the Keras transfer-learning guide do this by hand; here ``train.cache_features: auto`` does it for them.

The equivalence is kept exactly where it can be:

* The cut is at the input of the head (``ModelMeta.head``), moved back over the parameter-free layers before it
  in the same ``nn.Sequential`` up to the earliest dropout (MobileNetV2's ``classifier.0``, a tutorial model's
  ``Dropout`` before its last ``Dense``), so dropout still draws a fresh mask every step: the *tail* that trains
  is the head with that dropout, the *backbone* is everything before it.
* Training features are taken with the model in the modes the trainer sets for the epoch (train mode, frozen
  BatchNorm in eval), under the same autocast and memory format; validation features in eval mode, in the
  batches :func:`~cnnlab.training.epoch.evaluate` uses. They are stored in the dtype the head receives them in
  (bf16 under bf16 autocast, fp32 in fp32), so the head sees the very tensors it would otherwise see.
* It refuses (``auto``: falls back with one logged reason; ``on``: raises) when the backbone would not be
  deterministic or not frozen: dropout in the backbone, trainable layers outside the tail, or a model whose
  output is not the tail's output (checked on one batch); and when the features would need more than
  ``limit_bytes`` (half the available memory by default).

The head's dropout draws from the global torch stream in the same order as without the cache (the backbone draws
nothing), so with per-image results independent of the batch they are computed in, the trained weights match.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.data.tensors import ImageData, Normalizer, batches
from cnnlab.errors import CnnlabError
from cnnlab.training.engine import Engine

CACHE_MODES = ("auto", "on", "off")
KEY = "`train.cache_features`"
MEMORY_FRACTION = 0.5  # of the memory available when the cache is built: room for the model, optimiser and data


class FeatureSet:
    """Cached features with their labels, shaped like :class:`~cnnlab.data.tensors.ImageData` for
    :func:`~cnnlab.data.tensors.batches`, ``train_one_epoch`` and ``evaluate`` (``images`` are the features).

    Args:
        features: (N, ...) float tensor (bf16 or fp32), one row per image.
        labels: (N,) int64.
        classes: class names.
        name: where the images came from.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...], name: str) -> None:
        self.images, self.labels, self.classes, self.name = features, labels, classes, name

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size()


class Identity(Normalizer):
    """The normaliser of cached features: they are already the head's input, so nothing is done to them."""

    def __call__(self, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        return x


IDENTITY = Identity()


class _Captured(Exception):  # noqa: N818 - control flow: the backbone's output reached the cut
    pass


class _Tap(nn.Module):
    """Stands in for the first module of the tail while features are taken: keeps its input and either stops the
    forward pass there (``stop``) or lets it go on (to check the model's output against the tail's)."""

    def __init__(self, inner: nn.Module, stop: bool) -> None:
        super().__init__()
        self.inner, self.stop = inner, stop
        self.seen: torch.Tensor | None = None
        self.out: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        if self.stop:
            raise _Captured
        return self.inner(x)


@dataclass(frozen=True)
class Cut:
    """Where the model splits: ``parent.<name>`` is the tail's first module; ``tail`` runs from there to the output."""

    parent: nn.Module
    name: str
    tail: nn.Module
    names: tuple[str, ...]  # the tail's modules, dotted names in the model

    def swap(self, module: nn.Module) -> nn.Module:
        """Puts ``module`` in the cut's place; returns what was there (a module swap, not a hook, so that models
        with a hook-free fast path, such as :class:`~cnnlab.models.spec.SpecModel`, take the path they train on)."""
        old = self.parent._modules[self.name]
        self.parent._modules[self.name] = module
        return old


def find_cut(model: nn.Module, head: str) -> Cut:
    """The cut before ``head`` (dotted module name), moved back to the earliest dropout of the parameter-free
    layers just before it when they share an ``nn.Sequential`` parent (module docstring)."""
    parent_name, _, leaf = head.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not isinstance(parent, nn.Sequential):
        return Cut(parent, leaf, parent._modules[leaf], (head,))
    names = list(parent._modules)
    start = i = names.index(leaf)
    while i > 0 and not any(True for _ in parent._modules[names[i - 1]].parameters()):
        i -= 1
        if isinstance(parent._modules[names[i]], (nn.modules.dropout._DropoutNd, nn.AlphaDropout)):
            start = i
    # a plain Sequential of the tail's modules (slicing a subclass would call its own constructor)
    tail = nn.Sequential(OrderedDict((n, parent._modules[n]) for n in names[start:]))
    dotted = tuple(f"{parent_name}.{n}" if parent_name else n for n in names[start:])
    return Cut(parent, names[start], tail if len(tail) > 1 else parent._modules[leaf], dotted)


def refusal(model: nn.Module, cut: Cut) -> str | None:
    """Why the backbone's output could change from epoch to epoch (so it must not be cached), or None."""
    tail = {id(p) for p in cut.tail.parameters()}
    training = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in tail]
    if training:
        return f"layers outside the head train ({training[0]}{', ...' if len(training) > 1 else ''})"
    inside = {id(m) for m in cut.tail.modules()}
    drop = [n for n, m in model.named_modules() if id(m) not in inside and m.training
            and isinstance(m, (nn.modules.dropout._DropoutNd, nn.AlphaDropout))]
    if drop:
        return f"the backbone has dropout ({drop[0]}) that draws new masks every epoch"
    return None


def available_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on ``device``: free GPU memory, or the kernel's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _size(n: int) -> str:
    return f"{n / 2**20:,.1f} MB" if n < 2**30 else f"{n / 2**30:,.2f} GB"


class FeatureCache:
    """Builds, at the first epoch that needs it, the cached features of the training and validation images, and
    hands the trainer the tail and the feature sets to train and validate on.

    Args:
        head: dotted name of the head module (``ModelMeta.head``).
        required: ``train.cache_features: on``: a refusal raises instead of falling back.
        log: receives one line when the cache is built or refused.
        limit_bytes: the most the features may take (None: :data:`MEMORY_FRACTION` of the available memory).
    """

    def __init__(self, head: str, *, required: bool, log: Callable[[str], None], limit_bytes: int | None = None) -> None:
        self.head, self.required, self.log, self.limit_bytes = head, required, log, limit_bytes
        self.cut: Cut | None = None
        self.train: FeatureSet | None = None
        self.val: FeatureSet | None = None
        self.refused: str | None = None
        self.seconds = 0.0

    @property
    def tail(self) -> nn.Module:
        assert self.cut is not None
        return self.cut.tail

    def _refuse(self, reason: str) -> bool:
        if self.required:
            raise CnnlabError(f"{KEY} is on but the backbone's features cannot be cached: {reason}; set it to auto "
                              "or off")
        self.refused = reason
        self.log(f"note: the backbone's features are recomputed every epoch: {reason} ({KEY}: off hides this)")
        return False

    def ready(self, model: nn.Module, train: ImageData, val: ImageData | None, *, normalizer: Normalizer,
              engine: Engine, batch_size: int, eval_batch_size: int, stop: Callable[[], bool]) -> bool:
        """Whether this epoch trains on cached features; builds them the first time (model in the epoch's modes).

        Returns False when the cache is refused (logged once; raises with ``required``) or ``stop()`` turned
        True while building (the caller then handles its interrupt; the next call builds again).
        """
        if self.train is not None or self.refused is not None:
            return self.train is not None
        cut = self.cut or find_cut(model, self.head)
        self.cut = cut
        if (reason := refusal(model, cut)) is not None:
            return self._refuse(reason)
        t0 = time.perf_counter()
        first = next(batches(train, min(batch_size, len(train))))[0]
        with torch.no_grad(), engine.autocast():
            probe = self._take(model, normalizer(first.to(engine.device), engine.channels_last), stop=True).seen
        per_image = probe[0].numel() * probe.element_size()
        need = per_image * (len(train) + (len(val) if val is not None else 0))
        limit = self.limit_bytes if self.limit_bytes is not None else int(MEMORY_FRACTION * available_memory(engine.device))
        if need > limit:
            return self._refuse(f"its features ({tuple(probe.shape[1:])} {str(probe.dtype)[6:]} per image) would take "
                                f"{_size(need)}, over the {_size(limit)} allowed (half the available memory)")
        self.log(f"Caching the frozen backbone's features of {len(train) + (len(val) if val is not None else 0):,} "
                 f"images ({_size(need)}), once for every epoch...")
        val_set = None
        if val is not None:
            modes = [(m, m.training) for m in model.modules()]  # one by one: the frozen BatchNorm stays in eval
            model.eval()
            try:
                if (reason := self._check_output(model, val, normalizer, engine, eval_batch_size)) is not None:
                    return self._refuse(reason)
                val_set = self._features(model, val, normalizer, engine, eval_batch_size, stop, train_mode=False)
            finally:
                for m, mode in modes:
                    m.training = mode
            if val_set is None:
                return False
        train_set = self._features(model, train, normalizer, engine, batch_size, stop, train_mode=True)
        if train_set is None:
            return False
        self.train, self.val = train_set, val_set
        self.seconds = time.perf_counter() - t0
        total = train_set.nbytes + (self.val.nbytes if self.val is not None else 0)
        self.log(f"Cached the frozen backbone's features once: {len(train):,} train"
                 f"{f' + {len(val):,} validation' if val is not None else ''} images, {tuple(probe.shape[1:])} "
                 f"{str(probe.dtype)[6:]} each, {_size(total)}, in {self.seconds:.1f} s; each epoch trains the head "
                 f"({', '.join(cut.names)}) on them ({KEY}: off recomputes the backbone every epoch)")
        return True

    def _take(self, model: nn.Module, x: torch.Tensor, *, stop: bool) -> _Tap:
        """Runs ``model`` on batch ``x`` with a tap at the cut: ``tap.seen`` is the tail's input, and with ``stop``
        False ``tap.out`` the model's output."""
        tap = _Tap(self.cut.parent._modules[self.cut.name], stop)
        old = self.cut.swap(tap)
        try:
            tap.out = model(x)
        except _Captured:
            pass
        finally:
            self.cut.swap(old)
        return tap

    def _check_output(self, model: nn.Module, data: ImageData, normalizer: Normalizer, engine: Engine,
                      batch_size: int) -> str | None:
        """Why the model's output is not the tail's output on one eval batch (something after the head), or None."""
        xb = next(batches(data, min(batch_size, len(data))))[0]
        with torch.no_grad(), engine.autocast():
            tap = self._take(model, normalizer(xb.to(engine.device), engine.channels_last), stop=False)
            same = torch.equal(tap.out, self.tail(tap.seen))
        return None if same else f"the model's output is not its head's ({self.head}) output"

    def _features(self, model: nn.Module, data: ImageData, normalizer: Normalizer, engine: Engine, batch_size: int,
                  stop: Callable[[], bool], *, train_mode: bool) -> FeatureSet | None:
        """The tail's input for every image of ``data``, in batches of ``batch_size`` (None when ``stop()``).

        Training features: a short last batch is filled up to ``batch_size`` with the first images (their
        features dropped), because a GEMM's or convolution's result for one image can differ in the last bits
        with the batch it is computed in; so every image gets the batch size of a full training step.
        Validation features come in exactly the batches :func:`~cnnlab.training.epoch.evaluate` uses.
        """
        parts = []
        with torch.no_grad(), engine.autocast():
            for xb, _ in batches(data, batch_size):
                if stop():
                    return None
                n = len(xb)
                if train_mode and n < batch_size and len(data) >= batch_size:
                    xb = torch.cat([xb, data.images[:batch_size - n]])
                x = normalizer(xb.to(engine.device), engine.channels_last)
                parts.append(self._take(model, x, stop=True).seen[:n])
        what = "train" if train_mode else "val"
        return FeatureSet(torch.cat(parts), data.labels.to(engine.device), data.classes, f"{data.name}[{what} features]")

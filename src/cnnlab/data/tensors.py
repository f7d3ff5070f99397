"""In-memory image datasets: one uint8 tensor (N, C, H, W), int64 labels and class names.

Batches are sliced from the resident tensor, cast and normalised on the training device on the fly, so
there is no per-sample Python and no DataLoader for data that fits in memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from cnnlab.errors import CnnlabError
from cnnlab.models.registry import IMAGENET_MEAN, IMAGENET_STD


class RowView:
    """Selected rows of a uint8 (N, C, H, W) tensor, gathered only when a batch is read.

    Splitting a memory-mapped folder cache this way copies nothing, so folders larger than RAM stream
    from the cache batch by batch (through the OS page cache).
    """

    def __init__(self, base: torch.Tensor, rows: torch.Tensor) -> None:
        self.base, self.rows = base, rows

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.base.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def ndim(self) -> int:
        return self.base.ndim

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx) -> torch.Tensor:
        rows = self.rows[idx]
        return self.base[rows] if rows.ndim else self.base[int(rows)]

    def select(self, idx: torch.Tensor) -> RowView:
        return RowView(self.base, self.rows[idx])

    def to(self, device: torch.device | str) -> RowView | torch.Tensor:
        """Itself on the CPU (still lazy); a materialised copy on another device."""
        return self if torch.device(device).type == "cpu" else self.base[self.rows].to(device)


@dataclass(frozen=True)
class ImageData:
    """A labelled image set held as one uint8 tensor.

    Attributes:
        images: uint8 tensor of shape (N, C, H, W), values 0..255 (or a :class:`RowView` of one).
        labels: int64 tensor of shape (N,).
        classes: class names; ``labels`` index into it.
        name: where the data came from, for messages and run metadata.
    """

    images: torch.Tensor | RowView
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str = ""
    indices: torch.Tensor | None = field(default=None, compare=False)  # positions in the source set

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels shape {tuple(self.labels.shape)} != ({self.images.shape[0]},)")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, idx: torch.Tensor | Sequence[int], name: str | None = None, *, copy: bool = True) -> ImageData:
        """The images at ``idx``, keeping class names: a copy, or (``copy=False``) a lazy :class:`RowView`."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        base = self.indices[idx] if self.indices is not None else idx
        if copy:
            images = self.images[idx]
        else:
            images = self.images.select(idx) if isinstance(self.images, RowView) else RowView(self.images, idx)
        return ImageData(images, self.labels[idx], self.classes, name or self.name, base)

    def to(self, device: torch.device | str) -> ImageData:
        """The same data resident on ``device`` (still uint8)."""
        return ImageData(self.images.to(device), self.labels.to(device), self.classes, self.name, self.indices)

    def class_counts(self) -> list[int]:
        """Images per class, in class order."""
        return torch.bincount(self.labels.cpu(), minlength=self.num_classes).tolist()


def split(data: ImageData, val: float | int, seed: int, *, copy: bool = True) -> tuple[ImageData, ImageData]:
    """Splits off a random validation set.

    Args:
        data: the training set.
        val: validation size, as a fraction in (0, 1) or a number of images (e.g. 10000 for 50k/10k).
        seed: seed of the permutation, so the split is repeatable.
        copy: copy the images (in-memory data) or keep lazy row views (memory-mapped caches).

    Returns:
        (train, validation).
    """
    n = len(data)
    if 0 < val < 1:
        n_val = int(round(val * n))
    elif val >= 2 and float(val).is_integer():
        n_val = int(val)
    else:  # 1 (all? one image?), 1.5, negatives: say what is meant instead of guessing
        raise CnnlabError(f"data.val_split={val:g} is neither a fraction in (0, 1) (0.2 holds out 20%) nor a whole "
                          "count of at least 2 images (10000 holds out 10,000)")
    if n_val < 1:
        raise CnnlabError(f"data.val_split={val:g} holds out no image of {n:,}; hold out at least 1")
    if n - n_val < 2:
        raise CnnlabError(f"data.val_split={val:g} holds out {n_val:,} of {n:,} images, leaving {n - n_val} to "
                          "train on; leave at least 2")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return (data.subset(perm[n_val:], f"{data.name}[train]", copy=copy),
            data.subset(perm[:n_val], f"{data.name}[val]", copy=copy))


MIN_STD = 1 / 255 / 255  # below this a channel is constant (a std under 1/255 of one grey level)


@dataclass(frozen=True)
class Normalizer:
    """uint8 → float model input: ``(x / 255 - mean) / std`` per channel (one value or one per channel).

    ``mean=0, std=1`` is the tutorials' ``x / 255``. This is the one normalisation of cnnlab: training,
    evaluation, the views and both prediction engines (PyTorch and ONNX Runtime) use it, so a model sees
    bit-identical inputs everywhere. The per-device constants are built once and kept.
    """

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        bad = next((i for i, s in enumerate(self.std) if not (math.isfinite(s) and s > 0)), None)
        if bad is not None:
            raise CnnlabError(f"normalisation std of channel {bad} is {self.std[bad]}; a std must be a positive "
                              "number (a constant channel has std 0: use data.normalize: unit, or fit it again)")
        bad = next((i for i, m in enumerate(self.mean) if not math.isfinite(m)), None)
        if bad is not None:
            raise CnnlabError(f"normalisation mean of channel {bad} is {self.mean[bad]}; it must be a number")

    def _consts(self, device: torch.device, channels: int) -> tuple[torch.Tensor, ...]:
        """(mean, std, scale, shift) as float32 (1, C, 1, 1) on ``device``; ``x * scale - shift`` normalises."""
        cache = self.__dict__.setdefault("_cache", {})  # frozen dataclass: a private cache beside the fields
        key = (str(device), channels)
        if key not in cache:
            if len(self.mean) not in (1, channels) or len(self.std) not in (1, channels):
                raise CnnlabError(f"normalisation has {len(self.mean)} means / {len(self.std)} stds for {channels}-"
                                  "channel images; give one value or one per channel")
            with torch.inference_mode(False), torch.no_grad():  # plain tensors: usable later by autograd too
                mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
                std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
                cache[key] = (mean, std, 1.0 / (255.0 * std), mean / std)
        return cache[key]

    def __call__(self, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """Casts a uint8 batch (N, C, H, W) to normalised float32."""
        _, _, scale, shift = self._consts(x.device, x.shape[1])
        out = x.float().mul_(scale).sub_(shift)
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out

    def numpy_scale_shift(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """float32 (1, C, 1, 1) ``scale`` and ``shift`` for NumPy callers: ``x * scale - shift`` as in :meth:`__call__`."""
        _, _, scale, shift = self._consts(torch.device("cpu"), channels)
        return scale.numpy(), shift.numpy()

    def from_unit(self, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """Normalises a float batch already in [0, 1] (e.g. after augmentation)."""
        mean, std, _, _ = self._consts(x.device, x.shape[1])
        out = (x - mean) / std
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of ``__call__`` back to floats in [0, 1] (for display)."""
        mean, std, _, _ = self._consts(x.device, x.shape[1])
        return (x * std + mean).clamp(0, 1)

    @classmethod
    def fit(cls, data: ImageData, max_images: int = 10000) -> Normalizer:
        """Per-channel mean/std of (up to ``max_images`` of) a training set, in [0, 1] units.

        A channel that is constant in the data (std below 1/255 of a grey level, e.g. a blue channel always
        0) gets std 1, so it is only shifted, never divided by ~0 (Keras's Normalization guards the same way
        with an epsilon); :func:`constant_channels` names such channels.
        """
        x = data.images[:max_images].float().div_(255)
        std = [s if s >= MIN_STD else 1.0 for s in x.std(dim=(0, 2, 3)).tolist()]
        return cls(tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(std))

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}


def constant_channels(data: ImageData, max_images: int = 10000) -> list[int]:
    """Channels whose values do not vary over (up to ``max_images`` of) ``data`` (what ``fit`` leaves unscaled)."""
    x = data.images[:max_images].float().div_(255)
    return [i for i, s in enumerate(x.std(dim=(0, 2, 3)).tolist()) if s < MIN_STD]


IMAGENET = Normalizer(IMAGENET_MEAN, IMAGENET_STD)  # what torchvision's published weights expect
RAW = Normalizer((0.0,), (1 / 255,))  # the 0..255 values themselves (scale 1/(255 * (1/255)) is 1.0 in float32)


def batches(
    data: ImageData,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    order: torch.Tensor | None = None,
    start: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yields (uint8 images, labels) slices of ``data``; casting is the caller's (device-side) job.

    Args:
        data: the images.
        batch_size: images per batch.
        shuffle: draw one permutation per call from ``generator`` (a seeded generator makes it repeatable).
        generator: the source of that permutation.
        drop_last: leave out a last, smaller batch.
        order: the positions to visit, in order (e.g. :func:`epoch_order` or a rank's :func:`shard` of it);
            overrides ``shuffle``.
        start: the first batch to yield (resuming part-way through an epoch).
    """
    if order is None and shuffle:
        order = torch.randperm(len(data), generator=generator)
    n = len(data) if order is None else len(order)
    if order is not None:
        order = order.to(data.images.device)
    stop = n - n % batch_size if drop_last else n
    for i in range(start * batch_size, stop, batch_size):
        if order is not None:
            idx = order[i:i + batch_size]
            yield data.images[idx], data.labels[idx]
        else:
            yield data.images[i:i + batch_size], data.labels[i:i + batch_size]


def seed_of(*parts: int) -> int:
    """A 63-bit seed mixed from integers (numpy's SeedSequence): (seed, epoch) and (seed, epoch, rank) streams
    that do not overlap, as PyTorch's ``DistributedSampler`` derives its order from seed + epoch."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of an epoch's samples: a permutation of ``range(n)`` fixed by (seed, epoch) alone.

    Stateless, so every process of a distributed run computes the same order, and a run resumed part-way
    through an epoch finds it again.
    """
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed_of(seed, epoch)))


def shard(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s share of an epoch order: ``order[:N - N % W][rank::W]`` (equal sizes, nothing padded)."""
    n = len(order) - len(order) % world_size
    return order[:n][rank::world_size]

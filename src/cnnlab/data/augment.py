"""Training-time augmentation as batched tensor ops on the training device.

Every random parameter is drawn per sample, for the whole batch at once, from the caller's
``torch.Generator``, so a seeded run is repeatable and a resumed run (generator state restored) continues
the same stream. There is no per-sample Python and no PIL: flips are a ``torch.where``, the padded random
crop is one gather, translate/zoom/rotation share one ``affine_grid`` + ``grid_sample``, colour changes
are broadcast arithmetic and cutout is a mask. Order: flips, crop, affine, brightness, contrast, noise,
cutout, clamp to [0, 1]. Apply it to [0, 1] floats before normalisation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.config import AugmentConfig
from cnnlab.errors import CnnlabError


class Augmenter:
    """Applies an :class:`AugmentConfig` to float batches (N, C, H, W) in [0, 1].

    Args:
        config: the augmentations.
        flip_p: probability of each enabled flip (1/2; tests use 1 to check the mirror exactly).
    """

    def __init__(self, config: AugmentConfig, *, flip_p: float = 0.5) -> None:
        self.config = config
        self.flip_p = flip_p

    @property
    def enabled(self) -> bool:
        """False when everything is off (the trainer then skips the call)."""
        return self.config.enabled

    def check(self, shape: tuple[int, int, int]) -> None:
        """Refuses settings that would wipe out images of ``shape`` (C, H, W) rather than vary them.

        A cutout square or a crop padding over half the shorter side removes or shifts away most of every
        image (DeVries & Taylor 2017 cut 16 px out of CIFAR's 32; the classic crop pads 4 px of 32).

        Raises:
            CnnlabError: naming the key, its value, the image size and the largest sensible value.
        """
        side = min(shape[1:])
        for key in ("cutout", "crop_padding"):
            value = getattr(self.config, key)
            if value > side // 2:
                raise CnnlabError(f"data.augment.{key}={value} on {shape[1]}x{shape[2]} images would blank or shift "
                                  f"away most of every image; use at most {side // 2} (half the shorter side)")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augments a batch; returns a new tensor of the same shape, dtype, device and memory format.

        Args:
            x: float images (N, C, H, W) in [0, 1].
            generator: source of all random draws. One on ``x``'s device is fastest; a generator on
                another device (e.g. CPU while training on CUDA) seeds a device-local one from its stream.
        """
        if not self.enabled:
            return x
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"expected float (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
        if x.shape[0] == 0:  # nothing to draw for (and the crop's gather cannot reshape 0 elements)
            return x.clone()
        cfg = self.config
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        g = generator
        if g.device != x.device:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
            g = torch.Generator(device=x.device).manual_seed(seed)
        n = x.shape[0]

        def uniform(lo: float, hi: float) -> torch.Tensor:  # (N,) per-sample draws on x's device
            return torch.rand(n, generator=g, device=x.device, dtype=x.dtype) * (hi - lo) + lo

        out = x
        if cfg.hflip:
            out = torch.where(self._coin(n, g, x.device), out.flip(3), out)
        if cfg.vflip:
            out = torch.where(self._coin(n, g, x.device), out.flip(2), out)
        if cfg.crop_padding:
            out = self._random_crop(out, cfg.crop_padding, g)
        if cfg.translate or cfg.zoom or cfg.rotation:
            out = self._affine(out, uniform)
        # the rest works in place on a private copy: fewer large temporaries, which on CPU cost page faults
        out = x.clone() if out is x else out
        if cfg.brightness:
            out.mul_(uniform(1 - cfg.brightness, 1 + cfg.brightness).view(n, 1, 1, 1))
        if cfg.contrast:
            mean = out.mean(dim=(1, 2, 3), keepdim=True)
            out.sub_(mean).mul_(uniform(1 - cfg.contrast, 1 + cfg.contrast).view(n, 1, 1, 1)).add_(mean)
        if cfg.noise:
            out.add_(torch.randn(out.shape, generator=g, device=x.device, dtype=x.dtype).mul_(cfg.noise))
        if cfg.cutout:
            out.masked_fill_(self._cutout_mask(out, cfg.cutout, g), 0)
        out.clamp_(0, 1)
        return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    def _coin(self, n: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
        """(N, 1, 1, 1) bools, True with probability ``flip_p``."""
        return (torch.rand(n, generator=g, device=device) < self.flip_p).view(n, 1, 1, 1)

    def _random_crop(self, x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
        """Pads by ``pad`` and gathers an (H, W) window at a per-sample offset in [0, 2 * pad]."""
        n, c, h, w = x.shape
        fill = self.config.padding_mode
        # reflect needs pad < size; replicate ("nearest") has no such limit
        mode = {"reflect": "reflect" if pad < min(h, w) else "constant", "nearest": "replicate"}.get(fill, "constant")
        padded = F.pad(x, (pad, pad, pad, pad), mode=mode).contiguous()
        oy = torch.randint(0, 2 * pad + 1, (n, 1, 1), generator=g, device=x.device)
        ox = torch.randint(0, 2 * pad + 1, (n, 1, 1), generator=g, device=x.device)
        # flat index of each output pixel in its padded image (rows of width W + 2 * pad): one gather over
        # H * W positions per sample and channel is several times faster than 4-way advanced indexing
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        idx = ((oy + ys) * (w + 2 * pad) + ox + xs).view(n, 1, h * w).expand(n, c, h * w)
        return padded.view(n, c, -1).gather(2, idx).view(n, c, h, w)

    def _affine(self, x: torch.Tensor, uniform) -> torch.Tensor:
        """Translate, zoom and rotate in one resampling (bilinear, corners not aligned)."""
        cfg = self.config
        n, _, h, w = x.shape
        angle = uniform(-cfg.rotation, cfg.rotation) * (math.pi / 180)
        scale = uniform(1 - cfg.zoom, 1 + cfg.zoom)
        # affine_grid maps output to input coordinates, both normalised to [-1, 1] per axis: a rotation in
        # pixel space becomes D^-1 R D with D = diag(W, H) / 2, and zooming in (scale > 1) samples a
        # smaller input region, hence the division; a shift of t * size is 2t in normalised units.
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([
            torch.stack([cos, -sin * (h / w), 2 * uniform(-cfg.translate, cfg.translate)], 1),
            torch.stack([sin * (w / h), cos, 2 * uniform(-cfg.translate, cfg.translate)], 1),
        ], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        pad = {"reflect": "reflection", "nearest": "border"}.get(cfg.padding_mode, "zeros")
        return F.grid_sample(x, grid, mode="bilinear", padding_mode=pad, align_corners=False)

    @staticmethod
    def _cutout_mask(x: torch.Tensor, side: int, g: torch.Generator) -> torch.Tensor:
        """(N, 1, H, W) mask of one ``side`` x ``side`` square per image, placed wholly inside it."""
        n, _, h, w = x.shape
        sh, sw = min(side, h), min(side, w)
        top = torch.randint(0, h - sh + 1, (n, 1), generator=g, device=x.device)
        left = torch.randint(0, w - sw + 1, (n, 1), generator=g, device=x.device)
        ys = torch.arange(h, device=x.device)
        xs = torch.arange(w, device=x.device)
        in_rows = (ys >= top) & (ys < top + sh)  # (N, H)
        in_cols = (xs >= left) & (xs < left + sw)  # (N, W)
        return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)


def preview_grid(images: torch.Tensor, augmenter: Augmenter, *, n: int = 8, copies: int = 8,
                 seed: int = 0) -> np.ndarray:
    """A contact sheet: one row per image, the original then ``copies`` augmented versions.

    Args:
        images: uint8 (N, C, H, W); the first ``n`` are shown.
        augmenter: the augmentation to preview.
        n: rows (images).
        copies: augmented copies per row.
        seed: seed of the augmentation draws.

    Returns:
        uint8 array (rows * H, (1 + copies) * W, C).
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    rows = images[:n].float().div(255)
    r, c, h, w = rows.shape
    reps = rows.repeat_interleave(copies, dim=0)  # (r * copies, C, H, W), each image's copies adjacent
    aug = augmenter(reps, torch.Generator(device=rows.device).manual_seed(seed))
    sheet = torch.cat([rows.unsqueeze(1), aug.view(r, copies, c, h, w)], dim=1)  # (r, 1 + copies, C, H, W)
    sheet = sheet.mul(255).round_().to(torch.uint8).cpu()
    return sheet.permute(0, 3, 1, 4, 2).reshape(r * h, (1 + copies) * w, c).numpy()

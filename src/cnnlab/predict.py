"""Classify image files with a trained run, using the run's own preprocessing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from cnnlab.errors import CnnlabError


@dataclass
class Prediction:
    """One file's result: the top-k (label, probability) pairs, or why it could not be read."""

    path: Path
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None


def expand(paths: list[str | Path]) -> list[Path]:
    """Files as given, folders replaced by the images inside them (sorted)."""
    from cnnlab.data.decode import list_images

    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(list_images(p) if p.is_dir() else [p])
    return out


def load_images(paths: list[Path], shape: tuple[int, int, int], resize: str) -> tuple[list[torch.Tensor | None], list[str | None]]:
    """Decodes each file to the model's input (C, H, W): grey or RGB, resized; never inverted."""
    from cnnlab.data.decode import decode_image

    c, h, w = shape
    images, errors = [], []
    for p in paths:
        try:
            if not p.is_file():
                raise CnnlabError(f"{p}: no such file")
            images.append(decode_image(p, (h, w), grayscale=(c == 1), resize=resize))
            errors.append(None)
        except CnnlabError as exc:
            images.append(None)
            errors.append(str(exc))
    return images, errors


def predict_files(run_dir: str | Path, files: list[str | Path], *, top_k: int = 1, batch_size: int = 256) -> list[Prediction]:
    """Top-k predictions for each file (or each image in a folder); unreadable files get an error entry."""
    from cnnlab.api import load_run

    lr = load_run(run_dir)
    paths = expand(files)
    if not paths:
        raise CnnlabError("no image files given (PNG, JPEG, BMP, GIF or WebP)")
    images, errors = load_images(paths, lr.input_shape, lr.cfg.data.resize)
    results = [Prediction(p, error=e) for p, e in zip(paths, errors, strict=True)]
    ok = [i for i, img in enumerate(images) if img is not None]
    k = min(top_k, len(lr.classes))
    for start in range(0, len(ok), batch_size):
        idx = ok[start:start + batch_size]
        x = lr.normalizer(torch.stack([images[i] for i in idx]))
        with torch.inference_mode():
            probs = lr.model(x).float().softmax(1)
        p, c = probs.topk(k, dim=1)
        for row, i in enumerate(idx):
            results[i].top = [(lr.classes[j], float(v)) for v, j in zip(p[row].tolist(), c[row].tolist(), strict=True)]
    return results

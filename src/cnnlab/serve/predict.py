"""Classify images with a trained run, using the run's own preprocessing, in PyTorch or onnxruntime.

:class:`Predictor` is the in-process API: uint8 pixels in, probabilities out, with the engine, its
session and its normalisation constants set up once. :func:`predict_files` decodes files in chunks (in
worker processes when there are many) and predicts each chunk in batches; unreadable files become error
entries and never stop the others.

Engine choice (``auto``): both engines are timed on single images when the predictor is built (a few
ms for small models, at most ~0.25 s each) and the faster one is used for everything. Measured on a
2-core AMD EPYC (Zen 4) for the first tutorial's CNN: onnxruntime ~0.08-0.12 ms per image vs ~0.25-0.35 ms
for PyTorch eager, and onnxruntime is also ahead on batches (~2-4x over PyTorch fp32) and degrades far
less when other processes compete for the cores (benchmarks/inference_speed.py), so ``auto`` usually
picks onnxruntime; it falls back to PyTorch where the export is impossible.
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cnnlab.data.cache import MIN_POOL_FILES, cores, decode_files
from cnnlab.data.decode import decode_image, pixel_limit
from cnnlab.data.imagefiles import find_images, not_images_line
from cnnlab.errors import CnnlabError, one_of
from cnnlab.files import what_is
from cnnlab.io import atomic_path, file_digest, shell_word
from cnnlab.runs.loaded import load_run
from cnnlab.serve.engines import ENGINES, OrtEngine, TorchEngine, median_latency, ort_session
from cnnlab.serve.onnx import ONNX_FILE, export_onnx, session_info
from cnnlab.serve.quantize import int8_path

GRID_MAX = 100  # images in a --grid figure (10 x 10)

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Prediction:
    """One file's result: the top-k (label, probability) pairs, or why it could not be read."""

    path: Path
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    image: np.ndarray | None = None  # decoded uint8 (C, H, W), kept only for the first images of a grid


# ------------------------------------------------------------------------------------------- engines


# ----------------------------------------------------------------------------------------- Predictor


class Predictor:
    """A run's model ready for repeated predictions: uint8 images in, softmax probabilities out.

    Example::

        p = Predictor.from_run("runs/fashion_mnist_cnn")          # auto: the faster engine
        probs = p.predict(image_u8)                              # (C, H, W) or (N, C, H, W) -> (N, classes)
        p.classes[probs[0].argmax()]

    Attributes:
        engine: ``"torch"`` or ``"onnx"``, the engine in use.
        classes: class names, in output order.
        input_shape: (C, H, W) the images must have.
        resize: how files are resized to ``input_shape`` (the run's ``data.resize``: squash or crop).
        max_pixels: the most pixels one file may decode to (the run's ``data.max_pixels``, else
            ``$CNNLAB_MAX_PIXELS`` or 100 MP).
        latency: single-image median seconds per engine, measured when ``auto`` chose.
    """

    def __init__(self, engine, classes: tuple[str, ...], input_shape: tuple[int, int, int], *,
                 batch_size: int = 256, resize: str = "squash", max_pixels: int | None = None,
                 latency: dict[str, float] | None = None) -> None:
        self._engine = engine
        self.classes = tuple(classes)
        self.input_shape = tuple(input_shape)
        self.resize = resize
        self.max_pixels = pixel_limit(max_pixels)
        # bounded batches keep activations cache-sized: cnn_64x2 in PyTorch is ~4x slower per image at 4096
        self.batch_size = batch_size
        self.latency = latency or {}

    @property
    def engine(self) -> str:
        return self._engine.name

    @classmethod
    def from_run(cls, run_dir: str | Path, engine: str = "auto", *, batch_size: int = 256,
                 threads: int | None = None, data_dir: str | None = None, log: Log = _stderr) -> Predictor:
        """Loads a run's final model for ``engine`` (``auto``, ``torch`` or ``onnx``).

        ``onnx`` and ``auto`` use ``RUN_DIR/model.onnx``, exporting it (with the parity check) when it is
        missing or was exported from other weights; ``RUN_DIR/model.int8.onnx`` (``export`` with
        ``quantize="int8"``) takes its place when it comes from the current weights, with a note in ``log``.

        Args:
            run_dir: a run directory written by ``cnnlab train``.
            engine: ``torch``, ``onnx``, or ``auto`` (time both on single images, keep the faster).
            batch_size: images per forward pass in :meth:`predict`.
            threads: onnxruntime intra-op threads (default one per core); PyTorch keeps its global setting.
            data_dir: where the run's test data is, for the parity check of an export.
            log: receives notes (exports, the engine ``auto`` chose).

        Raises:
            CnnlabError: unknown engine, not a run, or an unusable model.onnx.
        """

        if engine not in ENGINES:
            raise one_of("engine", engine, ENGINES)
        if batch_size < 1:
            raise CnnlabError("batch_size must be ≥ 1")
        lr = load_run(run_dir)
        common = {"batch_size": batch_size, "resize": lr.cfg.data.resize, "max_pixels": lr.cfg.data.max_pixels}
        torch_engine = TorchEngine(lr.model, lr.normalizer)
        if engine == "torch":
            return cls(torch_engine, lr.classes, lr.input_shape, **common)
        try:
            ort_engine = OrtEngine(_onnx_session(lr, threads, data_dir, log), lr.normalizer, lr.input_shape[0])
        except CnnlabError as exc:
            if engine == "onnx":
                raise
            log(f"note: using PyTorch ({exc})")
            return cls(torch_engine, lr.classes, lr.input_shape, **common)
        if engine == "onnx":
            return cls(ort_engine, lr.classes, lr.input_shape, **common)
        latency = {e.name: median_latency(e, lr.input_shape) for e in (torch_engine, ort_engine)}
        best = min((torch_engine, ort_engine), key=lambda e: latency[e.name])
        return cls(best, lr.classes, lr.input_shape, latency=latency, **common)

    def predict(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Softmax probabilities (N, classes) float32 for uint8 images (N, C, H, W) or one (C, H, W).

        Raises:
            CnnlabError: wrong dtype or shape.
        """
        x = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if x.ndim == 3:
            x = x[None]
        if x.dtype != np.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise CnnlabError(f"images must be uint8 (N, {', '.join(map(str, self.input_shape))}) or one "
                              f"{self.input_shape}, got {x.dtype} {tuple(x.shape)}; decode with "
                              "cnnlab.data.decode.decode_image(path, (H, W), grayscale=C == 1)")
        if len(x) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        if len(x) <= self.batch_size:
            return self._engine(np.ascontiguousarray(x))
        return np.concatenate([self._engine(np.ascontiguousarray(x[i:i + self.batch_size]))
                               for i in range(0, len(x), self.batch_size)])

    def top_k(self, probs: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """The ``k`` most likely (label, probability) pairs of each row of ``probs``."""
        k = min(k, len(self.classes))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[(self.classes[j], float(row[j])) for j in idx] for row, idx in zip(probs, order, strict=True)]


def _onnx_session(lr, threads: int | None, data_dir: str | None, log: Log):
    """A session on the run's model.onnx, exported first if missing or stale (other weights)."""

    path = lr.run.file(ONNX_FILE)
    if not path.exists():
        log(f"note: exporting {path} for the onnx engine")
        export_onnx(lr.run.path, data_dir=data_dir, log=log)
    session = ort_session(path, threads=threads)
    info = session_info(session, path)
    if info.weights_sha256 != file_digest(lr.run.weights_path(), "sha256"):
        log(f"note: {path} was exported from other weights (retrained?); exporting it again")
        export_onnx(lr.run.path, data_dir=data_dir, log=log)
        session = ort_session(path, threads=threads)
        info = session_info(session, path)
    if info.classes != lr.classes or info.input_shape != lr.input_shape:
        raise CnnlabError(f"{path} does not match its run (classes or input shape differ); delete it and run "
                          f"export it again (cnnlab export {shell_word(lr.run.path)})")
    return _int8_session(lr, info.weights_sha256, threads, log) or session


def _int8_session(lr, sha256: str, threads: int | None, log: Log):
    """A session on the run's model.int8.onnx when it exists and comes from the current weights, else None."""
    path = int8_path(lr.run.file(ONNX_FILE))
    if not path.is_file():
        return None
    session = ort_session(path, threads=threads)
    info = session_info(session, path)
    if info.weights_sha256 != sha256 or info.classes != lr.classes or info.input_shape != lr.input_shape:
        log(f"note: ignoring {path}: exported from other weights (retrained?); export again with quantize int8")
        return None
    log(f"note: using the int8 model {path}")
    return session


# -------------------------------------------------------------------------------------------- files


def expand(paths: list[str | Path], log: Log = _stderr) -> list[Path]:
    """Files as given, folders replaced by the images inside them (sorted; every format Pillow reads, by the
    one rule of :mod:`cnnlab.data.imagefiles` that folder datasets follow).

    A folder's files that are not images are counted and named in one ``note:`` line to ``log``.

    Raises:
        CnnlabError: nothing to predict: no file given is an image and no folder holds one.
    """

    out: list[Path] = []
    skipped: list[str] = []
    for p in map(Path, paths):
        if not p.is_dir():
            out.append(p)  # a file given by name is tried whatever it is: it fails with its own reason
            continue
        found = find_images(p)
        out.extend(found.files)
        if found.not_images:
            skipped += [str(p / name) for name in found.not_images]
            log(f"note: {found.not_images_line(str(p))}")
    if not out:
        why = f"; {not_images_line(skipped)}" if skipped else ""
        raise CnnlabError(f"no image files given{why}; give image files (PNG, JPEG, TIFF, WebP, ... any format "
                          "Pillow reads) or folders of them")
    return out


def decode_chunks(paths: list[Path], shape: tuple[int, int, int], resize: str,
                  chunk: int | None = None, *, max_pixels: int | None = None,
                  ) -> Iterator[tuple[int, np.ndarray, dict[int, str]]]:
    """Decodes ``paths`` to the model's input size, a chunk at a time.

    Few files decode in-process; more go through the folder loader's worker pool, into a scratch file
    that is reused for every chunk (so memory stays bounded for any number of files). Both ways use the
    folder datasets' decoder, with ``max_pixels`` as its limit (None: ``$CNNLAB_MAX_PIXELS`` or 100 MP).

    Yields:
        (index of the chunk's first file, uint8 (n, C, H, W) pixels, {index in chunk: error message}).
        Rows of failed files hold garbage.
    """

    c, h, w = shape
    row = c * h * w
    limit = pixel_limit(max_pixels)
    chunk = chunk or max(MIN_POOL_FILES, min(4096, (256 << 20) // row))  # ≤ 256 MiB of pixels at a time
    fd, scratch = tempfile.mkstemp(prefix="cnnlab-predict-", suffix=".u8")
    try:
        os.ftruncate(fd, min(chunk, len(paths)) * row)
        for start in range(0, len(paths), chunk):
            part = paths[start:start + chunk]
            errors = {i: f"{p}: {why}" for i, p in enumerate(part) if (why := what_is(p)) is not None}
            todo = [i for i in range(len(part)) if i not in errors]
            if len(todo) < MIN_POOL_FILES:
                pixels = np.zeros((len(part), c, h, w), np.uint8)
                for i in todo:
                    try:
                        pixels[i] = decode_image(part[i], (h, w), grayscale=c == 1, resize=resize,
                                                 max_pixels=limit).numpy()
                    except CnnlabError as exc:
                        errors[i] = str(exc)
            else:
                failed = decode_files(scratch, [str(part[i]) for i in todo], (h, w), c == 1, resize,
                                      workers=cores(), progress=False, limit=limit)
                # the same message decode_image gives, whichever way a file was decoded
                errors.update({todo[j]: f"{part[todo[j]]}: {why}; replace or remove the file"
                               for j, why in failed.items()})
                rows = np.fromfile(scratch, np.uint8, len(todo) * row).reshape(len(todo), c, h, w)
                pixels = np.zeros((len(part), c, h, w), np.uint8)
                pixels[todo] = rows
            yield start, pixels, errors
    finally:
        os.close(fd)
        Path(scratch).unlink(missing_ok=True)


def predict_files(run_dir: str | Path, files: list[str | Path], *, top_k: int = 1, engine: str = "torch",
                  batch_size: int = 256, keep_images: int = 0, predictor: Predictor | None = None,
                  log: Log = _stderr) -> list[Prediction]:
    """Top-k predictions for each file (or each image in a folder); unreadable files get an error entry.

    Args:
        run_dir: a run directory written by ``cnnlab train``.
        files: image files and/or folders of images.
        top_k: labels per file.
        engine: ``torch``, ``onnx`` or ``auto`` (see :class:`Predictor`).
        batch_size: images per forward pass.
        keep_images: keep the decoded pixels of the first this-many readable files (for a grid).
        predictor: an already loaded predictor of the run (skips loading).
        log: receives notes, e.g. about an export.

    Raises:
        CnnlabError: not a run, no image files given, or an unusable engine.
    """
    if top_k < 1:
        raise CnnlabError(f"`top_k` is {top_k}; ask for at least 1 label per image")
    paths = expand(files, log)
    pred = predictor or Predictor.from_run(run_dir, engine, batch_size=batch_size, log=log)
    results = [Prediction(p) for p in paths]
    kept = 0
    for start, pixels, errors in decode_chunks(paths, pred.input_shape, pred.resize, max_pixels=pred.max_pixels):
        ok = [i for i in range(len(pixels)) if i not in errors]
        for i, msg in errors.items():
            results[start + i].error = msg
        if not ok:
            continue
        probs = pred.predict(pixels[ok])
        for i, top in zip(ok, pred.top_k(probs, top_k), strict=True):
            results[start + i].top = top
            if kept < keep_images:
                results[start + i].image = pixels[i].copy()
                kept += 1
    return results


def write_csv(results: list[Prediction], path: str | Path, top_k: int) -> Path:
    """``file,label,prob[,label_2,prob_2...],error``: one row per file; unreadable files fill only ``error``."""
    path = Path(path)
    top_k = min(top_k, max((len(r.top) for r in results), default=top_k))  # k beyond the class count: no columns
    header = ["file", "label", "prob"]
    for j in range(2, top_k + 1):
        header += [f"label_{j}", f"prob_{j}"]
    with atomic_path(path, name="predictions.csv") as tmp, open(tmp, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow([*header, "error"])
        for r in results:
            cells: list[str] = [str(r.path)]
            for j in range(top_k):
                label, prob = r.top[j] if j < len(r.top) else ("", None)
                cells += [label, "" if prob is None else f"{prob:.6f}"]
            out.writerow([*cells, r.error or ""])
    return path


def write_grid(results: list[Prediction], path: str | Path, title: str | None = None) -> Path:
    """Tutorial 2's grid of predicted images, titled "Sneaker, prob=0.97" (the first 100 readable ones).

    Raises:
        CnnlabError: no readable image was kept (see ``keep_images`` of :func:`predict_files`).
    """
    from cnnlab.plots.common import image_grid, save_figure  # start-up: matplotlib (~0.5 s) only for --grid
    from cnnlab.plots.results import prediction_titles  # (the same)

    shown = [r for r in results if r.image is not None and r.top][:GRID_MAX]
    if not shown:
        raise CnnlabError("no image could be read, so there is nothing to draw for the `grid`")
    labels = sorted({lab for r in shown for lab, _ in r.top[:1]})
    index = {lab: i for i, lab in enumerate(labels)}
    pred = [index[r.top[0][0]] for r in shown]
    # no ground truth here: pass the prediction as "true" for the plain "label, prob=0.87" titles
    titles, _ = prediction_titles(pred, pred, [r.top[0][1] for r in shown], labels)
    readable = sum(r.error is None for r in results)
    head = title or (f"Predictions: {len(shown)} of {readable} images" if readable > len(shown) else "Predictions")
    fig = image_grid([r.image for r in shown], titles, cols=min(10, len(shown)), suptitle=head)
    return save_figure(fig, path)

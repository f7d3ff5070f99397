"""Image files to fixed-size uint8 arrays, alone or in parallel into the on-disk cache of a folder.

Speed comes from PIL's JPEG ``draft()``: libjpeg scales by 1/2, 1/4 or 1/8 in the DCT domain while it
decodes, so a 500×375 photo headed for 50×50 is decoded at 63×47 and then resized, several times
cheaper than a full decode. Crop and resize are one ``resize(box=...)``; workers decode whole chunks and
write each with one ``pwrite``. A bad file raises :class:`BadImage` with a short reason, never a crash.
torch is imported lazily: spawned workers (macOS) would otherwise pay for it.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from cnnlab.errors import CnnlabError
from cnnlab.io import folder_mode

if TYPE_CHECKING:
    import torch

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".webp"})
RESIZE_MODES = ("squash", "crop")

# Largest image we decode, in pixels (100 MP, e.g. a 12000×8000 photo; ~300 MB as RGB). Bigger files
# are almost always decompression bombs (tiny files that expand to gigabytes) and are skipped.
MAX_PIXELS = 100_000_000
# JPEG draft may decode down to this fraction of the target size in one axis (the resize then upsamples
# by at most 11%): it lets 500×375 -> 50×50 use libjpeg's 1/8 scale (63×47), ~1.5x faster than 1/4.
DRAFT_SLACK = 0.9
CACHE_VERSION = 1  # bump when the cache layout or decoding changes: old caches then no longer match
MIN_POOL_FILES = 64  # below this many files, decoding in-process beats starting worker processes

# EXIF orientation tag (0x0112) value -> the transpose that shows the image upright.
_T = Image.Transpose
_ORIENT = {2: _T.FLIP_LEFT_RIGHT, 3: _T.ROTATE_180, 4: _T.FLIP_TOP_BOTTOM, 5: _T.TRANSPOSE, 6: _T.ROTATE_270,
           7: _T.TRANSVERSE, 8: _T.ROTATE_90}


class BadImage(Exception):
    """A file that cannot be used as an image; ``str(exc)`` is a short reason for reports."""


def list_images(path: str | os.PathLike) -> list[Path]:
    """Image files (PNG/JPEG/BMP/GIF/WebP, by extension) under a folder, recursively, sorted.

    Hidden files and folders (e.g. macOS ``._x.jpg`` forks, ``.git``) are left out. A path to a single
    image file gives just that file.

    Raises:
        CnnlabError: the path does not exist or is not an image file.
    """
    root = Path(path).expanduser()
    if root.is_file():
        if root.suffix.lower() not in IMAGE_EXTENSIONS:
            raise CnnlabError(f"{root} is not an image file (extension {root.suffix or 'none'}); "
                              f"use one of {', '.join(sorted(IMAGE_EXTENSIONS))} or a folder of images")
        return [root]
    if not root.is_dir():
        raise CnnlabError(f"{root} does not exist; give an image file or a folder of images")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # prune hidden folders in place
        found.extend(Path(dirpath, f) for f in filenames
                     if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _open(path: Path | str) -> Image.Image:
    """Opens an image lazily (header only), turning every failure into a :class:`BadImage` reason."""
    try:
        if os.path.getsize(path) == 0:
            raise BadImage("empty file (0 bytes)")
        im = Image.open(path)
    except BadImage:
        raise
    except Image.DecompressionBombError:
        raise BadImage(f"too many pixels: over {MAX_PIXELS:,} (decompression bomb?)") from None
    except UnidentifiedImageError:
        raise BadImage("not an image (unrecognised format)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImage(f"unreadable: {exc}") from None
    w, h = im.size
    if w * h > MAX_PIXELS:
        im.close()
        raise BadImage(f"too many pixels: {w}×{h} > {MAX_PIXELS:,} (decompression bomb?)")
    if w == 0 or h == 0:
        im.close()
        raise BadImage(f"zero-sized image {w}×{h}")
    return im


def _crop_box(w: int, h: int, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """Central box of (w, h) with the aspect ratio of ``size`` = (H, W), in (left, top, right, bottom)."""
    aspect = size[1] / size[0]  # width / height of the target
    if w / h > aspect:
        cw = h * aspect
        return (w - cw) / 2, 0.0, (w + cw) / 2, float(h)
    ch = w / aspect
    return 0.0, (h - ch) / 2, float(w), (h + ch) / 2


def _to_8bit(im: Image.Image) -> Image.Image:
    """Modes that resize badly or not at all (palette, 1-bit, 16/32-bit) to L / RGB / RGBA."""
    if im.mode in ("RGB", "L", "RGBA", "LA", "CMYK", "YCbCr"):
        return im
    if im.mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode.startswith(("I", "F")):  # 16-bit PNG/TIFF-like greys: scale 0..65535 -> 0..255
        arr = np.asarray(im, dtype=np.float64)
        scale = 257.0 if arr.max(initial=0) > 255 else 1.0
        return Image.fromarray(np.clip(arr / scale + 0.5, 0, 255).astype(np.uint8), "L")
    return im.convert("RGBA" if "A" in im.mode else "RGB")


def _decode(path: Path | str, size: tuple[int, int] | None, grayscale: bool, resize: str) -> np.ndarray:
    """Decodes one file to a uint8 array (H, W, C); raises :class:`BadImage` with a reason."""
    im = _open(path)
    try:
        orient = _orientation(im)
        w, h = im.size
        if size is not None:
            th, tw = size
            if orient >= 5:  # stored sideways: work in stored orientation, transpose the small result
                th, tw = tw, th
            box = _crop_box(w, h, (th, tw)) if resize == "crop" else (0.0, 0.0, float(w), float(h))
            # DCT-domain downscale (JPEG only) to the smallest size that still covers the box at target size,
            # give or take DRAFT_SLACK
            s = DRAFT_SLACK * max(tw / (box[2] - box[0]), th / (box[3] - box[1]))
            im.draft("L" if grayscale else "RGB", (math.ceil(w * s), math.ceil(h * s)))
            fx, fy = im.size[0] / w, im.size[1] / h  # draft may have shrunk the image
            box = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
            im = _to_8bit(im)
            out = im.resize((tw, th), Image.Resampling.BILINEAR, box=box)
        else:
            out = _to_8bit(im)
            out.load()
        if orient != 1:
            out = out.transpose(_ORIENT[orient])
        return _finish(out, grayscale)
    except BadImage:
        raise
    except Image.DecompressionBombError:
        raise BadImage("too many pixels (decompression bomb?)") from None
    except Exception as exc:  # a damaged file can fail anywhere in a decoder (OSError, struct.error, ...)
        reason = str(exc).split("\n")[0] or type(exc).__name__
        raise BadImage(f"{'truncated' if 'truncated' in reason else 'corrupt'}: {reason}") from None
    finally:
        im.close()


def _orientation(im: Image.Image) -> int:
    """EXIF orientation (1 = upright); a damaged EXIF block only loses the orientation."""
    if im.format not in ("JPEG", "MPO", "WEBP", "PNG"):
        return 1
    try:
        orient = im.getexif().get(0x0112, 1)
    except Exception:  # PIL's EXIF parser raises many kinds of error on junk
        return 1
    return orient if orient in _ORIENT else 1


def _finish(im: Image.Image, grayscale: bool) -> np.ndarray:
    """Final colour conversion to (H, W, 1) or (H, W, 3); transparent pixels become black."""
    if im.mode in ("RGBA", "LA"):
        arr = np.asarray(im, dtype=np.uint16)
        alpha = arr[..., -1:]
        arr = ((arr[..., :-1] * alpha + 127) // 255).astype(np.uint8)  # premultiply = composite on black
        im = Image.fromarray(arr[..., 0] if im.mode == "LA" else arr, "L" if im.mode == "LA" else "RGB")
    want = "L" if grayscale else "RGB"
    if im.mode != want:
        im = im.convert(want)
    arr = np.asarray(im)
    return arr[..., None] if arr.ndim == 2 else arr


def decode_image(path: str | os.PathLike, size: tuple[int, int] | None = None, grayscale: bool = False,
                 resize: str = "squash") -> torch.Tensor:
    """Reads one image file as a uint8 tensor (C, H, W), upright (EXIF orientation applied).

    Args:
        path: the file.
        size: (H, W) to resize to; None keeps the file's own size.
        grayscale: one channel (luma) instead of RGB.
        resize: ``"squash"`` (plain resize, aspect ratio not kept) or ``"crop"`` (centre-crop to the
            target's aspect ratio, then resize).

    Raises:
        CnnlabError: the file cannot be read as an image (one-line reason).
    """
    import torch

    if resize not in RESIZE_MODES:
        raise CnnlabError(f"unknown resize mode {resize!r}; valid: {', '.join(RESIZE_MODES)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's warnings on odd EXIF/ICC data or big images: we check
            arr = _decode(path, size, grayscale, resize)
    except BadImage as exc:
        raise CnnlabError(f"{path}: {exc}; replace or remove the file") from None
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())  # PIL's arrays are read-only


def decode_chunk(out_path: str, row: int, paths: Sequence[str], size: tuple[int, int], grayscale: bool,
                 resize: str) -> list[tuple[int, str]]:
    """Decodes ``paths`` into rows ``row, row+1, ...`` of a uint8 (N, C, H, W) cache file.

    Runs in a worker process. The chunk is assembled in memory and written with one ``pwrite``; rows of
    files that fail stay zero and are dropped later.

    Returns:
        (position in ``paths``, reason) for every file that could not be decoded.
    """
    c = 1 if grayscale else 3
    buf = np.zeros((len(paths), c, size[0], size[1]), dtype=np.uint8)
    failed = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, p in enumerate(paths):
            try:
                buf[i] = _decode(p, size, grayscale, resize).transpose(2, 0, 1)
            except BadImage as exc:
                failed.append((i, str(exc)))
    fd = os.open(out_path, os.O_WRONLY)
    try:
        if os.pwrite(fd, buf.data, row * buf[0].nbytes) != buf.nbytes:
            raise OSError(f"short write to {out_path} (disk full?)")
    finally:
        os.close(fd)
    return failed


def probe(path: str | os.PathLike) -> tuple[str, tuple[int, int], str]:
    """Header-only look at a file: (format, (width, height), mode), without decoding pixels.

    Catches what a header read can: empty, non-image and bomb files, and JPEG/PNG files whose end
    marker is missing (truncated downloads).

    Raises:
        BadImage: the file is not usable (reason in the message).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        im = _open(path)
    with im:
        fmt, size, mode = im.format or "?", im.size, im.mode
    marker = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"IEND"}.get(fmt)
    if marker:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 1024))  # end markers may be followed by padding
            if marker not in f.read():
                raise BadImage(f"truncated ({fmt} end marker missing)")
    return fmt, size, mode


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def read_cache_meta(folder: Path) -> dict | None:
    """A cache folder's metadata if the cache is complete and current, else None."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        expected = meta["count"] * int(np.prod(meta["shape"]))
        ok = meta["version"] == CACHE_VERSION and (folder / "images.u8").stat().st_size == expected
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta if ok else None


def open_cache(folder: Path, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, C, H, W) mapped from disk, labels int64 (N,)) of a complete cache folder."""
    # copy-on-write map: writable for torch without a copy, and writes never reach the file
    images = np.memmap(folder / "images.u8", dtype=np.uint8, mode="c", shape=(meta["count"], *meta["shape"]))
    return images, np.load(folder / "labels.npy")


def build_cache(final: Path, root: Path, items: Sequence[tuple[str, str]], size: tuple[int, int],
                grayscale: bool, resize: str, *, workers: int, progress: bool,
                skipped: Sequence[tuple[str, str]] = (), info: dict | None = None) -> dict:
    """Decodes labelled files into a new cache folder ``final``, atomically; returns its metadata.

    The folder is assembled under a temporary name and renamed into place when complete, so an
    interrupted build (even Ctrl-C or a kill) never leaves a cache that looks valid.

    Args:
        final: the cache folder to create.
        root: folder the relative paths are relative to.
        items: (relative path, label) per file, in row order.
        size: (H, W) to decode to.
        grayscale: one channel instead of RGB.
        resize: ``squash`` or ``crop``.
        workers: decode processes.
        progress: show progress.
        skipped: (relative path, reason) of files already left out, recorded with the decode failures.
        info: more metadata to record (source, options).

    Raises:
        CnnlabError: not enough disk space for the cache.
    """
    c = 1 if grayscale else 3
    shape = (len(items), c, *size)
    nbytes = int(np.prod(shape))
    final.parent.mkdir(parents=True, exist_ok=True)
    if nbytes > (free := shutil.disk_usage(final.parent).free):
        raise CnnlabError(f"the decoded cache needs {nbytes / 1e9:.1f} GB but {final.parent} has {free / 1e9:.1f} "
                          "GB free; set CNNLAB_CACHE to a bigger disk or use a smaller image_size")
    for old in final.parent.glob(".tmp-*"):  # builds of killed processes; a day old, so never a live one
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > 86400:
                shutil.rmtree(old, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    os.chmod(tmp, folder_mode())  # mkdtemp's 0o700 would hide a shared cache from the umask's readers
    try:
        out = tmp / "images.u8"
        with open(out, "wb") as f:
            f.truncate(nbytes)  # sparse; the workers fill their rows with pwrite
        t0 = time.perf_counter()
        failed = decode_files(str(out), [str(root / rel) for rel, _ in items], size, grayscale, resize,
                              workers=workers, progress=progress, label=f"decoding {root.name}")
        seconds = time.perf_counter() - t0
        keep = np.array([i for i in range(len(items)) if i not in failed], dtype=np.int64)
        compact_rows(out, keep, shape)
        classes = sorted({items[i][1] for i in keep})
        index = {name: k for k, name in enumerate(classes)}
        np.save(tmp / "labels.npy", np.array([index[items[i][1]] for i in keep], dtype=np.int64))
        gone = [*skipped, *((items[i][0], failed[i]) for i in sorted(failed))]
        meta = {**(info or {}), "version": CACHE_VERSION, "count": len(keep), "shape": [c, *size],
                "classes": classes, "grayscale": grayscale, "resize": resize,
                "files": [items[i][0] for i in keep], "skipped": [{"file": p, "reason": r} for p, r in gone],
                "decode_seconds": seconds, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same cache first: use theirs
            if (theirs := read_cache_meta(final)) is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return theirs
    except BaseException:  # Ctrl-C included: leave nothing half-written behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def decode_files(out: str, paths: Sequence[str], size: tuple[int, int], grayscale: bool, resize: str, *,
                 workers: int, progress: bool, label: str = "decoding") -> dict[int, str]:
    """Decodes ``paths`` in chunks over ``workers`` processes into rows of the uint8 file ``out``.

    ``out`` must already have room for ``len(paths)`` rows of (C, H, W).

    Returns:
        {row: reason} for the files that could not be decoded (their rows stay zero).
    """
    n = len(paths)
    # ~8 chunks per worker balance the load; 8..256 files amortise per-task overhead; <= 64 MiB of pixels
    # per chunk bounds worker memory at large sizes
    row_bytes = (1 if grayscale else 3) * size[0] * size[1]
    chunk = max(1, min(max(8, -(-n // (workers * 8))), 256, (64 << 20) // row_bytes))
    starts = range(0, n, chunk)
    failed: dict[int, str] = {}
    pool, bar = None, None
    try:
        if workers == 1 or n < MIN_POOL_FILES:
            results = ((s, decode_chunk(out, s, paths[s:s + chunk], size, grayscale, resize)) for s in starts)
        else:
            # fork (Linux): instant start, and no re-import of the caller's __main__, which breaks unguarded
            # scripts and stdin/notebook sessions under spawn/forkserver. Safe even if torch has threads:
            # workers only run PIL and numpy. All chunks are submitted (so the workers exist) before the
            # progress bar starts its refresh thread.
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(
                "fork" if sys.platform.startswith("linux") else "spawn"))
            futures = {pool.submit(decode_chunk, out, s, paths[s:s + chunk], size, grayscale, resize): s
                       for s in starts}
            results = ((futures[f], f.result()) for f in as_completed(futures))
        bar = _Progress(n, label, progress)
        for s, failures in results:
            failed.update((s + i, why) for i, why in failures)
            bar.advance(min(chunk, n - s))
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)  # on Ctrl-C: drop queued chunks, wait for running ones
    return failed


def compact_rows(out: str | os.PathLike, keep: np.ndarray, shape: tuple[int, int, int, int]) -> None:
    """Keeps only rows ``keep`` (sorted) of a uint8 ``shape`` file: moves them down, then truncates."""
    if len(keep) == shape[0]:
        return
    if len(keep):
        mm = np.memmap(out, dtype=np.uint8, mode="r+", shape=shape)
        # <= 64 MiB per move; keep[j] >= j, so a block's sources are never overwritten before they are read
        block = max(1, (64 << 20) // int(np.prod(shape[1:])))
        for j in range(0, len(keep), block):
            src = keep[j:j + block]
            mm[j:j + len(src)] = mm[src]
        mm.flush()
        del mm
    os.truncate(out, len(keep) * int(np.prod(shape[1:])))


class _Progress:
    """A rich bar on a terminal; otherwise a plain line every 10% (for logs)."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.total, self.label, self.enabled, self.done, self.t0 = total, label, enabled, 0, time.perf_counter()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self.bar = Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                transient=True)
            self.bar.start()
            self.task = self.bar.add_task(label, total=total)

    def advance(self, k: int) -> None:
        tenths_before, self.done = 10 * self.done // self.total, self.done + k
        if self.bar is not None:
            self.bar.advance(self.task, k)
        elif self.enabled and 10 * self.done // self.total > tenths_before:  # crossed a 10% mark
            rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
            print(f"{self.label}: {self.done}/{self.total} ({100 * self.done // self.total}%), {rate:.0f} img/s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

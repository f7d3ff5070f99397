"""Many image files decoded in parallel into one uint8 file: the on-disk cache of a folder, and predict's chunks.

Workers decode whole chunks of files with :mod:`cnnlab.data.decode` and write each chunk with one ``pwrite``;
a cache folder is assembled under a temporary name and renamed into place when complete. torch is not
imported here: spawned workers (macOS) would otherwise pay for it.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from cnnlab.data.decode import BadImage, decode_array
from cnnlab.errors import CnnlabError
from cnnlab.io import folder_mode

# bump when the cache layout or decoding changes: old caches then no longer match (2: bit-depth scaling,
# bombs judged by the decoded size)
CACHE_VERSION = 2
MIN_POOL_FILES = 64  # below this many files, decoding in-process beats starting worker processes


def decode_chunk(out_path: str, row: int, paths: Sequence[str], size: tuple[int, int], grayscale: bool,
                 resize: str, limit: int) -> list[tuple[int, str]]:
    """Decodes ``paths`` into rows ``row, row+1, ...`` of a uint8 (N, C, H, W) cache file.

    Runs in a worker process. The chunk is assembled in memory and written with one ``pwrite``; rows of
    files that fail stay zero and are dropped later. ``limit`` is the most pixels one decode may take.

    Returns:
        (position in ``paths``, reason) for every file that could not be decoded.
    """
    c = 1 if grayscale else 3
    buf = np.zeros((len(paths), c, size[0], size[1]), dtype=np.uint8)
    failed = []
    for i, p in enumerate(paths):
        try:
            buf[i] = decode_array(p, size, grayscale, resize, limit).transpose(2, 0, 1)
        except BadImage as exc:
            failed.append((i, str(exc)))
    fd = os.open(out_path, os.O_WRONLY)
    try:
        if os.pwrite(fd, buf.data, row * buf[0].nbytes) != buf.nbytes:
            raise OSError(f"short write to {out_path} (disk full?)")
    finally:
        os.close(fd)
    return failed




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
                grayscale: bool, resize: str, *, workers: int, progress: bool, limit: int,
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
        limit: the most pixels one decode may take (see :func:`cnnlab.data.decode.pixel_limit`).
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
                              workers=workers, progress=progress, limit=limit, label=f"decoding {root.name}")
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
                 workers: int, progress: bool, limit: int, label: str = "decoding") -> dict[int, str]:
    """Decodes ``paths`` in chunks over ``workers`` processes into rows of the uint8 file ``out``.

    ``out`` must already have room for ``len(paths)`` rows of (C, H, W); ``limit`` is the most pixels one
    decode may take.

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
            results = ((s, decode_chunk(out, s, paths[s:s + chunk], size, grayscale, resize, limit)) for s in starts)
        else:
            # fork (Linux): instant start, and no re-import of the caller's __main__, which breaks unguarded
            # scripts and stdin/notebook sessions under spawn/forkserver. Safe even if torch has threads:
            # workers only run PIL and numpy. All chunks are submitted (so the workers exist) before the
            # progress bar starts its refresh thread.
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(
                "fork" if sys.platform.startswith("linux") else "spawn"))
            futures = {pool.submit(decode_chunk, out, s, paths[s:s + chunk], size, grayscale, resize, limit): s
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

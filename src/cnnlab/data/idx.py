"""Reader for the IDX format of MNIST and Fashion-MNIST (gzipped or raw)."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from cnnlab.errors import CnnlabError
from cnnlab.io import atomic_path, cache_dir

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Reads an IDX file (``.gz`` or raw) into an array of its declared shape.

    Raises:
        CnnlabError: the file is missing, not IDX, or shorter than its header says.
    """
    p = Path(path)
    try:
        raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    except FileNotFoundError:
        raise CnnlabError(f"{p} not found") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise CnnlabError(f"{p} is not a readable gzip file ({exc}); delete it and fetch it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise CnnlabError(f"{p} is not an IDX file (bad magic number); expected the official MNIST-format files")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[raw[2]])
    need = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != need:
        raise CnnlabError(f"{p} holds {len(raw)} bytes but its header declares {need}; the file is truncated or corrupt")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def read_idx_cached(path: str | Path) -> np.ndarray:
    """:func:`read_idx`, decoded once: later calls read the cache's ``.npy`` copy (writable, no gunzip).

    Decompressing MNIST's gzipped IDX files costs ~0.4 s of every command's start-up on a 2-core Zen 4/Xeon
    (cProfile: ``zlib.decompress``); reading the raw ``.npy`` copy takes ~0.03 s. The cache file is named
    by the source's resolved path, size and mtime, so a replaced file is decoded again. A cache that cannot
    be written is skipped (the decoded array is returned all the same).

    Raises:
        CnnlabError: as :func:`read_idx`.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise CnnlabError(f"{p} not found") from None
    key = hashlib.sha256(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = cache_dir() / "idx" / f"{p.name.removesuffix('.gz')}-{key}.npy"
    try:
        return np.load(cached, allow_pickle=False)
    except (OSError, ValueError, EOFError):  # missing, or a damaged copy: decode again
        pass
    x = read_idx(p)
    try:
        with atomic_path(cached) as tmp, open(tmp, "wb") as f:
            np.save(f, x, allow_pickle=False)
    except (OSError, CnnlabError):  # read-only or full cache: serve the decoded array uncached
        pass
    return x

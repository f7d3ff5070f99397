"""Reader for the IDX format of MNIST and Fashion-MNIST (gzipped or raw)."""

from __future__ import annotations

import gzip
import hashlib
import math
import zlib
from pathlib import Path

import numpy as np

from cnnlab.errors import CnnlabError
from cnnlab.files import regular_file
from cnnlab.io import atomic_path, cache_dir

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Reads an IDX file (``.gz`` or raw) into an array of its declared shape.

    The header is checked against the file before the body is read: a raw file must hold exactly the bytes its
    header declares, and a gzip file cannot inflate beyond ``MAX_DEFLATE_RATIO`` times its size, so a header
    claiming 10¹² images is refused without allocating anything; a gzip body is then read in chunks and never
    beyond the declared size (no "zip bomb").

    Raises:
        CnnlabError: the file is missing, not IDX, or its size does not match its header.
    """
    p = Path(path)
    gz = p.suffix == ".gz"
    regular_file(p, fix="put the official file there")  # a FIFO would block the read below
    try:
        size = p.stat().st_size
        with (gzip.open(p, "rb") if gz else open(p, "rb")) as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _DTYPES:
                raise CnnlabError(f"{p} is not an IDX file (bad magic number); expected the official MNIST-format "
                                  "files")
            dims = f.read(4 * head[3])
            if len(dims) < 4 * head[3]:
                raise CnnlabError(f"{p} ends inside its header; the file is truncated")
            shape = tuple(int.from_bytes(dims[4 * i: 4 * i + 4], "big") for i in range(head[3]))
            dtype = np.dtype(_DTYPES[head[2]])
            body = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
            header = 4 + len(dims)
            if not gz and size != header + body:
                raise CnnlabError(f"{p} holds {size} bytes but its header declares {header + body}; the file is "
                                  "truncated or corrupt")
            if gz and header + body > MAX_DEFLATE_RATIO * size:
                raise CnnlabError(f"{p} declares {header + body:,} bytes, more than its {size:,} compressed bytes "
                                  "can hold; the file is corrupt")
            raw = _read_exactly(f, body, p, header)
    except FileNotFoundError:
        raise CnnlabError(f"{p} not found") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise CnnlabError(f"{p} is not a readable gzip file ({exc}); delete it and fetch it again") from None
    return np.frombuffer(raw, dtype).reshape(shape)


MAX_DEFLATE_RATIO = 1100  # deflate expands at most ~1032:1


def _read_exactly(f, n: int, p: Path, header: int) -> bytes:
    """``n`` bytes from ``f`` in chunks, and an error if it holds fewer or more."""
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(min(n - len(buf), 1 << 24))
        if not chunk:
            raise CnnlabError(f"{p} holds {header + len(buf)} bytes but its header declares {header + n}; the file "
                              "is truncated or corrupt")
        buf += chunk
    if f.read(1):
        raise CnnlabError(f"{p} holds more bytes than its header declares ({header + n}); the file is corrupt")
    return bytes(buf)


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

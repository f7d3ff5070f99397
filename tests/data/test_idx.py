"""The IDX reader of MNIST / Fashion-MNIST: round trips, other element types, damaged files."""

import gzip

import numpy as np
import pytest

from cnnlab.data.idx import read_idx
from cnnlab.errors import CnnlabError


def _idx_bytes(arr):
    return bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.tobytes()


def test_idx_round_trip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx_bytes(arr)))
    (tmp_path / "a").write_bytes(_idx_bytes(arr))
    assert (read_idx(tmp_path / "a.gz") == arr).all() and (read_idx(tmp_path / "a") == arr).all()


def test_idx_errors(tmp_path):
    arr = np.zeros((2, 3), np.uint8)
    (tmp_path / "short").write_bytes(_idx_bytes(arr)[:-1])
    with pytest.raises(CnnlabError, match="truncated or corrupt"):
        read_idx(tmp_path / "short")
    (tmp_path / "magic").write_bytes(b"PK\x03\x04rest")
    with pytest.raises(CnnlabError, match="not an IDX file"):
        read_idx(tmp_path / "magic")
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(CnnlabError, match="not a readable gzip"):
        read_idx(tmp_path / "bad.gz")


def test_big_endian_element_types_and_a_missing_file(tmp_path):
    arr = np.array([[1, -2], [300, 70000]], dtype=">i4")
    (tmp_path / "i4").write_bytes(bytes([0, 0, 0x0C, 2]) + (2).to_bytes(4, "big") * 2 + arr.tobytes())
    assert read_idx(tmp_path / "i4").tolist() == [[1, -2], [300, 70000]]
    with pytest.raises(CnnlabError, match="holds 21 bytes but its header declares 20"):
        (tmp_path / "long").write_bytes(_idx_bytes(np.zeros((2, 4), np.uint8)) + b"\x00")
        read_idx(tmp_path / "long")
    with pytest.raises(CnnlabError, match="nope not found"):
        read_idx(tmp_path / "nope")


def test_read_idx_cached_decodes_once_and_notices_a_replaced_file(tmp_path, monkeypatch):
    import os

    from cnnlab.data import idx
    from cnnlab.io import cache_dir

    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    src = tmp_path / "x-idx3-ubyte.gz"
    src.write_bytes(gzip.compress(_idx_bytes(a)))
    first = idx.read_idx_cached(src)
    assert np.array_equal(first, a) and first.flags.writeable is False  # the fresh decode: a frombuffer view
    cached = list((cache_dir() / "idx").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("x-idx3-ubyte-") and cached[0].suffix == ".npy"
    real = idx.read_idx
    monkeypatch.setattr(idx, "read_idx", lambda p: pytest.fail("decoded again"))
    again = idx.read_idx_cached(src)
    assert np.array_equal(again, a) and again.flags.writeable  # from the .npy copy: writable, no copy needed
    monkeypatch.setattr(idx, "read_idx", real)
    b = a[:1] + 1
    src.write_bytes(gzip.compress(_idx_bytes(b)))
    os.utime(src, ns=(1, 1))  # a replaced file: other size and mtime, so another cache name
    assert np.array_equal(idx.read_idx_cached(src), b)
    newer = next(c for c in (cache_dir() / "idx").iterdir() if c != cached[0])
    newer.write_bytes(b"damaged")  # a damaged copy is decoded again and rewritten
    assert np.array_equal(idx.read_idx_cached(src), b) and np.array_equal(np.load(newer), b)

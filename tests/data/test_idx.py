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


def _header(*shape, code=8):
    return bytes([0, 0, code, len(shape)]) + b"".join(int(d).to_bytes(4, "big") for d in shape)


def test_a_header_claiming_a_trillion_images_is_refused_before_reading(tmp_path):
    # 10¹² images of 28×28 would need 784 TB; the file holds 16 bytes + one image
    (tmp_path / "huge").write_bytes(_header(10**12 % 2**32, 28, 28) + b"\0" * 784)
    claimed = 16 + (10**12 % 2**32) * 784
    with pytest.raises(CnnlabError, match=f"holds 800 bytes but its header declares {claimed}"):
        read_idx(tmp_path / "huge")
    (tmp_path / "huge.gz").write_bytes(gzip.compress(_header(2**32 - 1, 2**32 - 1, 28) + b"\0" * 784))
    with pytest.raises(CnnlabError, match=r"declares [\d,]+ bytes, more than its \d+ compressed bytes can hold"):
        read_idx(tmp_path / "huge.gz")
    # 255 dimensions of 2³²-1: numpy's int64 product would wrap around; Python's does not
    (tmp_path / "wrap").write_bytes(_header(*[2**32 - 1] * 255))
    with pytest.raises(CnnlabError, match="holds 1024 bytes but its header declares"):
        read_idx(tmp_path / "wrap")


def test_truncated_files_are_named(tmp_path):
    arr = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    full = _idx_bytes(arr)
    (tmp_path / "cut.gz").write_bytes(gzip.compress(full[:-7]))  # a whole gzip of a short body
    with pytest.raises(CnnlabError, match="cut.gz holds 69 bytes but its header declares 76; the file is truncated"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "long.gz").write_bytes(gzip.compress(full + b"\0"))
    with pytest.raises(CnnlabError, match=r"holds more bytes than its header declares \(76\)"):
        read_idx(tmp_path / "long.gz")
    (tmp_path / "torn.gz").write_bytes(gzip.compress(full)[:-12])  # the gzip stream itself cut short
    with pytest.raises(CnnlabError, match="torn.gz is not a readable gzip file"):
        read_idx(tmp_path / "torn.gz")
    (tmp_path / "head").write_bytes(full[:9])  # ends inside the 3 dimensions
    with pytest.raises(CnnlabError, match="head ends inside its header; the file is truncated"):
        read_idx(tmp_path / "head")


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


def test_a_fifo_is_named_not_read(tmp_path):
    import os

    os.mkfifo(tmp_path / "images-idx3-ubyte")  # reading it would wait for a writer forever
    with pytest.raises(CnnlabError, match="images-idx3-ubyte is a FIFO, not a file; put the official file there"):
        read_idx(tmp_path / "images-idx3-ubyte")

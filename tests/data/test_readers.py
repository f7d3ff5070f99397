import gzip
import pickle

import numpy as np
import pytest

from cnnlab.data import cifar
from cnnlab.data.datasets import load_dataset
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


def test_cifar_batches_load_and_refuse_code(tmp_path):
    folder = tmp_path / cifar.FOLDER
    folder.mkdir()
    data = np.random.default_rng(0).integers(0, 255, (4, 3072), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": [0, 1, 2, 3]}, f, protocol=2)
    x, y = cifar.read_split(folder, ("test_batch",))
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 1, 2, 3]
    assert (x[1, 0].reshape(-1) == data[1, :1024]).all()  # R plane first

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil()}, f, protocol=2)
    with pytest.raises(CnnlabError, match=r"refusing to load (__builtin__|builtins).print"):
        cifar.read_batch(folder / "data_batch_1")


@pytest.mark.realdata
def test_real_datasets_match_their_published_facts(real_data):
    train, test = load_dataset("mnist", real_data)
    assert train.labels[:12].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4, 3, 5]
    assert train.class_counts()[:3] == [5923, 6742, 5958]
    assert abs(train.images.float().mean().item() - 33.318) < 0.01
    train, test = load_dataset("fashion-mnist", real_data)
    assert test.labels[:12].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7, 4, 5]
    assert train.class_counts() == [6000] * 10
    if (real_data / "cifar-10").is_dir():
        train, test = load_dataset("cifar-10", real_data)
        assert train.images.shape == (50000, 3, 32, 32) and train.labels[:5].tolist() == [6, 9, 9, 4, 1]
        assert test.class_counts() == [1000] * 10

"""The dataset registry: locating verified files (local, cached, downloaded from a local server), loading them,
the bundled sample and the real datasets' published facts."""

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.data import datasets as ds
from cnnlab.errors import CnnlabError
from cnnlab.io import RemoteFile


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _idx(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def fake_dataset(file_server):
    """A registered IDX dataset whose official files live on the local server."""
    url, h = file_server
    rng = np.random.default_rng(0)
    blobs = {
        "train-images-idx3-ubyte.gz": _idx(rng.integers(0, 255, (20, 6, 6))),
        "train-labels-idx1-ubyte.gz": _idx(np.arange(20) % 2),
        "t10k-images-idx3-ubyte.gz": _idx(rng.integers(0, 255, (10, 6, 6))),
        "t10k-labels-idx1-ubyte.gz": _idx(np.arange(10) % 2),
    }
    for name, blob in blobs.items():
        h.files["/" + name] = blob
    name = f"fake-{id(blobs)}"
    files = tuple(RemoteFile(n, (f"{url}/{n}",), sha(b), None, len(b)) for n, b in blobs.items())
    ds.DATASETS.add(name, ds.DatasetInfo(name, "fake", ("a", "b"), (1, 6, 6), (20, 10), files))
    yield name, blobs, h
    ds.DATASETS._items.pop(name)


def test_locate_downloads_into_the_cache_then_reuses_it(fake_dataset, tmp_path, monkeypatch):
    name, blobs, h = fake_dataset
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    folder = ds.locate(name)
    assert folder == ds.data_roots()[-1] / name
    train, test = ds.load_dataset(name)
    assert train.images.shape == (20, 1, 6, 6) and test.labels.tolist() == [0, 1] * 5
    h.files.clear()  # offline now: the cached, verified files still serve
    assert ds.locate(name) == folder


def test_corrupt_local_file_is_named_not_used(fake_dataset, tmp_path):
    name, blobs, _ = fake_dataset
    folder = tmp_path / name
    folder.mkdir()
    for n, b in blobs.items():
        (folder / n).write_bytes(b)
    good = bytearray(blobs["t10k-labels-idx1-ubyte.gz"])
    good[len(good) // 2] ^= 0xFF  # same size, one byte flipped
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(good))
    with pytest.raises(CnnlabError, match="t10k-labels-idx1-ubyte.gz: sha256 .* does not match"):
        ds.locate(name, tmp_path)


def test_offline_without_files_says_what_to_put_where(fake_dataset, tmp_path, monkeypatch):
    name, _, h = fake_dataset
    h.files.clear()
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    (tmp_path / "mine").mkdir()
    with pytest.raises(CnnlabError) as err:
        ds.locate(name, tmp_path / "mine")
    msg = str(err.value)
    assert "\n" not in msg
    assert "put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz" in msg
    assert str(tmp_path / "mine" / name) in msg and "HTTP 404" in msg


def test_a_given_data_dir_is_used_without_downloading(fake_dataset, tmp_path, monkeypatch):
    name, blobs, h = fake_dataset
    h.files.clear()
    (tmp_path / name).mkdir()
    for n, b in blobs.items():
        (tmp_path / name / n).write_bytes(b)
    assert ds.locate(name, tmp_path, download=False) == tmp_path / name
    assert ds.where_is(name, tmp_path) == str(tmp_path / name)
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CnnlabError, match="downloads are off"):
        ds.locate(name, tmp_path / "empty", download=False)
    # a data dir that does not exist is a typo: even with the files downloadable it is refused, saying what goes where
    h.files.update({f"/{n}": b for n, b in blobs.items()})
    with pytest.raises(CnnlabError, match=rf"put train-images-idx3-ubyte.gz, .* into {tmp_path / 'typo' / name} .*"
                                          rf"`data_dir` {tmp_path / 'typo'} is not a folder$"):
        ds.locate(name, tmp_path / "typo")


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(CnnlabError, match="unknown dataset 'imagenet'; valid: cifar-10, fashion-mnist"):
        ds.load_dataset("imagenet")


def test_bundled_sample_is_verified_and_stratified():
    train, test = ds.load_dataset("fashion-mnist-sample")
    assert train.images.shape == (6000, 1, 28, 28) and test.images.shape == (1000, 1, 28, 28)
    # one contiguous uint8 block (the channel axis a plain view, not a stride-0 one) and int64 labels
    assert train.images.dtype == torch.uint8 and train.images.stride() == (784, 784, 28, 1)
    assert train.labels.dtype == test.labels.dtype == torch.int64
    assert train.class_counts() == [600] * 10 and test.class_counts() == [100] * 10
    assert sum(Path(ds.SAMPLES_DIR / "fashion-mnist-sample" / f.name).stat().st_size
               for f in ds.DATASETS.get("fashion-mnist-sample").files) < 5e6


def test_the_test_split_alone_reads_no_training_file(monkeypatch):
    _, test = ds.load_dataset("fashion-mnist-sample")
    read = []
    original = ds.read_idx_cached
    monkeypatch.setattr(ds, "read_idx_cached", lambda path: read.append(Path(path).name) or original(path))
    alone = ds.load_test_split("fashion-mnist-sample")
    assert read == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert torch.equal(alone.images, test.images) and torch.equal(alone.labels, test.labels)
    assert alone.name == test.name == "fashion-mnist-sample:test"


@pytest.mark.realdata
def test_real_datasets_match_their_published_facts(real_data):
    train, test = ds.load_dataset("mnist", real_data)
    assert train.labels[:12].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4, 3, 5]
    assert train.class_counts()[:3] == [5923, 6742, 5958]
    assert abs(train.images.float().mean().item() - 33.318) < 0.01
    train, test = ds.load_dataset("fashion-mnist", real_data)
    assert test.labels[:12].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7, 4, 5]
    assert train.class_counts() == [6000] * 10
    train, test = ds.load_dataset("cifar-10", real_data)  # the fixture guarantees it (or skips, or fails in CI)
    assert train.images.shape == (50000, 3, 32, 32) and train.labels[:5].tolist() == [6, 9, 9, 4, 1]
    assert test.class_counts() == [1000] * 10
    alone = ds.load_test_split("cifar-10", real_data)
    assert torch.equal(alone.images, test.images) and torch.equal(alone.labels, test.labels)


def test_a_cache_that_cannot_record_a_verification_still_verifies(tmp_path, monkeypatch):
    """verified.json is a shortcut: a cache folder it cannot write (a CnnlabError from the atomic write) costs a
    re-hash next time, not the run."""
    data = tmp_path / "f.bin"
    data.write_bytes(b"cnnlab")
    spec = RemoteFile("f.bin", ("http://127.0.0.1/f.bin",), sha256=hashlib.sha256(b"cnnlab").hexdigest())

    def refuse(path, text):
        raise CnnlabError(f"cannot write {path}: permission denied; give a path in a folder you can write")

    monkeypatch.setattr(ds, "write_atomic", refuse)
    ds.verify(data, spec)  # no error
    data.write_bytes(b"other!")
    with pytest.raises(CnnlabError):  # and a wrong file is still refused
        ds.verify(data, spec)

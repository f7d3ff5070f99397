"""Downloads against a local HTTP server on 127.0.0.1 serving generated files."""

import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from cnnlab.data import datasets as ds
from cnnlab.data.sources import data_roots
from cnnlab.errors import CnnlabError
from cnnlab.io import RemoteFile, check_file, download_file


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    truncate: set[str] = set()

    def do_GET(self):  # noqa: N802 - http.server API
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # A truncated response: promise the full length, send half, close.
        self.wfile.write(body[: len(body) // 2] if self.path in self.truncate else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.files, _Handler.truncate = {}, set()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler
    httpd.shutdown()


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_good_file_downloads_and_verifies(server, tmp_path):
    url, h = server
    h.files["/a.bin"] = b"x" * 5000
    dest = download_file([url + "/a.bin"], tmp_path / "a.bin", sha256=sha(b"x" * 5000), progress=False)
    assert dest.read_bytes() == b"x" * 5000
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]  # no temp files left


def test_wrong_checksum_is_an_error_and_leaves_nothing(server, tmp_path):
    url, h = server
    h.files["/a.bin"] = b"tampered"
    with pytest.raises(CnnlabError, match="could not download a.bin.*sha256 .* does not match"):
        download_file([url + "/a.bin"], tmp_path / "a.bin", sha256=sha(b"original"), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_truncated_download_is_rejected(server, tmp_path):
    url, h = server
    h.files["/a.bin"] = b"y" * 10000
    h.truncate.add("/a.bin")
    with pytest.raises(CnnlabError, match="could not download a.bin"):
        download_file([url + "/a.bin"], tmp_path / "a.bin", sha256=sha(b"y" * 10000), timeout=5, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_404_falls_through_to_the_next_mirror(server, tmp_path):
    url, h = server
    h.files["/mirror2/a.bin"] = b"ok"
    dest = download_file([url + "/missing/a.bin", url + "/mirror2/a.bin"], tmp_path / "a.bin", sha256=sha(b"ok"),
                         progress=False)
    assert dest.read_bytes() == b"ok"
    with pytest.raises(CnnlabError, match="HTTP 404"):
        download_file([url + "/missing/a.bin"], tmp_path / "b.bin", sha256=sha(b"ok"), progress=False)


def test_check_file_names_the_file(tmp_path):
    f = tmp_path / "train-images-idx3-ubyte.gz"
    f.write_bytes(b"abc")
    with pytest.raises(CnnlabError, match="train-images-idx3-ubyte.gz: 3 bytes, expected 4"):
        check_file(f, RemoteFile(f.name, (), None, None, 4))
    with pytest.raises(CnnlabError, match=r"train-images-idx3-ubyte.gz: md5 .* does not match the published"):
        check_file(f, RemoteFile(f.name, (), None, "0" * 32))


def test_data_root_order(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    assert data_roots(tmp_path / "flag") == [tmp_path / "flag", tmp_path / "env", tmp_path / "cache" / "datasets"]


def _idx(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def fake_dataset(server):
    """A registered IDX dataset whose official files live on the local server."""
    url, h = server
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
    with pytest.raises(CnnlabError) as err:
        ds.locate(name, tmp_path / "mine")
    msg = str(err.value)
    assert "\n" not in msg
    assert "put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz" in msg
    assert str(tmp_path / "mine" / name) in msg and "HTTP 404" in msg


def test_bundled_sample_is_verified_and_stratified():
    train, test = ds.load_dataset("fashion-mnist-sample")
    assert train.images.shape == (6000, 1, 28, 28) and test.images.shape == (1000, 1, 28, 28)
    assert train.class_counts() == [600] * 10 and test.class_counts() == [100] * 10
    assert sum(Path(ds.SAMPLES_DIR / "fashion-mnist-sample" / f.name).stat().st_size
               for f in ds.DATASETS.get("fashion-mnist-sample").files) < 5e6

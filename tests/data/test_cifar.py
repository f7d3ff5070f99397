"""CIFAR-10's python batches: loaded without running code, checked, unpacked from the official archive."""

import io
import pickle
import re
import struct
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from cnnlab.data import cifar
from cnnlab.errors import CnnlabError


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


def test_class_names_and_bad_batches(tmp_path):
    with open(tmp_path / cifar.META, "wb") as f:
        pickle.dump({b"label_names": [b"airplane", b"automobile"]}, f, protocol=2)
    assert cifar.class_names(tmp_path) == ["airplane", "automobile"]
    with open(tmp_path / "wide", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(CnnlabError, match=r"data has shape \(2, 100\), expected a uint8 array \(N, 3072\)"):
        cifar.read_split(tmp_path, ("wide",))
    (tmp_path / "junk").write_bytes(b"\x00garbage")
    with pytest.raises(CnnlabError, match="is not a CIFAR-10 python batch"):
        cifar.read_batch(tmp_path / "junk")
    with pytest.raises(CnnlabError, match="missing not found"):
        cifar.read_batch(tmp_path / "missing")


def test_extract_keeps_only_the_batch_folders_regular_files(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, body in ((f"{cifar.FOLDER}/test_batch", b"batch"), ("elsewhere.txt", b"no")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    folder = cifar.extract(archive, tmp_path / "out")
    assert folder == tmp_path / "out" / cifar.FOLDER and (folder / "test_batch").read_bytes() == b"batch"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [cifar.FOLDER]
    (tmp_path / "bad.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(CnnlabError, match="is not a readable tar.gz"):
        cifar.extract(tmp_path / "bad.tar.gz", tmp_path / "x")


class _Marker:
    """Unpickling this writes a marker file (what a hostile batch would do)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return exec, (f"open({str(self.path)!r}, 'w').write('pwned')",)


def test_a_batch_that_would_run_code_runs_none(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": _Marker(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(CnnlabError, match=r"refusing to load (__builtin__|builtins).exec from a data file"):
        cifar.read_split(tmp_path, ("data_batch_1",))
    assert not marker.exists()


def test_an_array_larger_than_its_file_is_refused_before_allocation(tmp_path):
    class Huge:  # unpickles as numpy.ndarray((10**12,), "u1"): a 1 TB array from a 100-byte file
        def __reduce__(self):
            return np.ndarray, ((10**12,), "u1")

    huge = pickle.dumps(Huge(), protocol=2)
    assert len(huge) < 100
    (tmp_path / "big").write_bytes(huge)
    with pytest.raises(CnnlabError, match=r"refusing to call numpy.ndarray from a data file"):
        cifar.read_batch(tmp_path / "big")
    # the rebuild numpy itself pickles, with a shape its bytes do not fill
    short = pickle.dumps({b"data": np.zeros((2, 3), np.uint8)}, protocol=2).replace(b"K\x02K\x03", b"J\x00\x00\x00\x40K\x03")
    (tmp_path / "short").write_bytes(short)
    with pytest.raises(CnnlabError, match=r"an array of shape \(1073741824, 3\) needs 3221225472 bytes, the file holds 6"):
        cifar.read_batch(tmp_path / "short")


SEGFAULTED = """
import sys
from pathlib import Path
from cnnlab.data import cifar
from cnnlab.errors import CnnlabError
try:
    cifar.read_batch(Path(sys.argv[1]))
except CnnlabError as exc:
    print(exc)
"""


def test_a_crafted_dtype_state_is_an_error_not_a_crash(tmp_path):
    # numpy's dtype.__setstate__ segfaults on this 6-item state (two of its None removed; found by the fuzz
    # test), so the reader must never hand it to numpy: run in a child, where a crash cannot take pytest along
    seed = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, protocol=2)
    crafted = seed.replace(b"NNNJ\xff\xff\xff\xff", b"NJ\xff\xff\xff\xff", 1)
    assert crafted != seed
    (tmp_path / "data_batch_1").write_bytes(crafted)
    done = subprocess.run([sys.executable, "-c", SEGFAULTED, str(tmp_path / "data_batch_1")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "is not a plain number type's" in done.stdout


MEMO = """
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (1024 * 2**20,) * 2)
from cnnlab.data import cifar
from cnnlab.errors import CnnlabError
try:
    cifar.read_batch(Path(sys.argv[1]))
except CnnlabError as exc:
    print(exc)
"""


def test_a_memo_index_in_the_billions_costs_no_memory(tmp_path):
    # 9 bytes: None stored at memo index 2**28. pickle's C unpickler sizes its memo array by that index (4 GiB
    # zeroed; 2**31 got a CI run killed); in a child under a 1 GiB address-space limit that is a MemoryError,
    # with the pure-Python unpickler the file reads as what it is, a None
    (tmp_path / "b").write_bytes(b"\x80\x02N" + b"r" + struct.pack("<I", 2**28) + b".")
    done = subprocess.run([sys.executable, "-c", MEMO, str(tmp_path / "b")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "it holds a NoneType, not a dict" in done.stdout, done.stdout


def test_a_file_far_larger_than_any_batch_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "MAX_BATCH_BYTES", 1000)
    (tmp_path / "b").write_bytes(pickle.dumps({b"data": bytes(2000)}, protocol=2))
    with pytest.raises(CnnlabError, match="is not a CIFAR-10 python batch \\(over 0 MiB; the official batches"):
        cifar.read_batch(tmp_path / "b")
    (tmp_path / "d").mkdir()
    with pytest.raises(CnnlabError, match="d is a directory, not a file; put the official file there"):
        cifar.read_batch(tmp_path / "d")


def test_codecs_other_than_latin1_are_refused(tmp_path):
    import _codecs

    class Hex:  # each hex round doubles the bytes: chained through the memo, a small file could fill memory
        def __reduce__(self):
            return _codecs.encode, (b"abc", "hex")

    (tmp_path / "b").write_bytes(pickle.dumps({b"data": Hex()}, protocol=2))
    with pytest.raises(CnnlabError, match="_codecs.encode is only allowed from text to latin1 bytes"):
        cifar.read_batch(tmp_path / "b")


def test_arrays_of_every_plain_dtype_and_order_round_trip(tmp_path):
    arrays = {k.encode(): np.arange(12).astype(k).reshape(3, 4) for k in ("u1", "<i4", ">i4", "<f8", "?")}
    arrays[b"fortran"] = np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3))
    (tmp_path / "b").write_bytes(pickle.dumps(arrays, protocol=2))
    loaded = cifar.read_batch(tmp_path / "b")
    for key, array in arrays.items():
        assert loaded[key].dtype == array.dtype and (loaded[key] == array).all(), key
    (tmp_path / "o").write_bytes(pickle.dumps({b"data": np.array([None, 1], dtype=object)}, protocol=2))
    with pytest.raises(CnnlabError, match="dtype 'O8' is not a plain number type"):
        cifar.read_batch(tmp_path / "o")


@pytest.mark.parametrize(("batch", "message"), [
    ([1, 2], "it holds a list, not a dict"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "labels are not 2 class numbers 0-9"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "labels are not 2 class numbers 0-9"),
    ({b"data": np.zeros((2, 3072), np.float64), b"labels": [0, 1]}, "expected a uint8 array"),
    ({b"labels": [0, 1]}, "data has shape NoneType"),
])
def test_batches_that_are_not_what_the_official_files_hold_are_refused(tmp_path, batch, message):
    (tmp_path / "b").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(CnnlabError, match=re.escape(message)):
        cifar.read_split(tmp_path, ("b",))


def test_the_official_files_need_only_the_allowed_globals(real_data):
    import pickletools

    folder = real_data / "cifar-10" / cifar.FOLDER
    needed = set()
    for name in (cifar.META, cifar.TEST_BATCH):
        for op, arg, _ in pickletools.genops((folder / name).read_bytes()):
            if op.name in ("GLOBAL", "STACK_GLOBAL"):
                needed.add(tuple(arg.split(" ")))
    assert needed == {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype")}
    assert needed <= cifar._ALLOWED.keys()
    x, y = cifar.read_split(folder, (cifar.TEST_BATCH,))
    assert x.shape == (10000, 3, 32, 32) and y.shape == (10000,) and int(y.max()) == 9
    assert cifar.class_names(folder)[:2] == ["airplane", "automobile"]

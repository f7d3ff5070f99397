"""Reader for CIFAR-10's official "python version" batches (folder or ``.tar.gz``)."""

from __future__ import annotations

import math
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from cnnlab.errors import CnnlabError

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"


# The official batches hold dicts, lists, bytes, ints and one numpy array, rebuilt through these three
# globals (checked with pickletools on the official files); nothing else may be constructed.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 pickles the raw bytes of an array at protocol 2; a pure function
}


class _NoCode(pickle.Unpickler):
    """Unpickler for the CIFAR batches that refuses every class or function except numpy's array rebuild.

    ``numpy.ndarray`` is handed out as a subclass whose constructor refuses arrays larger than the file (a
    pickle can call it with any shape, which would allocate that much memory); the official files only pass
    it to ``_reconstruct`` with shape (0,) and fill it from the file's own bytes.
    """

    def __init__(self, file, *, limit: int, **kw) -> None:
        super().__init__(file, **kw)
        self.limit = limit

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle API
        if (module, name) == ("numpy", "ndarray"):
            return _bounded_ndarray(self.limit)
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _bounded_ndarray(limit: int) -> type:
    class BoundedArray(np.ndarray):
        def __new__(cls, shape, dtype=float, *args, **kwargs):
            dims = (shape,) if isinstance(shape, int) else tuple(shape)
            if any(not isinstance(d, int) or d < 0 for d in dims) or math.prod(dims) * np.dtype(dtype).itemsize > limit:
                raise pickle.UnpicklingError(f"an array of shape {dims} is larger than the file")
            return super().__new__(cls, shape, dtype, *args, **kwargs)

    return BoundedArray


def read_batch(path: Path) -> dict:
    """One batch dict with bytes keys (``b'data'``, ``b'labels'``...), loaded without executing code.

    Raises:
        CnnlabError: the file is missing, or it is not a pickled dict of allowed values (any failure of the
            restricted unpickler on a hostile or damaged file, whatever its type).
    """
    try:
        with open(path, "rb") as f:
            batch = _NoCode(f, limit=os.fstat(f.fileno()).st_size, encoding="bytes").load()
    except FileNotFoundError:
        raise CnnlabError(f"{path} not found") from None
    except Exception as exc:  # noqa: BLE001 - pickle raises anything on crafted bytes; all mean "not a batch"
        raise CnnlabError(f"{path} is not a CIFAR-10 python batch ({type(exc).__name__}: "
                          f"{str(exc)[:120]}); delete it and fetch it again") from None
    if not isinstance(batch, dict):
        raise CnnlabError(f"{path} is not a CIFAR-10 python batch (it holds a {type(batch).__name__}, not a dict); "
                          "delete it and fetch it again")
    return batch


def read_split(folder: Path, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 from the named batch files.

    Raises:
        CnnlabError: a batch is unreadable, or its data or labels are not what the official files hold.
    """
    xs, ys = [], []
    for name in names:
        batch = read_batch(folder / name)
        data, labels = batch.get(b"data"), batch.get(b"labels")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            shape = getattr(data, "shape", type(data).__name__)
            raise CnnlabError(f"{folder / name}: data has shape {shape}, expected a uint8 array (N, 3072)")
        if not isinstance(labels, list) or len(labels) != len(data) or any(
                type(k) is not int or not 0 <= k < 10 for k in labels):
            raise CnnlabError(f"{folder / name}: labels are not {len(data)} class numbers 0-9; the file is corrupt")
        xs.append(np.asarray(data).reshape(-1, 3, 32, 32))  # rows are R plane, G plane, B plane, each row-major
        ys.append(np.asarray(labels, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def class_names(folder: Path) -> list[str]:
    """The class names of ``batches.meta``."""
    names = read_batch(folder / META).get(b"label_names")
    if not isinstance(names, list) or not all(isinstance(n, bytes) for n in names):
        raise CnnlabError(f"{folder / META} holds no list of class names; the file is corrupt")
    return [n.decode(errors="replace") for n in names]


def extract(archive: Path, dest: Path) -> Path:
    """Unpacks the official ``cifar-10-python.tar.gz`` into ``dest`` (regular files only) and returns the batch folder."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(FOLDER + "/")
                       and ".." not in Path(m.name).parts]
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise CnnlabError(f"{archive} is not a readable tar.gz ({exc}); delete it and fetch it again") from None
    return dest / FOLDER

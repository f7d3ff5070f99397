"""Reader for CIFAR-10's official "python version" batches (folder or ``.tar.gz``)."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np

from cnnlab.errors import CnnlabError

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"


# The batches hold dicts, lists, bytes, ints and one numpy array; nothing else may be constructed.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 pickles the raw bytes of an array at protocol 2; a pure function
}


class _NoCode(pickle.Unpickler):
    """Unpickler for the CIFAR batches that refuses every class or function except numpy's array rebuild."""

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle API
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def read_batch(path: Path) -> dict:
    """One batch dict with bytes keys (``b'data'``, ``b'labels'``...), loaded without executing code."""
    try:
        with open(path, "rb") as f:
            return _NoCode(f, encoding="bytes").load()
    except FileNotFoundError:
        raise CnnlabError(f"{path} not found") from None
    except (pickle.UnpicklingError, EOFError, ValueError, OSError) as exc:
        raise CnnlabError(f"{path} is not a CIFAR-10 python batch ({exc}); delete it and fetch it again") from None


def read_split(folder: Path, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 from the named batch files."""
    xs, ys = [], []
    for name in names:
        batch = read_batch(folder / name)
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise CnnlabError(f"{folder / name}: data has shape {data.shape}, expected (N, 3072)")
        xs.append(data.reshape(-1, 3, 32, 32))  # rows are R plane, G plane, B plane, each row-major
        ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def class_names(folder: Path) -> list[str]:
    meta = read_batch(folder / META)
    return [n.decode() for n in meta[b"label_names"]]


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

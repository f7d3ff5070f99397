"""Reader for CIFAR-10's official "python version" batches (folder or ``.tar.gz``)."""

from __future__ import annotations

import io
import math
import pickle
import tarfile
from pathlib import Path

import numpy as np

from cnnlab.errors import CnnlabError
from cnnlab.files import read_bytes

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"


# The official batches hold dicts, lists, bytes, ints and numpy arrays, which a pickle rebuilds through these
# four globals (checked with pickletools on the official files). Each name maps to a small pure-Python stand-in
# that checks its arguments against what numpy's own pickles hold, so no numpy code ever runs on a file's values:
# numpy 2.4's dtype.__setstate__ kills the process with a segmentation fault on a crafted state tuple (found by
# tests/test_fuzz.py), and numpy's _reconstruct allocates whatever shape it is given.
_PLAIN_DTYPES = frozenset(["b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8"])


def _text(value: object) -> str:
    """A pickled name as str: Python 2 pickles (the official files) give bytes under ``encoding="bytes"``."""
    if isinstance(value, bytes):
        return value.decode("latin1")
    if isinstance(value, str):
        return value
    raise pickle.UnpicklingError(f"expected a name, found a {type(value).__name__}")


class _Dtype:
    """``numpy.dtype(code, align, copy)`` for plain number types; BUILD then passes numpy's version-3 state."""

    def __init__(self, code: object, align: object = False, copy: object = True) -> None:
        self.code, self.order = _text(code), "|"
        if self.code not in _PLAIN_DTYPES:
            raise pickle.UnpicklingError(f"dtype {self.code!r} is not a plain number type")

    def __setstate__(self, state: object) -> None:
        # (3, byteorder, subarray, names, fields, elsize, alignment, flags): all but the byte order are fixed
        # for plain number types
        if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3 and state[2:7] == (None,) * 3 +
                (-1, -1) and type(state[7]) is int and _text(state[1]) in ("|", "<", ">", "=")):
            raise pickle.UnpicklingError(f"dtype state {str(state)[:60]} is not a plain number type's")
        self.order = _text(state[1])

    def numpy(self) -> np.dtype:
        dtype = np.dtype(self.code)
        return dtype.newbyteorder(self.order) if self.order in "<>" else dtype


class _NdarrayName:
    """``numpy.ndarray`` as a pickle names it: only ``_reconstruct`` may receive it; calling it is refused."""

    def __new__(cls, *args: object, **kwargs: object) -> None:  # noqa: D102 - a pickle's REDUCE or NEWOBJ
        raise pickle.UnpicklingError("refusing to call numpy.ndarray from a data file")


class _ArrayState:
    """What ``_reconstruct`` returns: BUILD hands it ndarray's state and it keeps the checked array."""

    array: np.ndarray | None = None

    def __setstate__(self, state: object) -> None:
        # ndarray.__reduce__'s state: (1, shape, dtype, is_fortran, raw bytes)
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise pickle.UnpicklingError("an array's state is not (1, shape, dtype, is_fortran, bytes)")
        _, shape, dtype, fortran, raw = state
        if not (isinstance(shape, tuple) and len(shape) <= 32 and all(type(d) is int and d >= 0 for d in shape)
                and isinstance(dtype, _Dtype) and type(fortran) in (bool, int) and isinstance(raw, bytes)):
            raise pickle.UnpicklingError("an array's state is not (1, shape, dtype, is_fortran, bytes)")
        dt = dtype.numpy()
        if math.prod(shape) * dt.itemsize != len(raw):
            raise pickle.UnpicklingError(f"an array of shape {shape} needs {math.prod(shape) * dt.itemsize} "
                                         f"bytes, the file holds {len(raw)}")
        self.array = np.frombuffer(raw, dt).reshape(shape, order="F" if fortran else "C").copy()


def _reconstruct(subtype: object, shape: object, code: object) -> _ArrayState:
    if subtype is not _NdarrayName or shape != (0,) or _text(code) != "b":
        raise pickle.UnpicklingError("_reconstruct is only allowed as numpy pickles call it")
    return _ArrayState()


def _latin1(text: object, encoding: object = "utf-8") -> bytes:
    # how Python 3 pickles raw bytes at protocol 2; any other codec (hex, base64...) could multiply a file's size
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed from text to latin1 bytes")
    return text.encode("latin1")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct, ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NdarrayName, ("numpy", "dtype"): _Dtype, ("_codecs", "encode"): _latin1,
}


# The largest official file is a data batch of 31,035,704 bytes; a file far beyond that is not a batch.
MAX_BATCH_BYTES = 256 * 2**20


class _NoCode(pickle._Unpickler):
    """Unpickler for the CIFAR batches that builds only plain containers and checked stand-ins (``_ALLOWED``).

    It is pickle's pure-Python unpickler, not the C one: the C unpickler keeps its memo as an array indexed by
    the file's own BINPUT numbers, so a 9-byte pickle storing at index 2**28 makes it zero 4 GiB (2**31: an
    out-of-memory kill, as one fuzzed batch did to a CI run); the Python one keeps a dict. It reads from bytes
    already in memory, so a length field that lies cannot make it allocate more than the file.
    """

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle API
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def read_batch(path: Path) -> dict:
    """One batch dict with bytes keys (``b'data'``, ``b'labels'``...), loaded without executing code.

    Raises:
        CnnlabError: the file is missing, or it is not a pickled dict of allowed values (any failure of the
            restricted unpickler on a hostile or damaged file, whatever its type).
    """
    try:  # opened non-blocking and checked to be a regular file: a FIFO cannot hang the read
        data = read_bytes(path, fix="put the official file there", at_most=MAX_BATCH_BYTES + 1)
    except FileNotFoundError:
        raise CnnlabError(f"{path} not found") from None
    if len(data) > MAX_BATCH_BYTES:
        raise CnnlabError(f"{path} is not a CIFAR-10 python batch (over {MAX_BATCH_BYTES // 2**20} MiB; the "
                          "official batches are 31 MB); delete it and fetch it again")
    try:
        batch = _NoCode(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - pickle raises anything on crafted bytes; all mean "not a batch"
        raise CnnlabError(f"{path} is not a CIFAR-10 python batch ({type(exc).__name__}: "
                          f"{str(exc)[:120]}); delete it and fetch it again") from None
    if not isinstance(batch, dict):
        raise CnnlabError(f"{path} is not a CIFAR-10 python batch (it holds a {type(batch).__name__}, not a dict); "
                          "delete it and fetch it again")
    arrays = {key: value.array for key, value in batch.items() if isinstance(value, _ArrayState)}
    if any(array is None for array in arrays.values()):
        raise CnnlabError(f"{path} is not a CIFAR-10 python batch (an array without its data); "
                          "delete it and fetch it again")
    return {**batch, **arrays}


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

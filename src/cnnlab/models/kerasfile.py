"""Reading a Keras model file as untrusted input: its config (bounded JSON) and its variables (checked before read).

``.h5``: the root attribute ``model_config`` (JSON) and the weights under ``model_weights/<layer>/`` in the order
of each group's ``weight_names`` attribute (Keras's ``legacy_h5_format``). ``.keras``: a zip of ``config.json``,
``metadata.json`` and ``model.weights.h5`` whose groups ``layers/<name>/vars/0, 1, ...`` hold each layer's
variables in creation order, the layer's name in the ``vars`` group's ``name`` attribute (Keras's ``saving_lib``).

Nothing the file claims is believed before it is checked against a limit or against what the model needs:

* HDF5 indirection is refused: every step of a path must be a hard link (soft and external links are checked
  with ``get(name, getlink=True)`` before anything is dereferenced), and a variable must be a plain contiguous,
  chunked or compact dataset stored in the file (no external raw storage, no virtual dataset, only HDF5's
  built-in filters, so no plugin library is loaded);
* a variable's shape must be the one its layer needs and its type a real float or integer, checked before
  its data is read; the bytes behind it must be in the file (≤ :data:`MAX_INFLATE`:1, deflate's bound);
* ``.keras`` zip members are sized from the central directory before they are inflated (config.json ≤
  :data:`MAX_CONFIG_BYTES`; the weights ≤ 8 bytes per parameter of the model its config describes, plus
  :data:`WEIGHTS_SLACK`), and encrypted or duplicated members are refused.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cnnlab.errors import CnnlabError

MAX_CONFIG_BYTES = 64 * 2**20  # a model's JSON config (VGG-16's is ~20 KB)
MAX_META_BYTES = 2**20  # metadata.json
MAX_VARIABLES = 16  # variables of one layer (BatchNormalization has 4)
MAX_NAMES = 100_000  # entries of a layer_names / weight_names attribute
WEIGHTS_SLACK = 64 * 2**20  # HDF5's own bytes in model.weights.h5 beyond the variables' data
MAX_INFLATE = 1100  # stored bytes → data bytes: deflate's limit is 1032:1
# HDF5's built-in filters (deflate, shuffle, fletcher32, szip, nbit, scaleoffset) and h5py's lzf: any other id
# would make HDF5 search its plugin path and load a library.
BUILTIN_FILTERS = frozenset({1, 2, 3, 4, 5, 6, 32000})
_STORED_LAYOUTS = frozenset({h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED, h5py.h5d.COMPACT})
_ZIP_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})
READ_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError, zipfile.BadZipFile, EOFError)


@dataclass
class KerasFile:
    """An open Keras model file: its config, and its variables found by layer name on demand.

    Attributes:
        path: the file.
        config: the model config (``{"class_name": ..., "config": ...}``), parsed JSON.
        version: the Keras version that saved it (``"unknown"`` when the file does not say).
    """

    path: Path
    config: Any
    version: str
    _stack: ExitStack = field(repr=False)
    _zip: zipfile.ZipFile | None = field(default=None, repr=False)
    _root: h5py.Group | None = field(default=None, repr=False)
    _vars: dict[str, h5py.Group] | None = field(default=None, repr=False)
    _h5: tuple[h5py.Group, set[str]] | None = field(default=None, repr=False)

    def open_weights(self, params: int) -> None:
        """Opens the variables, for a model of ``params`` parameters (a ``.keras`` file's weights are sized by it)."""
        if self._zip is not None:
            blob = _member(self._zip, "model.weights.h5", 8 * params + WEIGHTS_SLACK, self.path,
                           "8 bytes per parameter of the model its config describes")
            self._root = self._stack.enter_context(h5py.File(io.BytesIO(blob), "r"))

    def variables(self, layer: str) -> list[tuple[str, h5py.Dataset]]:
        """(name, dataset) of the variables stored for ``layer``, in Keras's creation order; none when absent."""
        if self._zip is None:
            if self._h5 is None:
                group = _child(self._root, "model_weights", self.path, "the weights", h5py.Group, missing_ok=True)
                group = self._root if group is None else group
                self._h5 = group, set(_names_attr(group, "layer_names", self.path))
            group, names = self._h5
            return _h5_variables(group, layer, self.path) if layer in names else []
        if self._vars is None:
            self._vars = _zip_layers(self._root, self.path)
        group = self._vars.get(layer)
        if group is None:
            return []
        n = len(group)
        if n > MAX_VARIABLES:
            raise CnnlabError(f"{self.path}: layer {layer!r} stores {n} variables (at most {MAX_VARIABLES}); "
                              "save the model again with model.save()")
        return [(str(i), _dataset(group, str(i), self.path, layer)) for i in range(n)]


@contextmanager
def open_keras(path: Path) -> Iterator[KerasFile]:
    """Opens a ``.h5`` / ``.keras`` file and reads its config; its variables are read later, checked one by one.

    Raises:
        CnnlabError: not a Keras model file, a weights-only file, a config that is not bounded JSON text, or
            a zip member that is encrypted, duplicated or larger than its limit.
    """
    with open(path, "rb") as f:
        magic = f.read(8)
    with ExitStack() as stack:
        try:
            if magic.startswith(b"PK"):
                z = stack.enter_context(zipfile.ZipFile(path))
                config, version = _zip_config(z, path)
                yield KerasFile(path, config, version, stack, _zip=z)
                return
            if magic == b"\x89HDF\r\n\x1a\n":
                root = stack.enter_context(h5py.File(path, "r"))
                config, version = _h5_config(root, path)
                yield KerasFile(path, config, version, stack, _root=root)
                return
        except READ_ERRORS as exc:
            raise CnnlabError(f"{path} is not a readable Keras model file ({type(exc).__name__}: "
                              f"{_short(exc)}); save it again with model.save()") from None
    raise CnnlabError(f"{path} is neither an HDF5 (.h5) nor a zip (.keras) file; pass a file written by model.save()")


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def parse_json(text: bytes | str, what: str, path: Path) -> Any:
    """JSON text → Python values; too deep a nesting, bad UTF-8 or bad JSON is one line."""
    try:
        return json.loads(text)
    except RecursionError:
        raise CnnlabError(f"{path}: {what} nests lists/objects deeper than a JSON reader allows; "
                          "save the model again with model.save()") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4,300 digits
        raise CnnlabError(f"{path}: {what} is not valid JSON ({_short(exc)}); save the model again with model.save()") from None


# ---------------------------------------------------------------------------------------------- zip


def _member(z: zipfile.ZipFile, name: str, limit: int, path: Path, why: str) -> bytes:
    """One zip member's bytes, read only when its declared size is within ``limit`` (and never more)."""
    infos = [i for i in z.infolist() if i.filename == name]
    if len(infos) != 1:
        raise CnnlabError(f"{path} holds {len(infos)} entries named {name}; a .keras file holds one; "
                          "save the model again with model.save()")
    info = infos[0]
    if info.flag_bits & 0x1:
        raise CnnlabError(f"{path}: {name} is encrypted; cnnlab reads unencrypted .keras files as model.save() "
                          "writes them")
    if info.compress_type not in _ZIP_METHODS:
        raise CnnlabError(f"{path}: {name} uses zip compression method {info.compress_type}; save the model again "
                          "with model.save()")
    if info.file_size > limit:
        raise CnnlabError(f"{path}: {name} inflates to {info.file_size:,} bytes, over cnnlab's limit of "
                          f"{limit:,} ({why}); pass an unaltered file written by model.save()")
    with z.open(info) as f:
        data = f.read(limit + 1)
    if len(data) > limit:  # zipfile stops at the declared size; kept so the bound never rests on that alone
        raise CnnlabError(f"{path}: {name} is larger than its declared size; the file is damaged")
    return data


def _zip_config(z: zipfile.ZipFile, path: Path) -> tuple[Any, str]:
    names = z.namelist()
    if "config.json" not in names or "model.weights.h5" not in names:
        raise CnnlabError(f"{path} is a zip but not a Keras 3 .keras file (no config.json / model.weights.h5)")
    if len(names) != len(set(names)):
        dup = sorted({n for n in names if names.count(n) > 1})[0]
        raise CnnlabError(f"{path} holds two zip entries named {dup}; a .keras file holds one of each; "
                          "save the model again with model.save()")
    config = parse_json(_member(z, "config.json", MAX_CONFIG_BYTES, path, "a model config"), "config.json", path)
    meta = {}
    if "metadata.json" in names:
        meta = parse_json(_member(z, "metadata.json", MAX_META_BYTES, path, "metadata"), "metadata.json", path)
    version = meta.get("keras_version", "unknown") if isinstance(meta, dict) else "unknown"
    return config, str(version)[:40]


def _zip_layers(root: h5py.Group, path: Path) -> dict[str, h5py.Group]:
    """Layer name → its ``vars`` group in a ``.keras`` file's weights (``layers/<key>/vars``)."""
    layers = _child(root, "layers", path, "the weights", h5py.Group, missing_ok=True)
    found: dict[str, h5py.Group] = {}
    if layers is None:
        return found
    if len(layers) > MAX_NAMES:
        raise CnnlabError(f"{path}: the weights hold {len(layers):,} layer groups (at most {MAX_NAMES:,})")
    for key in list(layers.keys()):
        group = _child(layers, key, path, f"layer {key!r}", h5py.Group)
        vars_ = _child(group, "vars", path, f"layer {key!r}", h5py.Group, missing_ok=True)
        if vars_ is not None:
            found.setdefault(_text_attr(vars_, "name", path, default=key), vars_)
    return found


# --------------------------------------------------------------------------------------------- HDF5


def _h5_config(root: h5py.File, path: Path) -> tuple[Any, str]:
    if "model_config" not in root.attrs:
        raise CnnlabError(f"{path} holds weights only (no model config: it was written by save_weights); "
                          "save the whole model with model.save('model.h5') or model.save('model.keras')")
    config = parse_json(_text_attr(root, "model_config", path), "the model_config attribute", path)
    group = _child(root, "model_weights", path, "the weights", h5py.Group, missing_ok=True)
    version = "unknown"
    for holder in (group, root):
        if holder is not None and "keras_version" in holder.attrs:
            version = _text_attr(holder, "keras_version", path)
            break
    return config, version[:40]


def _h5_variables(group: h5py.Group, layer: str, path: Path) -> list[tuple[str, h5py.Dataset]]:
    """A ``.h5`` file's variables of ``layer``: ``<group>/<layer>/<each of its weight_names>``, hard links only."""
    lg = _child(group, layer, path, f"layer {layer!r}", h5py.Group)
    names = _names_attr(lg, "weight_names", path)
    if len(names) > MAX_VARIABLES:
        raise CnnlabError(f"{path}: layer {layer!r} names {len(names)} variables (at most {MAX_VARIABLES}); "
                          "save the model again with model.save()")
    out = []
    for name in names:
        node: h5py.Group | h5py.Dataset = lg
        parts = name.split("/")
        for i, part in enumerate(parts):
            kind = h5py.Dataset if i == len(parts) - 1 else h5py.Group
            node = _child(node, part, path, f"layer {layer!r} variable {name!r}", kind)
        out.append((name.rsplit("/", 1)[-1].split(":")[0], node))
    return out


def _child(group: h5py.Group, name: str, path: Path, where: str, kind: type, *, missing_ok: bool = False):
    """``group[name]`` when it is a hard link to a ``kind`` object; soft / external links are never followed."""
    if not name or name in (".", ".."):
        raise CnnlabError(f"{path}: {where}: {name!r} is not a plain HDF5 name; save the model again with model.save()")
    link = group.get(name, getlink=True)
    if link is None:
        if missing_ok:
            return None
        raise CnnlabError(f"{path}: {where}: {name!r} is missing from the file; is the file complete?")
    if not isinstance(link, h5py.HardLink):
        raise CnnlabError(f"{path}: {where}: {name!r} is an HDF5 {type(link).__name__} (to another place or file); "
                          "cnnlab reads only objects stored in the file itself: save the model again with model.save()")
    obj = group[name]
    if not isinstance(obj, kind):
        raise CnnlabError(f"{path}: {where}: {name!r} is a {type(obj).__name__}, not a {kind.__name__}; "
                          "save the model again with model.save()")
    if kind is h5py.Dataset:
        _check_storage(obj, path, where)
    return obj


def _dataset(group: h5py.Group, name: str, path: Path, layer: str) -> h5py.Dataset:
    return _child(group, name, path, f"layer {layer!r} variable {name}", h5py.Dataset)


def _check_storage(d: h5py.Dataset, path: Path, where: str) -> None:
    """A dataset whose data lies in this file: no virtual dataset, no external raw file, no plugin filter."""
    plist = d.id.get_create_plist()
    if d.is_virtual or plist.get_layout() not in _STORED_LAYOUTS:
        raise CnnlabError(f"{path}: {where} is a virtual dataset (its data lies in other files); cnnlab reads only "
                          "data stored in the file itself: save the model again with model.save()")
    if plist.get_external_count() > 0:
        raise CnnlabError(f"{path}: {where} keeps its data in an external file; cnnlab reads only data stored in "
                          "the file itself: save the model again with model.save()")
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code not in BUILTIN_FILTERS:
            raise CnnlabError(f"{path}: {where} needs HDF5 filter {code}, which is not built in; save the model "
                              "again with model.save()")


def _attr(obj: h5py.HLObject, name: str, path: Path, max_items: int) -> Any:
    """An attribute's value, read only when it holds at most ``max_items`` text items."""
    aid = h5py.h5a.open(obj.id, name.encode())
    shape = aid.shape
    n = int(np.prod(shape)) if shape else 1
    kind = aid.dtype.kind
    text = kind in "SU" or h5py.check_string_dtype(aid.dtype) is not None
    if not text or shape is None or len(shape) > 1 or n > max_items or aid.get_storage_size() > MAX_CONFIG_BYTES:
        raise CnnlabError(f"{path}: the {name} attribute is not text (type {aid.dtype}, shape {shape}); "
                          "save the model again with model.save()")
    return obj.attrs[name]


def _text_attr(obj: h5py.HLObject, name: str, path: Path, default: str | None = None) -> str:
    if default is not None and name not in obj.attrs:
        return default
    value = _attr(obj, name, path, 1)
    value = value.reshape(-1)[0] if isinstance(value, np.ndarray) else value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _names_attr(obj: h5py.HLObject, name: str, path: Path) -> list[str]:
    if name not in obj.attrs:
        return []
    values = np.atleast_1d(_attr(obj, name, path, MAX_NAMES))
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def read_variable(d: h5py.Dataset, shape: tuple[int, ...], path: Path, where: str) -> np.ndarray:
    """A variable as float32, after checking that it is a real number array of ``shape`` stored in the file.

    Raises:
        CnnlabError: another shape or type (strings, compound, variable-length, no data), data not in the file.
    """
    check_variable(d, shape, path, where)
    try:
        return np.asarray(d[()], dtype=np.float32)
    except READ_ERRORS as exc:
        raise CnnlabError(f"{path}: {where} cannot be read ({type(exc).__name__}: {_short(exc)}); "
                          "the file is damaged: save the model again with model.save()") from None


def check_variable(d: h5py.Dataset, shape: tuple[int, ...], path: Path, where: str) -> None:
    """Checks a variable's type, shape and stored size without reading its data (see :func:`read_variable`)."""
    if d.shape is None:
        raise CnnlabError(f"{path}: {where} has no data (a null dataspace); save the model again with model.save()")
    if d.dtype.kind not in "fiu" or d.dtype.names is not None or d.dtype.subdtype is not None:
        raise CnnlabError(f"{path}: {where} holds {d.dtype} values, not numbers; weights are float or integer "
                          "arrays: save the model again with model.save()")
    if tuple(d.shape) != tuple(shape):
        raise CnnlabError(f"{path}: {where} has shape {tuple(d.shape)}, the layer needs {tuple(shape)}; "
                          "is this the file the config belongs to?")
    stored, needed = d.id.get_storage_size(), int(np.prod(shape)) * d.dtype.itemsize
    if needed > stored * MAX_INFLATE + 65536:
        raise CnnlabError(f"{path}: {where} claims {needed:,} bytes of data but the file stores {stored:,} for it; "
                          "the file is damaged or incomplete: save the model again with model.save()")

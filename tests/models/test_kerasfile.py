"""Keras model files as hostile input: no HDF5 link or storage leading outside the file, no size believed before
it is checked, no zip member inflated past its limit; each refusal one line naming the problem.

Each case is a small valid file (built here with h5py / zipfile, as Keras lays them out) with one thing changed.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from cnnlab.errors import CnnlabError
from cnnlab.models.keras import read_keras
from cnnlab.models.kerasfile import MAX_CONFIG_BYTES

LAYERS = [{"class_name": "InputLayer", "config": {"name": "input", "batch_input_shape": [None, 2, 2, 3]}},
          {"class_name": "Flatten", "config": {"name": "flatten"}},
          {"class_name": "Dense", "config": {"name": "dense", "units": 2, "activation": "softmax", "use_bias": True}}]
CONFIG = {"class_name": "Sequential", "config": {"name": "m", "layers": LAYERS}}
KERNEL = np.arange(24, dtype=np.float32).reshape(12, 2)


def h5_model(path: Path, change=None, config: object = CONFIG) -> Path:
    """A Keras 2 ``.h5`` of Flatten → Dense(2) on 2x2x3 images; ``change(dense_group)`` alters it."""
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        w = f.create_group("model_weights")
        w.attrs["layer_names"] = [b"flatten", b"dense"]
        w.create_group("flatten").attrs["weight_names"] = np.array([], dtype="S1")
        g = w.create_group("dense")
        g.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
        g["dense/kernel:0"] = KERNEL
        g["dense/bias:0"] = np.ones(2, np.float32)
        if change is not None:
            change(g["dense"])
    return path


def keras_zip(path: Path, members: list[tuple[str, bytes]], **info) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members:
            z.writestr(zipfile.ZipInfo(name, **info) if info else name, data)
    return path


def weights_blob(kernel: np.ndarray = KERNEL) -> bytes:
    blob = io.BytesIO()
    with h5py.File(blob, "w") as f:
        g = f.create_group("layers/dense/vars")
        g.attrs["name"] = "dense"
        g["0"], g["1"] = kernel, np.ones(2, np.float32)
    return blob.getvalue()


def test_the_hand_built_files_read(tmp_path) -> None:
    km = read_keras(h5_model(tmp_path / "m.h5"))
    assert km.params == (26, 26) and km.num_classes == 2
    zipped = keras_zip(tmp_path / "m.keras", [("config.json", json.dumps(CONFIG).encode()),
                                              ("model.weights.h5", weights_blob())])
    assert read_keras(zipped).params == (26, 26)


def _replace(make):
    def change(g: h5py.Group) -> None:
        del g["kernel:0"]
        make(g)
    return change


@pytest.mark.parametrize("make, message", [
    (lambda g: g.__setitem__("kernel:0", h5py.ExternalLink("/etc/passwd", "/x")),
     r"'kernel:0' is an HDF5 ExternalLink \(to another place or file\); cnnlab reads only objects stored in the file"),
    (lambda g: g.__setitem__("kernel:0", h5py.SoftLink("/model_weights/dense/dense/kernel:0")),
     r"'kernel:0' is an HDF5 SoftLink"),
    (lambda g: g.__setitem__("kernel:0", h5py.SoftLink("/model_weights/dense/dense/bias:0")),
     r"'kernel:0' is an HDF5 SoftLink"),
    (lambda g: g.create_dataset("kernel:0", shape=(12, 2), dtype="f4", external=[("/etc/passwd", 0, 96)]),
     r"variable 'dense/kernel:0' keeps its data in an external file; cnnlab reads only data stored in the file"),
    (lambda g: g.create_group("kernel:0"), r"'kernel:0' is a Group, not a Dataset"),
])
def test_hdf5_indirection_is_refused_before_anything_is_followed(tmp_path, make, message) -> None:
    with pytest.raises(CnnlabError, match=message):
        read_keras(h5_model(tmp_path / "m.h5", _replace(make)))


def test_an_external_link_to_a_fifo_is_not_opened(tmp_path) -> None:
    import os

    os.mkfifo(tmp_path / "fifo.h5")  # opening it would block forever: the link must never be followed
    make = _replace(lambda g: g.__setitem__("kernel:0", h5py.ExternalLink(str(tmp_path / "fifo.h5"), "/x")))
    with pytest.raises(CnnlabError, match="ExternalLink"):
        read_keras(h5_model(tmp_path / "m.h5", make))


def test_a_virtual_dataset_is_refused(tmp_path) -> None:
    with h5py.File(tmp_path / "src.h5", "w") as f:
        f["x"] = KERNEL

    def vds(g: h5py.Group) -> None:
        layout = h5py.VirtualLayout(shape=(12, 2), dtype="f4")
        layout[:] = h5py.VirtualSource(str(tmp_path / "src.h5"), "x", shape=(12, 2))
        g.create_virtual_dataset("kernel:0", layout)

    with pytest.raises(CnnlabError, match=r"'dense/kernel:0' is a virtual dataset \(its data lies in other files\)"):
        read_keras(h5_model(tmp_path / "m.h5", _replace(vds)))


def test_an_external_link_in_the_path_to_a_layer_is_refused(tmp_path) -> None:
    path = h5_model(tmp_path / "m.h5")
    with h5py.File(path, "r+") as f:
        del f["model_weights/dense/dense"]
        f["model_weights/dense/dense"] = h5py.ExternalLink(str(path), "/model_weights/dense/dense")
    with pytest.raises(CnnlabError, match=r"layer 'dense' variable 'dense/kernel:0': 'dense' is an HDF5 ExternalLink"):
        read_keras(path)


@pytest.mark.parametrize("make, message", [
    (lambda g: g.create_dataset("kernel:0", shape=(2**20, 2**20), dtype="f4", chunks=(16, 16)),
     r"kernel has shape \(1048576, 1048576\), the layer needs \(12, 2\)"),
    (lambda g: g.create_dataset("kernel:0", data=np.array(["a"] * 24, dtype=object).reshape(12, 2),
                                dtype=h5py.string_dtype()), r"kernel holds object values, not numbers"),
    (lambda g: g.create_dataset("kernel:0", data=np.zeros((12, 2), dtype=[("a", "f4"), ("b", "i4")])),
     r"kernel holds \[\('a', '<f4'\), \('b', '<i4'\)\] values, not numbers"),
    (lambda g: g.create_dataset("kernel:0", (12, 2), dtype=h5py.vlen_dtype(np.float32)), "not numbers"),
    (lambda g: g.create_dataset("kernel:0", shape=None, dtype="f4"), r"kernel has no data \(a null dataspace\)"),
    (lambda g: g.create_dataset("kernel:0", data=1.0), r"kernel has shape \(\), the layer needs \(12, 2\)"),
])
def test_variables_are_checked_before_they_are_read(tmp_path, make, message) -> None:
    with pytest.raises(CnnlabError, match=message):
        read_keras(h5_model(tmp_path / "m.h5", _replace(make)))


def test_an_unallocated_chunked_variable_claims_more_than_the_file_holds(tmp_path) -> None:
    # shape right, storage empty: every value would be HDF5's fill value, nothing the file holds
    big = [*LAYERS[:2], {"class_name": "Dense", "config": {"name": "dense", "units": 2**16, "use_bias": False}},
           {"class_name": "Dense", "config": {"name": "out", "units": 2, "activation": "softmax", "use_bias": False}}]
    config = {"class_name": "Sequential", "config": {"name": "m", "layers": big}}

    def sparse(g: h5py.Group) -> None:
        g.create_dataset("kernel:0", shape=(12, 2**16), dtype="f4", chunks=(12, 1024), compression="gzip")

    path = h5_model(tmp_path / "m.h5", _replace(sparse), config=config)
    with h5py.File(path, "r+") as f:
        f["model_weights/dense"].attrs["weight_names"] = [b"dense/kernel:0"]
    with pytest.raises(CnnlabError, match=r"kernel claims 3,145,728 bytes of data but the file stores 0"):
        read_keras(path)


def test_a_float64_variable_is_a_number_array_and_reads(tmp_path) -> None:
    make = _replace(lambda g: g.create_dataset("kernel:0", data=KERNEL.astype(np.float64)))
    km = read_keras(h5_model(tmp_path / "m.h5", make))
    assert km.state_dict["dense.weight"].dtype.is_floating_point and km.state_dict["dense.weight"].shape == (2, 12)


@pytest.mark.parametrize("value, message", [
    (5, r"the model_config attribute is not text \(type int64, shape \(\)\)"),
    (np.arange(10), "the model_config attribute is not text"),
    (np.void(b"\xff\xfe\x00abc"), "the model_config attribute is not text"),
    ("[" * 100_000 + "]" * 100_000, "the model_config attribute nests lists/objects deeper than a JSON reader allows"),
    ("hello{", r"the model_config attribute is not valid JSON \(Expecting value"),
])
def test_a_model_config_attribute_that_is_not_json_text(tmp_path, value, message) -> None:
    path = h5_model(tmp_path / "m.h5")
    with h5py.File(path, "r+") as f:
        f.attrs["model_config"] = value
    with pytest.raises(CnnlabError, match=message):
        read_keras(path)


def test_a_weight_name_that_is_missing(tmp_path) -> None:
    path = h5_model(tmp_path / "m.h5")
    with h5py.File(path, "r+") as f:
        f["model_weights/dense"].attrs["weight_names"] = [b"dense/nonexist:0", b"../../..:0"]
    with pytest.raises(CnnlabError, match=r"'nonexist:0' is missing from the file; is the file complete\?"):
        read_keras(path)


# ----------------------------------------------------------------------------------------------- zips


def _members(config: bytes = json.dumps(CONFIG).encode(), weights: bytes | None = None) -> list[tuple[str, bytes]]:
    return [("config.json", config), ("model.weights.h5", weights_blob() if weights is None else weights)]


def test_zip_members_are_sized_before_they_are_inflated(tmp_path) -> None:
    # 65 MiB of spaces after the JSON deflate to ~65 KB: the declared size alone must refuse it
    bomb = json.dumps(CONFIG).encode() + b" " * (MAX_CONFIG_BYTES + 2**20)
    path = keras_zip(tmp_path / "cfg.keras", _members(config=bomb))
    assert path.stat().st_size < 2**20
    with pytest.raises(CnnlabError, match=r"config.json inflates to 68,\d{3},\d{3} bytes, over cnnlab's limit of "
                                          r"67,108,864 \(a model config\)"):
        read_keras(path)
    # the weights of a 26-parameter model: 8 bytes a parameter + HDF5's own bytes (64 MiB)
    heavy = weights_blob() + b"\0" * (64 * 2**20 + 2**20)
    path = keras_zip(tmp_path / "w.keras", _members(weights=heavy))
    with pytest.raises(CnnlabError, match=r"model.weights.h5 inflates to .* over cnnlab's limit of 67,109,072 "
                                          r"\(8 bytes per parameter of the model its config describes\)"):
        read_keras(path)


def test_an_encrypted_member_is_refused(tmp_path) -> None:
    path = keras_zip(tmp_path / "m.keras", _members())
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local and central flag bits
        i = data.find(signature)
        while i >= 0:
            data[i + offset] |= 1
            i = data.find(signature, i + 4)
    path.write_bytes(bytes(data))
    with pytest.raises(CnnlabError, match=r"config.json is encrypted; cnnlab reads unencrypted .keras files"):
        read_keras(path)


def test_duplicate_members_are_refused(tmp_path) -> None:
    path = keras_zip(tmp_path / "m.keras", _members())
    with pytest.warns(UserWarning), zipfile.ZipFile(path, "a") as z:  # zipfile warns: "Duplicate name"
        z.writestr("config.json", b"5")
    with pytest.raises(CnnlabError, match="holds two zip entries named config.json; a .keras file holds one of each"):
        read_keras(path)


@pytest.mark.parametrize("members, message", [
    (_members(config=b"\xff\xfe\x00{"), r"config.json is not valid JSON \(Expecting value"),
    (_members(config=b"[" * 200_000 + b"]" * 200_000), "config.json nests lists/objects deeper"),
    (_members(weights=b"\x89HDF\r\n\x1a\n" + b"\0" * 100), "is not a readable Keras model file"),
    (_members(weights=b""), "is not a readable Keras model file"),
    (_members()[:1], r"is a zip but not a Keras 3 .keras file \(no config.json / model.weights.h5\)"),
])
def test_damaged_zips(tmp_path, members, message) -> None:
    with pytest.raises(CnnlabError, match=message):
        read_keras(keras_zip(tmp_path / "m.keras", members))


def test_a_zip_variable_of_the_wrong_shape(tmp_path) -> None:
    path = keras_zip(tmp_path / "m.keras", _members(weights=weights_blob(np.zeros((3, 2), np.float32))))
    with pytest.raises(CnnlabError, match=r"layer 'dense' \(Dense\) kernel has shape \(3, 2\), the layer needs \(12, 2\)"):
        read_keras(path)

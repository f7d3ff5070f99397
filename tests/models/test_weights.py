"""Weight files read as tensors, never as code; strict loading into a model with the offending keys named."""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.models.pretrained import load_pretrained
from cnnlab.models.weights import load_into, load_state_dict_file, load_weights_file

pytestmark = pytest.mark.usefixtures("one_thread")


def build(arch: str, **kw) -> nn.Module:
    """``arch`` with a seed that depends on its name and class count (as in test_pretrained.py)."""
    torch.manual_seed(len(arch) + kw["num_classes"])
    return create_model(arch, **kw)


# --- reading files -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_round_trip_through_a_file_gives_identical_outputs(tmp_path, suffix):
    source = build("mobilenet_v2", num_classes=10, input_shape=(3, 32, 32)).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so buffers matter too
        for m in source.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"weights{suffix}"
    state = source.state_dict()
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))

    torch.manual_seed(1)  # another initialisation than the source's
    fresh = create_model("mobilenet_v2", num_classes=10, input_shape=(3, 32, 32)).eval()
    report = load_pretrained(fresh, load_state_dict_file(path), arch="mobilenet_v2")
    assert report.reinitialized == [] and report.dropped == [] and report.adapted == []
    assert sorted(report.loaded) == sorted(state)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), source(x), rtol=0, atol=0)


def test_checkpoint_wrappers_and_dataparallel_prefix_are_unwrapped(tmp_path):
    state = {"conv.weight": torch.ones(2, 1, 3, 3), "fc.bias": torch.zeros(2)}
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ckpt.pt")
    loaded = load_state_dict_file(tmp_path / "ckpt.pt")
    assert loaded.keys() == state.keys() and torch.equal(loaded["conv.weight"], state["conv.weight"])


class _RunsCode:
    """Unpickling this would create ``marker``: what a malicious model file could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_files_that_would_run_code_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"weight": torch.zeros(1), "payload": _RunsCode(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CnnlabError, match="refused to unpickle"):
        load_state_dict_file(tmp_path / "evil.pth")
    assert not marker.exists()


@pytest.mark.parametrize(("name", "content", "message"), [
    ("junk.pth", b"\x00not a zip or pickle" * 10, "cannot read weights file"),
    ("junk.safetensors", b"\xff" * 64, "cannot read weights file"),
    ("model.h5", b"HDF", "is a Keras model file, not PyTorch weights; make it a run with cnnlab import-keras"),
    ("model.keras", b"PK", "is a Keras model file, not PyTorch weights; make it a run with cnnlab import-keras"),
    ("model.npz", b"PK", "unsupported weight file type '.npz'"),
    ("plain.pth", pickle.dumps({"x": 1}, protocol=4), "cannot read weights file"),  # a pickle, not torch.save's zip
])
def test_unreadable_files_are_one_line_errors(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CnnlabError, match=re.escape(message)) as err:
        load_state_dict_file(tmp_path / name)
    assert "\n" not in str(err.value)


def test_reading_a_plain_pickle_warns_nothing_before_the_error(tmp_path):
    (tmp_path / "plain.pth").write_bytes(pickle.dumps({"x": 1}, protocol=4))
    with warnings.catch_warnings(record=True) as seen, pytest.raises(CnnlabError):
        warnings.simplefilter("always")
        load_state_dict_file(tmp_path / "plain.pth")
    assert [str(w.message) for w in seen] == []  # torch's pickle-protocol notice would print before the error


def test_a_folder_given_as_weights_is_named_a_folder(tmp_path):
    with pytest.raises(CnnlabError, match=r"weights file .* is a folder; give the weight file in it"):
        load_state_dict_file(tmp_path)


def test_a_file_without_a_state_dict_is_rejected(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CnnlabError, match="does not hold a state dict"):
        load_state_dict_file(tmp_path / "list.pth")
    with pytest.raises(CnnlabError, match="does not exist"):
        load_state_dict_file(tmp_path / "missing.pth")


def test_load_weights_file_and_strict_loading(tmp_path):
    model = nn.Sequential(nn.Linear(3, 2))
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    other = nn.Sequential(nn.Linear(3, 2))
    load_into(other, load_weights_file(tmp_path / "w.safetensors"), "w.safetensors")
    assert torch.equal(other[0].weight, model[0].weight)
    with pytest.raises(CnnlabError, match="not found; the run has no saved weights yet"):
        load_weights_file(tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x01" * 16)
    with pytest.raises(CnnlabError, match=r"is not a readable safetensors file \(.*\); train the run again$"):
        load_weights_file(tmp_path / "bad.safetensors")
    with pytest.raises(CnnlabError, match=r"is not a readable safetensors file \(.*\); use the copy$"):
        load_weights_file(tmp_path / "bad.safetensors", fix="use the copy")
    os.mkfifo(tmp_path / "fifo.safetensors")  # safetensors would block reading it
    with pytest.raises(CnnlabError, match="fifo.safetensors is a FIFO, not a file; train the run again"):
        load_weights_file(tmp_path / "fifo.safetensors")
    wrong = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    with pytest.raises(CnnlabError, match=r"w.safetensors does not fit this model \(missing: 1.weight, 1.bias; "
                                          r"shape differs: 0.weight, 0.bias\); was it saved from a different "
                                          r"architecture or class count\?"):
        load_into(wrong, load_weights_file(tmp_path / "w.safetensors"), "w.safetensors")
    with pytest.raises(CnnlabError, match=r"unexpected: 0.weight, 0.bias"):
        load_into(nn.Sequential(nn.Identity(), nn.Linear(3, 2)), model.state_dict(), "m")


@pytest.mark.parametrize("form", ["legacy", "raw pickle"])
def test_older_and_bare_pickles_that_would_run_code_are_refused_too(tmp_path, form):
    import pickle

    marker = tmp_path / "pwned"
    evil = {"weight": torch.zeros(1), "payload": _RunsCode(marker)}
    if form == "legacy":  # the pre-1.6 torch.save format: a bare pickle stream, not a zip
        torch.save(evil, tmp_path / "evil.pth", _use_new_zipfile_serialization=False)
    else:
        (tmp_path / "evil.pth").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(CnnlabError) as err:
        load_state_dict_file(tmp_path / "evil.pth")
    assert "\n" not in str(err.value) and not marker.exists()


def _safetensors_bytes(header: dict, body: bytes) -> bytes:
    import json
    import struct

    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


@pytest.mark.parametrize(("header", "body"), [
    # offsets beyond the data, overlapping, and a length that disagrees with shape × dtype
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8000]}}, b"\0" * 8),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),
    ({"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 8]}}, b"\0" * 8),
    ({"w": {"dtype": "NOPE", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
])
def test_a_safetensors_header_that_lies_is_refused(tmp_path, header, body):
    path = tmp_path / "lying.safetensors"
    path.write_bytes(_safetensors_bytes(header, body))
    for read in (load_state_dict_file, load_weights_file):
        with pytest.raises(CnnlabError, match="(cannot read weights file|is not a readable safetensors file)"):
            read(path)


def test_a_safetensors_header_length_beyond_the_file_is_refused_without_allocating(tmp_path):
    import struct

    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(CnnlabError, match="cannot read weights file"):
        load_state_dict_file(path)


def test_weights_of_the_wrong_shape_or_kind_do_not_load(tmp_path):
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    good = {k: v.clone() for k, v in model.state_dict().items()}
    save_file({**good, "0.weight": torch.zeros(2, 4)}, tmp_path / "shape.safetensors")
    with pytest.raises(CnnlabError, match=r"does not fit this model \(shape differs: 0.weight\)"):
        load_into(model, load_weights_file(tmp_path / "shape.safetensors"), "shape.safetensors")
    save_file({**good, "0.weight": torch.ones(2, 3, dtype=torch.int32)}, tmp_path / "kind.safetensors")
    with pytest.raises(CnnlabError, match=r"does not fit this model \(dtype differs: 0.weight int32 for float32\)"):
        load_into(model, load_weights_file(tmp_path / "kind.safetensors"), "kind.safetensors")
    save_file({**good, "1.num_batches_tracked": torch.zeros((), dtype=torch.float32)}, tmp_path / "f.safetensors")
    with pytest.raises(CnnlabError, match=r"dtype differs: 1.num_batches_tracked float32 for int64"):
        load_into(model, load_weights_file(tmp_path / "f.safetensors"), "f.safetensors")
    assert all(torch.equal(v, good[k]) for k, v in model.state_dict().items())  # nothing was loaded
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in good.items()}
    save_file(half, tmp_path / "half.safetensors")  # another float width is a cast, as torch does
    load_into(model, load_weights_file(tmp_path / "half.safetensors"), "half.safetensors")

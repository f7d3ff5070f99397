"""Checkpoints as plain files: exact round trips, atomic swaps, nothing pickled, damaged folders named."""

import errno
import json
import shutil

import pytest
import torch

from cnnlab.errors import CnnlabError
from cnnlab.training import checkpoint
from cnnlab.training.checkpoint import load_checkpoint, save_checkpoint


def test_checkpoint_round_trip_is_exact(tmp_path, make_model):
    model = make_model()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 1, 12, 12)).sum().backward()
    opt.step()
    state = {"epoch": 3, "optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "nested": {"a": [1, 2.5, None]}}
    save_checkpoint(tmp_path / "ck", model, state)
    fresh = make_model(seed=1)
    back = load_checkpoint(tmp_path / "ck", fresh)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True))
    assert back["epoch"] == 3 and back["nested"] == {"a": [1, 2.5, None]}
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert not list(tmp_path.glob(".ck*"))  # no temp folders left


def test_interrupted_swap_recovers_the_old_checkpoint(tmp_path, make_model):
    model = make_model()
    save_checkpoint(tmp_path / "last", model, {"epoch": 1})
    (tmp_path / "last").rename(tmp_path / ".last.old")  # a crash between the two renames
    assert load_checkpoint(tmp_path / "last")["epoch"] == 1


def test_files_hold_json_and_tensors_only(tmp_path, make_model):
    save_checkpoint(tmp_path / "ck", make_model(), {"epoch": 2, "by_index": {0: torch.ones(2)}, "t": (1, "x")})
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["digest.json", "model.safetensors", "state.json",
                                                                  "state.safetensors"]
    digest = json.loads((tmp_path / "ck" / "digest.json").read_text())  # written last: the files' SHA-256s
    assert sorted(digest["sha256"]) == ["model.safetensors", "state.json", "state.safetensors"]
    meta = json.loads((tmp_path / "ck" / "state.json").read_text())
    assert meta == {"__dict__": [["epoch", 2], ["by_index", {"__dict__": [[0, {"__tensor__": "state.by_index.0"}]]}],
                                 ["t", [1, "x"]]]}
    back = load_checkpoint(tmp_path / "ck")
    assert list(back["by_index"]) == [0] and torch.equal(back["by_index"][0], torch.ones(2))  # int keys stay ints
    assert back["t"] == [1, "x"]


def test_a_second_save_replaces_the_first(tmp_path, make_model):
    save_checkpoint(tmp_path / "last", make_model(), {"epoch": 1})
    save_checkpoint(tmp_path / "last", make_model(), {"epoch": 2})
    assert load_checkpoint(tmp_path / "last")["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["last"]  # no .last.old, no temp folder


def test_state_that_json_cannot_hold_is_refused_and_leaves_nothing(tmp_path, make_model):
    with pytest.raises(TypeError, match="cannot store object at 'state.x' in a checkpoint"):
        save_checkpoint(tmp_path / "ck", make_model(), {"x": object()})
    with pytest.raises(TypeError, match="non-string keys"):
        save_checkpoint(tmp_path / "ck", make_model(), {"x": {(1, 2): 3}})
    assert list(tmp_path.iterdir()) == []


def test_missing_and_damaged_checkpoints_are_named(tmp_path, make_model):
    with pytest.raises(CnnlabError, match="holds no usable checkpoint .no state.json.; nothing to resume from: train the run "
                                         "again with `overwrite`, or start a new run from weights it saved"):
        load_checkpoint(tmp_path / "none")
    save_checkpoint(tmp_path / "ck", make_model(), {"epoch": 1})
    with pytest.raises(CnnlabError, match="does not fit this model"):
        load_checkpoint(tmp_path / "ck", torch.nn.Linear(2, 2))
    (tmp_path / "ck" / "state.json").write_text("{not json")  # a torn or edited file: caught by its digest
    with pytest.raises(CnnlabError, match=r"ck holds no usable checkpoint \(state.json does not match its digest"):
        load_checkpoint(tmp_path / "ck")


def _two_checkpoints(tmp_path, make_model):
    """checkpoints/last (epoch 2) with checkpoints/previous (epoch 1) kept beside it."""
    last, prev = tmp_path / "last", tmp_path / "previous"
    save_checkpoint(last, make_model(), {"epoch": 1}, keep_previous=prev)
    save_checkpoint(last, make_model(seed=1), {"epoch": 2}, keep_previous=prev)
    return last, prev


def test_keep_previous_moves_the_replaced_checkpoint_aside(tmp_path, make_model):
    last, prev = _two_checkpoints(tmp_path, make_model)
    assert load_checkpoint(last)["epoch"] == 2 and load_checkpoint(prev)["epoch"] == 1
    save_checkpoint(last, make_model(), {"epoch": 3}, keep_previous=prev)  # the oldest is dropped
    assert load_checkpoint(last)["epoch"] == 3 and load_checkpoint(prev)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "previous"]


@pytest.mark.parametrize("damage", ["flip", "torn", "gone"])
def test_a_damaged_last_falls_back_to_previous_with_one_note(tmp_path, make_model, damage):
    last, prev = _two_checkpoints(tmp_path, make_model)
    if damage == "flip":  # one bit flipped on disk in the weights
        data = bytearray((last / "model.safetensors").read_bytes())
        data[-1] ^= 1
        (last / "model.safetensors").write_bytes(bytes(data))
        why = "model.safetensors does not match its digest (damaged on disk)"
    elif damage == "torn":  # a crash before digest.json, written last
        (last / "digest.json").unlink()
        why = "no digest.json (written last: the checkpoint was torn while being written)"
    else:  # a crash between moving last to previous and renaming the new one in
        shutil.rmtree(last)
        why = None
    notes = []
    model = make_model(seed=5)
    state = load_checkpoint(last, model, fallback=prev, log=notes.append)
    assert state["epoch"] == 1
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), make_model().state_dict().values(),
                                                 strict=True))  # epoch 1's weights (seed 0), not seed 1's
    if why is None:
        assert notes == []  # nothing to name: last never appeared
    else:
        assert notes == [f"note: {last} is not usable ({why}); resuming from {prev} instead"]


def test_both_damaged_is_an_error_naming_the_newer(tmp_path, make_model):
    last, prev = _two_checkpoints(tmp_path, make_model)
    (last / "digest.json").write_text("{")
    (prev / "state.json").unlink()
    with pytest.raises(CnnlabError, match=r"last holds no usable checkpoint \(digest.json is damaged\)"):
        load_checkpoint(last, fallback=prev)


def test_a_full_disk_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, make_model, monkeypatch):
    last, prev = _two_checkpoints(tmp_path, make_model)
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    real = checkpoint.save_file

    def full(tensors, filename, *a, **kw):  # the second file of the new checkpoint finds the disk full
        if filename.endswith("state.safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real(tensors, filename, *a, **kw)

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(CnnlabError) as err:
        save_checkpoint(last, make_model(seed=2), {"epoch": 3}, keep_previous=prev)
    assert str(err.value) == (f"no space left on {tmp_path} while writing last; freed nothing; the last good "
                              f"checkpoint is {last}")
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == before  # no temp folder
    assert load_checkpoint(last)["epoch"] == 2 and load_checkpoint(prev)["epoch"] == 1


def test_other_write_errors_are_not_dressed_as_a_full_disk(tmp_path, make_model, monkeypatch):
    def broken(*a, **kw):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(checkpoint, "save_file", broken)
    with pytest.raises(OSError, match="Input/output error"):
        save_checkpoint(tmp_path / "last", make_model(), {"epoch": 1})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("digest", ['{"sha256": []}', '{"sha256": {}}', '{"sha256": {"state.json": "x"}}', "[1]",
                                    '{"sha256": {"../../etc/passwd": "x", "model.safetensors": "x", '
                                    '"state.safetensors": "x", "state.json": "x"}}'])
def test_a_digest_that_leaves_files_out_vouches_for_nothing(tmp_path, make_model, digest):
    save_checkpoint(tmp_path / "ck", make_model(), {"epoch": 1})
    (tmp_path / "ck" / "digest.json").write_text(digest)
    with pytest.raises(CnnlabError, match=r"ck holds no usable checkpoint \(digest.json is damaged\)"):
        load_checkpoint(tmp_path / "ck")


def test_plain_json_objects_in_state_json_are_read_with_their_tensors():
    # cnnlab writes every mapping as {"__dict__": [[key, value], ...]} (int keys survive); a state.json edited
    # by hand may hold plain objects: their values are read the same way, tensor references included
    t = torch.arange(3.0)
    state = checkpoint._join({"a": {"__tensor__": "x"}, "b": {"c": [1, {"__tensor__": "x"}]}, "d": None}, {"x": t})
    assert state["a"] is t and state["b"]["c"][0] == 1 and state["b"]["c"][1] is t and state["d"] is None


def test_a_full_disk_names_the_good_checkpoint_left_or_none(tmp_path, make_model, monkeypatch):
    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(CnnlabError, match=r"the last good checkpoint is none yet$"):  # the first save of a run
        save_checkpoint(tmp_path / "last", make_model(), {"epoch": 1}, keep_previous=tmp_path / "previous")
    (tmp_path / "previous").mkdir()  # only the older one exists (last was moved aside, then the save failed)
    with pytest.raises(CnnlabError, match=f"the last good checkpoint is {tmp_path / 'previous'}$"):
        save_checkpoint(tmp_path / "last", make_model(), {"epoch": 1}, keep_previous=tmp_path / "previous")
    with pytest.raises(CnnlabError, match=r"the last good checkpoint is none yet$"):  # no previous asked for
        save_checkpoint(tmp_path / "last", make_model(), {"epoch": 1})


def test_load_errors_name_the_file(tmp_path, make_model):
    import torch.nn as nn

    last = tmp_path / "last"
    save_checkpoint(last, make_model(), {"epoch": 1})
    with pytest.raises(CnnlabError, match=f"^{last / 'model.safetensors'} does not fit this model"):
        load_checkpoint(last, model=nn.Linear(2, 2))
    (last / "state.json").write_text("{not json")  # damaged, with a digest that vouches for it
    digests = json.loads((last / "digest.json").read_text())
    digests["sha256"]["state.json"] = checkpoint.file_digest(last / "state.json")
    (last / "digest.json").write_text(json.dumps(digests))
    with pytest.raises(CnnlabError, match=f"^{last / 'state.json'} is corrupt \\("):
        load_checkpoint(last)

"""``export-metrics``: finished runs as TensorBoard event files (read back with EventAccumulator) or one CSV;
nothing written when refused."""

from __future__ import annotations

import csv
import math
import shutil

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnlab.errors import CnnlabError
from cnnlab.runs.metrics_export import export_metrics
from cnnlab.runs.run_dir import RunDir


def test_tensorboard_events_hold_every_epoch(dnn_run, tmp_path) -> None:
    run = shutil.copytree(dnn_run, tmp_path / "quick")
    history = RunDir(run).read_history()
    (folder,) = export_metrics([run], "tensorboard")
    assert folder == run / "tensorboard"
    ea = EventAccumulator(str(folder))
    ea.Reload()
    assert set(ea.Tags()["scalars"]) == {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr"}
    for tag, key in (("loss/train", "train_loss"), ("accuracy/val", "val_acc")):
        got = [(e.step, e.value) for e in ea.Scalars(tag)]
        assert [s for s, _ in got] == [m["epoch"] for m in history] == [1, 2]
        assert all(math.isclose(v, m[key], rel_tol=1e-6) for (_, v), m in zip(got, history, strict=True))  # float32
    with pytest.raises(CnnlabError, match="already holds event files; pass `overwrite`"):
        export_metrics([run], "tensorboard")
    assert export_metrics([run], "tensorboard", overwrite=True) == [folder]
    assert len(list(folder.iterdir())) == 1  # replaced, not appended to


def test_an_out_folder_gets_one_folder_per_run(dnn_run, tmp_path) -> None:
    other = shutil.copytree(dnn_run, tmp_path / "b" / "quick")  # the same name as dnn_run's folder
    got = export_metrics([dnn_run, other], "tensorboard", out=tmp_path / "tb")
    assert got == [tmp_path / "tb" / "quick", tmp_path / "tb" / "quick-2"]
    assert not (dnn_run / "tensorboard").exists()  # the shared run is left as it was


def test_csv_has_a_row_per_run_and_epoch(dnn_run, small_cnn_run, tmp_path) -> None:
    (path,) = export_metrics([dnn_run, small_cnn_run], "csv", out=tmp_path / "m.csv")
    rows = list(csv.DictReader(path.open()))
    assert [(r["run"], r["epoch"]) for r in rows] == [(str(dnn_run), "1"), (str(dnn_run), "2"), (str(small_cnn_run), "1")]
    assert float(rows[1]["val_acc"]) == RunDir(dnn_run).read_history()[1]["val_acc"]
    with pytest.raises(CnnlabError, match="already exists; pass `overwrite`"):
        export_metrics([dnn_run], "csv", out=path)


def test_refused_exports(dnn_run, tmp_path) -> None:
    with pytest.raises(CnnlabError, match=r"unknown `format` 'json'; valid: csv, tensorboard"):
        export_metrics([dnn_run], "json")
    empty = RunDir(tmp_path / "empty")
    empty.path.mkdir()
    shutil.copy(dnn_run / "config.yaml", empty.path)
    empty.update_meta(status="done")
    with pytest.raises(CnnlabError, match="has no finished epoch"):
        export_metrics([dnn_run, empty.path], "csv", out=tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()


def test_a_run_named_twice_is_exported_once(dnn_run, tmp_path) -> None:
    # a shell glob and a name (`runs/* runs/quick`) give the same run twice, once with a trailing slash
    dup = tmp_path / "dup"
    shutil.copytree(dnn_run, dup)
    assert export_metrics([dup, f"{dup}/"], "tensorboard") == [dup / "tensorboard"]
    (path,) = export_metrics([dup, f"{dup}/"], "csv", out=tmp_path / "m.csv")
    assert [r["epoch"] for r in csv.DictReader(path.open())] == ["1", "2"]


def test_outputs_that_cannot_be_written_are_one_line_errors(dnn_run, tmp_path) -> None:
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(CnnlabError, match=r"cannot write .*a.csv/quick: .*a.csv is a file, not a folder"):
        export_metrics([dnn_run], "tensorboard", out=tmp_path / "a.csv")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CnnlabError, match=r"cannot write .*folder: it is a folder; give a file name, e.g. "
                                          r".*folder/metrics.csv$"):  # was folder/folder
        export_metrics([dnn_run], "csv", out=tmp_path / "folder", overwrite=True)
    with pytest.raises(CnnlabError, match=r"it is a folder; give a file name, e.g. .*folder/metrics.csv$"):
        export_metrics([dnn_run], "csv", out=tmp_path / "folder")
    assert (tmp_path / "a.csv").read_text() == "x" and not any((tmp_path / "folder").iterdir())


def test_runs_with_live_events_are_kept_and_the_others_exported(dnn_run, tmp_path) -> None:
    # `export-metrics runs/*` where a newer run was logged live (--log tensorboard): its richer events stay
    live, old = tmp_path / "live", tmp_path / "old"
    shutil.copytree(dnn_run, live)
    shutil.copytree(dnn_run, old)
    (live / "tensorboard").mkdir()
    (live / "tensorboard" / "events.out.tfevents.1.live").write_bytes(b"live")
    notes: list[str] = []
    assert export_metrics([live, old], "tensorboard", log=notes.append) == [old / "tensorboard"]
    assert (live / "tensorboard" / "events.out.tfevents.1.live").read_bytes() == b"live"
    assert notes == [f"note: left 1 run(s) whose tensorboard/ already holds events as they are: {live} (exporting "
                     "with overwrite replaces them)"]
    with pytest.raises(CnnlabError, match=r"every run already holds event files"):
        export_metrics([live, old], "tensorboard", log=notes.append)
    with pytest.raises(CnnlabError, match=r"live/tensorboard already holds event files; pass `overwrite`"):
        export_metrics([live], "tensorboard")  # the one run named: refused as any existing output

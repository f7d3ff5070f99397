"""The runs index: what a row says, compare folders, ids, broken folders, symlinks, liveness, incremental
re-reads, and 1,000 generated run folders."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import yaml

import cnnlab.app.dashboard.index as mod
from cnnlab.app.dashboard.index import RunIndex, make_id, scan
from cnnlab.config import dump_yaml
from cnnlab.runs.options import experiment_config

H = [{"epoch": 1, "val_loss": 0.5, "val_acc": 0.80}, {"epoch": 2, "val_loss": 0.4, "val_acc": 0.85},
     {"epoch": 3, "val_loss": 0.45, "val_acc": 0.88}]


def test_a_row_holds_the_runs_facts_and_the_one_best_epoch(tmp_path, make_run):
    make_run(tmp_path, "a", history=H, model="cnn_64x2", dataset="fashion-mnist", test_acc=0.91, epochs=3)
    (row,) = RunIndex(tmp_path).rows()
    assert (row.id, row.name, row.status, row.model, row.dataset) == ("a", "a", "finished", "cnn_64x2", "fashion-mnist")
    assert (row.epochs, row.epochs_planned, row.params, row.test_acc, row.wall_seconds) == (3, 3, 1000, 0.91, 12.5)
    # by val_loss (the run's monitor) epoch 2 is best, though epoch 3 has the higher val_acc
    assert (row.best_epoch, row.best_val_acc, row.monitor) == (2, 0.85, "val_loss")
    assert row.started == "2026-01-02T03:04:05"


def test_run_json_of_current_runs_spares_parsing_the_config(tmp_path, make_run):
    run = make_run(tmp_path, "layers", history=H, model=None, model_layers=6, min_delta=0.1)
    (run / "config.yaml").write_text("this: [is not read")
    (row,) = RunIndex(tmp_path).rows()
    assert row.model == "custom (6 layers)" and row.status == "finished"
    assert row.best_epoch == 1  # 0.4 beats 0.5 by exactly min_delta 0.1: not an improvement


def test_the_monitor_and_min_delta_of_the_run_decide(tmp_path, make_run):
    make_run(tmp_path, "acc", history=H, monitor="val_acc", mode="max")
    (row,) = RunIndex(tmp_path).rows()
    assert (row.best_epoch, row.best_val_acc) == (3, 0.88)


def test_compare_folders_and_nested_runs_get_path_ids(tmp_path, make_run):
    make_run(tmp_path, "solo")
    cmp = tmp_path / "compare-lr"
    make_run(cmp, "lr-0.01")
    make_run(cmp, "lr 0.1")  # a space: the id is cleaned and made unique by a hash
    (cmp / "compare.json").write_text("{}")
    make_run(tmp_path / "project" / "week1", "deep")
    rows = {r.name: r for r in RunIndex(tmp_path).rows()}
    assert set(rows) == {"solo", "compare-lr/lr-0.01", "compare-lr/lr 0.1", "project/week1/deep"}
    assert rows["compare-lr/lr-0.01"].id == "compare-lr~lr-0.01" and rows["compare-lr/lr-0.01"].group == "compare-lr"
    assert rows["solo"].group is None and rows["project/week1/deep"].id == "project~week1~deep"
    odd = rows["compare-lr/lr 0.1"].id
    assert odd.startswith("compare-lr~lr-0.1-") and odd == make_id("compare-lr/lr 0.1") != make_id("compare-lr/lr_0.1")


def test_runs_dir_may_be_a_run_itself(tmp_path, make_run):
    run = make_run(tmp_path, "only")
    (row,) = RunIndex(run).rows()
    assert (row.id, row.name) == ("only", "only")


def test_fifos_in_a_run_are_listed_as_broken_not_waited_on(tmp_path, make_run):
    import os

    for name in ("run.json", "metrics.jsonl"):
        make_run(tmp_path, name)
        (tmp_path / name / name).unlink()
        os.mkfifo(tmp_path / name / name)  # reading it by name would hang the dashboard's listing
    rows = {r.name: r for r in RunIndex(tmp_path).rows()}
    assert rows["run.json"].error.startswith(f"{tmp_path}/run.json/run.json is a FIFO, not a file; restore it")
    assert rows["metrics.jsonl"].error.startswith(f"{tmp_path}/metrics.jsonl/metrics.jsonl is a FIFO, not a file")


def test_damaged_folders_are_listed_as_broken_with_the_reason(tmp_path, make_run):
    make_run(tmp_path, "bad-json")
    (tmp_path / "bad-json" / "run.json").write_text("{not json")
    make_run(tmp_path, "bad-metrics")
    (tmp_path / "bad-metrics" / "metrics.jsonl").write_text('{"epoch": 1}\n{oops\n')
    make_run(tmp_path, "bad-yaml")
    (tmp_path / "bad-yaml" / "config.yaml").write_text("model: [unclosed\n")
    (tmp_path / "no-meta").mkdir()
    (tmp_path / "no-meta" / "config.yaml").write_text("model: {name: x}\n")
    make_run(tmp_path, "no-config")
    (tmp_path / "no-config" / "config.yaml").unlink()  # run.json alone: every page of it would fail
    (tmp_path / "not-a-run").mkdir()  # neither file: not listed at all
    rows = {r.name: r for r in RunIndex(tmp_path).rows()}
    assert set(rows) == {"bad-json", "bad-metrics", "bad-yaml", "no-meta", "no-config"}
    assert all(r.status == "broken" for r in rows.values())
    assert rows["bad-json"].error.startswith(f"{tmp_path}/bad-json/run.json is not valid JSON (")
    assert "line 2 is not valid JSON" in rows["bad-metrics"].error
    assert "no run.json" in rows["no-meta"].error
    assert rows["no-config"].error == "no config.yaml (the run's config is gone; the run directory is damaged)"


def test_hidden_folders_and_symlinks_out_of_the_root_are_skipped(tmp_path, make_run):
    root, outside = tmp_path / "runs", tmp_path / "elsewhere"
    make_run(root, "inside")
    make_run(root / ".cache", "hidden")
    make_run(outside, "secret")
    os.symlink(outside / "secret", root / "link-out")
    os.symlink(root / "inside", root / "link-in")  # a link that stays inside RUNS_DIR is fine
    assert sorted(rel for _, rel, _ in scan(root)) == ["inside", "link-in"]


def test_a_dead_trainer_makes_a_running_run_interrupted(tmp_path, make_run):
    run = make_run(tmp_path, "r", status="running")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / "progress.json").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    index = RunIndex(tmp_path, max_age=0)
    (row,) = index.rows()
    assert row.status == "interrupted" and "process is gone" in row.error
    (run / "progress.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    assert index.rows()[0].status == "running"  # alive again (a resume): running


def test_files_are_read_again_only_when_they_change(tmp_path, make_run, monkeypatch):
    run = make_run(tmp_path, "r", status="running", history=H[:1])
    index = RunIndex(tmp_path, max_age=0)
    assert index.rows()[0].epochs == 1
    reads = []
    original = mod.read_row
    monkeypatch.setattr(mod, "read_row", lambda *a: reads.append(a[2]) or original(*a))
    index.rows()
    assert reads == []  # nothing changed: the row is reused
    (run / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in H))
    assert index.rows()[0].epochs == 3 and reads == ["r"]


def test_get_finds_a_new_run_at_once(tmp_path, make_run):
    index = RunIndex(tmp_path, max_age=3600)
    assert index.rows() == []
    make_run(tmp_path, "new")
    assert index.get("new").name == "new" and index.get("nope") is None


def test_a_thousand_generated_runs(tmp_path, make_run):
    for i in range(1000):
        make_run(tmp_path, f"run-{i:04d}", history=[{"epoch": 1, "val_loss": 1.0 / (i + 1), "val_acc": i / 1000}],
                 test_acc=i / 1000)
    rows = RunIndex(tmp_path).rows()
    assert len(rows) == 1000 and rows[0].name == "run-0000" and rows[-1].best_val_acc == 0.999
    assert len({r.id for r in rows}) == 1000


def test_a_stored_index_spares_the_next_server_the_reading(tmp_path, make_run, monkeypatch):
    root, store = tmp_path / "runs", tmp_path / "cache" / "index.json"
    for name in ("a", "b", "c"):
        make_run(root, name, history=H)
    first = RunIndex(root, store=store).rows()
    assert store.is_file()
    reads = []
    original = mod.read_row
    monkeypatch.setattr(mod, "read_row", lambda *a: reads.append(a[2]) or original(*a))
    again = RunIndex(root, store=store).rows()
    assert [r.to_dict() for r in again] == [r.to_dict() for r in first] and reads == []
    assert again[0].path == root / "a"
    (root / "b" / "metrics.jsonl").write_text(json.dumps(H[0]) + "\n")  # b changed since
    assert RunIndex(root, store=store).rows()[1].epochs == 1 and reads == ["b"]
    assert RunIndex(tmp_path / "runs-elsewhere", store=store).rows() == []  # another root ignores it
    store.write_text("{damaged")
    assert len(RunIndex(root, store=store).rows()) == 3


def test_top_sections_of_a_config_parse_to_the_same_values():
    text = dump_yaml(experiment_config("fashion_mnist_cnn32"))
    whole = yaml.safe_load(text)
    part = yaml.safe_load(mod.top_sections(text, ("model", "callbacks")))
    assert part == {"model": whole["model"], "callbacks": whole["callbacks"]} and len(part["model"]["layers"]) == 7
    odd = "# a comment\nmodel: {name: x}\ndata:\n  dataset: mnist\ncallbacks:\n  min_delta: 0.5\n"
    assert yaml.safe_load(mod.top_sections(odd, ("model", "callbacks"))) == {"model": {"name": "x"},
                                                                              "callbacks": {"min_delta": 0.5}}

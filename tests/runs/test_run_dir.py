"""The run directory: creating without clobbering, opening, the files it holds, names for new runs."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading

import pytest

from cnnlab.config import load_config
from cnnlab.errors import CnnlabError
from cnnlab.runs.run_dir import RunDir, RunLock, default_run_dir, numbered, prepare_folder, safe_name


def _run(path):
    run = RunDir.create(path)
    run.write_config(load_config())
    run.update_meta(status="running")
    return run


def test_create_never_clobbers_and_overwrites_only_runs(tmp_path):
    run = _run(tmp_path / "run")
    (run.path / "metrics.jsonl").write_text("precious\n")
    with pytest.raises(CnnlabError, match=r"already exists; pass `overwrite` to replace it, `resume` .* to "
                                          r"continue it, or choose another `out`") as err:
        RunDir.create(run.path)
    assert "\n" not in str(err.value)
    assert (run.path / "metrics.jsonl").read_text() == "precious\n"
    again = RunDir.create(run.path, overwrite=True)
    assert again.path == run.path and [p.name for p in run.path.iterdir()] == [".lock"]  # held while emptied
    assert again.lock is None and (run.path / ".lock").read_text() == ""

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    with pytest.raises(CnnlabError, match=r"is not a cnnlab run directory \(no run.json\); refusing to overwrite"):
        RunDir.create(mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "precious"
    (tmp_path / "empty").mkdir()
    assert RunDir.create(tmp_path / "empty").path == tmp_path / "empty"  # an empty folder is used as it is


def test_prepare_folder_names_what_it_refuses(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(CnnlabError) as err:
        prepare_folder(tmp_path, overwrite=False, marker="compare.json", what="compare folder")
    assert "resume" not in str(err.value) and "already exists; pass `overwrite`" in str(err.value)
    with pytest.raises(CnnlabError, match=r"not a cnnlab compare folder \(no compare.json\)"):
        prepare_folder(tmp_path, overwrite=True, marker="compare.json", what="compare folder")
    (tmp_path / "compare.json").write_text("{}")
    assert prepare_folder(tmp_path, overwrite=True, marker="compare.json", what="compare folder") == tmp_path
    assert list(tmp_path.iterdir()) == []


def test_open_says_what_is_missing(tmp_path):
    with pytest.raises(CnnlabError, match="is not a directory; pass a run directory written by cnnlab train"):
        RunDir.open(tmp_path / "nope")
    with pytest.raises(CnnlabError, match=r"is not a cnnlab run directory \(no config.yaml / run.json\)"):
        RunDir.open(tmp_path)
    run = _run(tmp_path / "run")
    assert RunDir.open(run.path).read_config() == load_config()


def test_history_round_trip_and_csv(tmp_path):
    run = _run(tmp_path / "run")
    assert run.read_history() == []
    history = [{"epoch": 1, "train_loss": 0.5, "train_acc": 0.8, "val_loss": None, "val_acc": None, "seconds": 1.5,
                "lr": 0.001, "extra": "not in the csv"}]
    run.write_history(history)
    assert run.read_history() == history
    assert run.file("history.csv").read_text().splitlines() == [
        "epoch,train_loss,train_acc,val_loss,val_acc,seconds,lr", "1,0.5,0.8,,,1.5,0.001"]
    run.write_history(history[:0])  # rewritten, never appended
    assert run.read_history() == []
    run.file("metrics.jsonl").write_text('{"epoch": 1}\nnot json\n')
    with pytest.raises(CnnlabError, match="metrics.jsonl line 2 is not valid JSON .*; restore it from a backup or train the run again"):
        run.read_history()


def test_meta_updates_merge_and_stamp(tmp_path):
    run = _run(tmp_path / "run")
    run.update_meta(epochs=3)
    run.update_meta(status="done")
    meta = json.loads(run.file("run.json").read_text())
    assert meta["status"] == "done" and meta["epochs"] == 3
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", meta["updated"])
    assert run.meta == meta
    run.file("run.json").write_text("{broken")
    with pytest.raises(CnnlabError, match=r"run.json is not valid JSON \(Expecting property name.*\); restore it from a backup or train the run again"):
        _ = run.meta


@pytest.mark.parametrize("name", ["config.yaml", "run.json"])
@pytest.mark.parametrize("make, kind", [(os.mkfifo, "a FIFO"), (os.mkdir, "a directory"),
                                        (lambda p: os.symlink(p.name, p), "a symbolic link that loops")])
def test_open_names_what_stands_where_a_run_file_belongs(tmp_path, name, make, kind):
    run = _run(tmp_path / "run")
    run.file(name).unlink()
    make(run.file(name))
    with pytest.raises(CnnlabError, match=f"{name} is {kind}(, not a file)?; restore it from a backup or train"):
        RunDir.open(run.path)


def test_a_fifo_metrics_file_is_refused_at_once(tmp_path):
    run = _run(tmp_path / "run")
    os.mkfifo(run.file("metrics.jsonl"))  # reading it by name would wait for a writer forever
    with pytest.raises(CnnlabError, match="metrics.jsonl is a FIFO, not a file"):
        run.read_history()


@pytest.mark.parametrize("text, why", [
    ("[" * 100000 + "]" * 100000, "line 1 is damaged .JSON nested too deeply."),
    ('{"epoch": 1}\n[1]\n', "line 2 is a JSON list, not an object"),
    ("5\n", "line 1 is a JSON int, not an object"),
    ('{"epoch": 1, "train_loss": "x"}\n', "line 1 field 'train_loss' is 'x', not a number"),
    ('{"train_loss": 1}\n', "line 1 field 'epoch' is null, not a positive integer"),
])
def test_damaged_metrics_rows_are_named(tmp_path, text, why):
    run = _run(tmp_path / "run")
    run.file("metrics.jsonl").write_text(text)
    with pytest.raises(CnnlabError, match=f"metrics.jsonl {why}; restore it"):
        run.read_history()


@pytest.mark.parametrize("text, why", [
    ("[" * 100000 + "]" * 100000, "is damaged .JSON nested too deeply."),
    ("[1, 2]", "holds a JSON list, not an object"),
    ('{"classes": "zzz"}', "field 'classes' is 'zzz', not a non-empty list of class names"),
    ('{"normalizer": null}', "field 'normalizer' is null, not a mapping"),
    ('{"input_shape": [1, 28]}', r"field 'input_shape' is \[1, 28\], not a list \[channels, height, width\]"),
])
def test_damaged_meta_is_named_by_field(tmp_path, text, why):
    run = _run(tmp_path / "run")
    run.file("run.json").write_text(text)
    with pytest.raises(CnnlabError, match=f"run.json {why}"):
        _ = run.meta


@pytest.mark.parametrize("text, why", [("", "section 'data' is missing"), ("data: 3\n", "section 'data' is 3, not a")])
def test_a_run_config_must_be_what_train_writes(tmp_path, text, why):
    run = _run(tmp_path / "run")
    run.file("config.yaml").write_text(text)  # empty: would read as the default config, another dataset
    with pytest.raises(CnnlabError, match=f"config.yaml {why}"):
        run.read_config()


def test_json_files_and_weights_path(tmp_path):
    run = _run(tmp_path / "run")
    run.write_json("results.json", {"test_acc": 0.5})
    assert run.read_json("results.json") == {"test_acc": 0.5}
    with pytest.raises(CnnlabError, match="nope.json not found; has the run finished?"):
        run.read_json("nope.json")
    run.file("bad.json").write_text("[1,")
    with pytest.raises(CnnlabError, match="bad.json is not valid JSON"):
        run.read_json("bad.json")
    with pytest.raises(CnnlabError, match=r"has no weights yet \(no model.safetensors or checkpoints/last\)"):
        run.weights_path()
    last = run.checkpoints / "last" / "model.safetensors"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    assert run.weights_path() == last  # a run that did not finish: its last checkpoint
    run.file("model.safetensors").write_bytes(b"")
    assert run.weights_path() == run.file("model.safetensors")
    assert run.figures == run.path / "figures"


def test_names_for_new_runs(tmp_path):
    assert safe_name("cnn 64/x2: mnist") == "cnn-64-x2-mnist"
    assert safe_name("a.b_c-d") == "a.b_c-d" and safe_name("///") == "run"
    assert numbered(tmp_path / "r") == tmp_path / "r"
    (tmp_path / "r").mkdir()
    (tmp_path / "r-2").mkdir()
    assert numbered(tmp_path / "r") == tmp_path / "r-3"
    cfg = load_config(None, [("model.name", "dnn_128"), ("data.dataset", "mnist")])
    assert default_run_dir(cfg, tmp_path) == tmp_path / "dnn_128-mnist"
    named = load_config(None, [("name", "my run")])
    assert default_run_dir(named, tmp_path) == tmp_path / "my-run"
    layers = load_config(None, [("model.name", None), ("model.layers", [{"type": "Flatten"}])])
    assert default_run_dir(layers, tmp_path) == tmp_path / "custom-fashion-mnist"


# ----------------------------------------------------------------------------------- one writer per run

HOLD = ("import sys, time\nfrom cnnlab.runs.run_dir import RunLock\nRunLock(sys.argv[1]).acquire()\n"
        "print('held', flush=True)\ntime.sleep(120)\n")


@pytest.fixture
def holder():
    """``holder(folder)``: a separate process that takes the run lock of ``folder`` and keeps it (killed at the
    end of the test)."""
    procs = []

    def start(folder):
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                                env=os.environ.copy())
        procs.append(proc)
        assert proc.stdout.readline() == b"held\n"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_held_lock_is_refused_naming_the_pid_and_host(tmp_path, holder):
    proc = holder(tmp_path)
    with pytest.raises(CnnlabError) as err:
        RunLock(tmp_path).acquire()
    assert str(err.value) == (f"{tmp_path} is being trained by process {proc.pid} on {socket.gethostname()}; "
                              "wait for it to end or stop it")
    assert (tmp_path / ".lock").read_text() == f"{proc.pid} {socket.gethostname()}\n"  # the owner's line is kept


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, holder):
    proc = holder(tmp_path)
    proc.send_signal(signal.SIGKILL)  # the kernel drops its flock; the file still names the dead pid
    proc.wait()
    assert (tmp_path / ".lock").read_text().split()[0] == str(proc.pid)
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    assert (tmp_path / ".lock").read_text() == ""  # released: no owner named
    (tmp_path / ".lock").write_text("999999 elsewhere\n")  # a file naming an owner that holds no flock
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text().startswith(f"{os.getpid()} ")


def test_of_racing_writers_exactly_one_gets_the_lock(tmp_path):
    # flock conflicts between open file descriptions, so threads with their own RunLock race like processes
    wins = []
    for _ in range(RACES):
        barrier = threading.Barrier(4)
        got: list[RunLock] = []

        def attempt(barrier=barrier, got=got):
            barrier.wait()
            with contextlib.suppress(CnnlabError):
                got.append(RunLock(tmp_path).acquire())

        threads = [threading.Thread(target=attempt) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wins.append(len(got))
        for lock in got:
            lock.release()
    assert wins == [1] * RACES


RACES = 200  # rounds of 4 racing writers (docs/reliability.md counts them)


def test_overwrite_is_refused_while_the_run_trains(tmp_path, holder):
    run = _run(tmp_path / "run")
    (run.path / "metrics.jsonl").write_text("precious\n")
    proc = holder(run.path)
    with pytest.raises(CnnlabError, match=rf"run is being trained by process {proc.pid} on "):
        RunDir.create(run.path, overwrite=True)
    assert (run.path / "metrics.jsonl").read_text() == "precious\n"
    proc.kill()
    proc.wait()
    fresh = RunDir.create(run.path, overwrite=True, lock=True)  # free again: replaced, and locked throughout
    assert [p.name for p in fresh.path.iterdir()] == [".lock"]
    with pytest.raises(CnnlabError, match=rf"run is being trained by process {os.getpid()} "):
        RunLock(run.path).acquire()  # no one can start training it before the new run writes a file
    fresh.lock.release()
    new = RunDir.create(tmp_path / "new", lock=True)
    assert new.lock is not None and (new.path / ".lock").read_text().startswith(f"{os.getpid()} ")
    new.lock.release()


def test_remove_temp_files_clears_what_a_killed_writer_left(tmp_path):
    run = _run(tmp_path / "run")
    (run.path / ".metrics.jsonl.abc123.tmp").write_text("half")
    (run.checkpoints / ".last.x1y2.tmp").mkdir(parents=True)
    (run.checkpoints / ".last.x1y2.tmp" / "model.safetensors").write_bytes(b"half")
    (run.checkpoints / "last").mkdir()
    assert run.remove_temp_files() == [".metrics.jsonl.abc123.tmp", "checkpoints/.last.x1y2.tmp"]
    assert sorted(p.name for p in run.path.iterdir()) == ["checkpoints", "config.yaml", "run.json"]
    assert [p.name for p in run.checkpoints.iterdir()] == ["last"]
    assert run.remove_temp_files() == []


def test_weights_path_finds_the_checkpoint_a_training_is_swapping(tmp_path):
    run = _run(tmp_path / "run")
    for name in ("previous", ".last.old", "last"):  # the names a checkpoint has during a swap, latest last
        (run.checkpoints / name).mkdir(parents=True)
        (run.checkpoints / name / "model.safetensors").write_bytes(b"w")
        assert run.weights_path() == run.checkpoints / name / "model.safetensors"
    (run.path / "model.safetensors").write_bytes(b"final")
    assert run.weights_path() == run.path / "model.safetensors"


def test_prepare_folder_where_no_folder_can_be_made_is_a_one_line_error(tmp_path):
    (tmp_path / "plain").write_text("x")
    with pytest.raises(CnnlabError, match=r"^cannot write .*plain/run: .*plain is a file, not a folder"):
        prepare_folder(tmp_path / "plain" / "run", overwrite=False, marker="run.json", what="run directory")
    with pytest.raises(CnnlabError, match=r"^cannot write /proc/cnnlab-run: no such file or directory in /proc"):
        prepare_folder("/proc/cnnlab-run", overwrite=False, marker="run.json", what="run directory")

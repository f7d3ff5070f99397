"""A run read back: config, model with the trained weights, normaliser, classes; its test-set evaluation."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from cnnlab.errors import CnnlabError
from cnnlab.runs.loaded import evaluate_run, load_run


def test_load_run_restores_the_trained_model(dnn_run):
    lr = load_run(dnn_run)
    meta = json.loads((dnn_run / "run.json").read_text())
    assert lr.cfg.model.name == "dnn_128" and lr.run.path == dnn_run
    assert lr.classes == tuple(meta["classes"]) and len(lr.classes) == 10 and lr.input_shape == (1, 28, 28)
    assert (lr.normalizer.mean, lr.normalizer.std) == ((0.0,), (1.0,))
    assert not lr.model.training
    final = load_file(dnn_run / "model.safetensors")
    assert all(torch.equal(final[k], v) for k, v in lr.model.state_dict().items())
    best = load_run(dnn_run, weights="best")
    saved = load_file(dnn_run / "checkpoints" / "best" / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in best.model.state_dict().items())


def test_load_run_of_a_run_that_never_got_its_data(dnn_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(dnn_run, run)
    meta = json.loads((run / "run.json").read_text())
    del meta["input_shape"]
    (run / "run.json").write_text(json.dumps(meta))
    with pytest.raises(CnnlabError, match="lacks 'input_shape'; the run did not get past data preparation"):
        load_run(run)


def test_damaged_final_weights_name_the_checkpoint_to_copy(dnn_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(dnn_run, run)
    (run / "model.safetensors").write_bytes(b"\x01" * 16)
    best = run / "checkpoints" / "best" / "model.safetensors"
    with pytest.raises(CnnlabError, match=rf"model.safetensors is not a readable safetensors file \(.*\); copy the best "
                                          rf"checkpoint's weights over it \(cp {best} {run}/model.safetensors\) or "
                                          "train the run again$"):
        load_run(run)
    best.write_bytes(b"\x02" * 16)
    with pytest.raises(CnnlabError, match=r"best/model.safetensors is not a readable .*; train the run again$"):
        load_run(run, weights="best")


def test_evaluate_run_repeats_the_final_test(dnn_run):
    lr, ev, test = evaluate_run(dnn_run)
    assert test.name == "fashion-mnist-sample:test" and len(test) == 1000
    assert ev.confusion.shape == (10, 10) and int(ev.confusion.sum()) == 1000
    assert ev.acc == pytest.approx(json.loads((dnn_run / "results.json").read_text())["test_acc"])
    assert ev.classes == lr.classes and ev.probs is None
    _, kept, _ = evaluate_run(dnn_run, keep_probs=True)
    assert kept.probs.shape == (1000, 10) and torch.allclose(kept.probs.sum(1), torch.ones(1000), atol=1e-3)


def test_non_finite_weights_are_refused_by_name(dnn_run, tmp_path):
    from safetensors.torch import save_file

    run = tmp_path / "run"
    shutil.copytree(dnn_run, run)
    state = load_file(run / "model.safetensors")
    state["dense.weight"][3, 7] = float("nan")
    save_file(state, str(run / "model.safetensors"))
    with pytest.raises(CnnlabError, match=r"non-finite weights \(NaN/inf in dense.weight\): the training diverged"):
        load_run(run)
    with pytest.raises(CnnlabError, match="non-finite weights"):
        evaluate_run(run)  # evaluate, predict, show and export all start from load_run


READ_WHILE_TRAINING = ("import sys\nfrom cnnlab.runs.experiment import train\nfrom cnnlab.runs.options import "
                       "experiment_config\ntrain(experiment_config(dataset='fashion-mnist-sample', model='dnn_128', "
                       "epochs=3, batch_size=256, overrides=[('callbacks.checkpoint_every', 2)]), out=sys.argv[1], "
                       "progress=False, log=lambda s: None)\n")


@pytest.mark.slow
def test_a_reader_looping_during_a_training_always_sees_whole_files(tmp_path):
    """load_run and the history, read over and over while a training swaps a checkpoint in every 2 steps."""
    import os
    import subprocess
    import sys
    import time

    from cnnlab.runs.run_dir import RunDir

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", READ_WHILE_TRAINING, str(run)], stderr=subprocess.PIPE,
                            env=os.environ.copy())
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "last").exists():  # before it, "no weights yet" is the true answer
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    reads, epochs_seen = 0, set()
    while proc.poll() is None:
        loaded = load_run(run)  # run.json, config, weights: each whole, or a CnnlabError fails the test
        assert loaded.classes and all(torch.isfinite(p).all() for p in loaded.model.parameters())
        history = RunDir(run).read_history()
        assert [m["epoch"] for m in history] == list(range(1, len(history) + 1))
        epochs_seen.add(len(history))
        reads += 1
    assert proc.wait() == 0, proc.stderr.read().decode()
    assert reads >= 10 and epochs_seen >= {1, 2}, (reads, epochs_seen)

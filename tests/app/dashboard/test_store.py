"""What the dashboard keeps: the run cache (numpy without pickle, damage and read-only folders survived),
loaded runs (reloaded when the weights change), image keys and uploads."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
import torch

from cnnlab.app.dashboard.store import CACHE, Dashboard, DiskCache, NotFound
from cnnlab.errors import CnnlabError


def test_the_disk_cache_never_unpickles(tmp_path):
    cache = DiskCache(tmp_path / "c")
    assert cache.get_array("a.npy") is None
    cache.put_array("a.npy", np.arange(3.0))
    assert cache.get_array("a.npy").tolist() == [0.0, 1.0, 2.0]
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)  # an object array needs pickle
    (tmp_path / "c" / "b.npy").write_bytes(buf.getvalue())
    assert cache.get_array("b.npy") is None  # refused, so recomputed
    (tmp_path / "c" / "d.npy").write_bytes(b"junk")
    assert cache.cached("d.npy", lambda: np.ones(2)).tolist() == [1.0, 1.0]
    assert cache.get_array("d.npy").tolist() == [1.0, 1.0]  # replaced by the recomputed value


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_run_folder_caches_nothing_but_works(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o500)
    cache = DiskCache(tmp_path / "ro" / "c")
    assert cache.cached("x.npy", lambda: np.zeros(1)).tolist() == [0.0]
    assert cache.get_array("x.npy") is None


def test_a_loaded_run_and_its_cached_probabilities(trained_runs, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(trained_runs / "base", root / "base")
    dash = Dashboard(root)
    row = dash.row("base")
    ctx = dash.context(row)
    assert dash.context(row) is ctx  # kept
    probs = ctx.probs()
    assert probs.shape == (1000, 10) and torch.allclose(probs.sum(1), torch.ones(1000), atol=1e-5)
    cached = list((root / "base" / CACHE).glob("probs-*.npy"))
    assert len(cached) == 1 and cached[0].name == f"probs-{ctx.digest[:16]}.npy"
    assert torch.equal(dash.context(row).probs(), probs)
    # retrained weights (another file content and time): a new context with another digest
    weights = root / "base" / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    again = dash.context(row)
    assert again is not ctx and again.digest == ctx.digest  # same bytes, so the same cached results
    dash.close()


def test_image_keys(trained_runs):
    dash = Dashboard(trained_runs)
    ctx = dash.context(dash.row("base"))
    image, label = dash.image(ctx, "t-7")
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8 and label == int(ctx.view.test.labels[7])
    key = dash.add_upload((1, 28, 28), image.clone())
    assert key.startswith("u-") and torch.equal(dash.image(ctx, key)[0], image) and dash.image(ctx, key)[1] is None
    assert dash.add_upload((1, 28, 28), image.clone()) == key  # same pixels, same key
    other = dash.add_upload((3, 8, 8), torch.zeros(3, 8, 8, dtype=torch.uint8))
    for bad in ("t-1000", "t--1", "u-nope", other, "../../etc/passwd"):
        with pytest.raises(NotFound):
            dash.image(ctx, bad)
    dash.close()


def test_unknown_ids_and_runs_without_weights(tmp_path, make_run):
    make_run(tmp_path, "no-weights", status="running")
    dash = Dashboard(tmp_path, display="my runs")
    with pytest.raises(NotFound, match="no run with id 'nope' under my runs"):
        dash.row("nope")
    with pytest.raises(CnnlabError, match="has no weights yet"):
        dash.context(dash.row("no-weights"))
    assert dash.path_text(dash.row("no-weights")) == "'my runs/no-weights'"  # quoted for a shell
    dash.close()

"""``cnnlab compare`` and ``cnnlab demo``: flags to the library, the printed table and lines, exit codes, and
user mistakes as one ``error:`` line naming the flag."""

from pathlib import Path

import yaml

from cnnlab.app.compare import CompareResult
from cnnlab.cli import main
from cnnlab.data.datasets import DatasetMissing
from cnnlab.runs.experiment import TrainResult
from cnnlab.runs.run_dir import RunDir
from cnnlab.training.metrics import Evaluation

TINY = {
    "name": "tiny",
    "data": {"dataset": "fashion-mnist-sample"},
    "model": {"layers": [{"type": "Flatten"}, {"type": "Dense", "units": 8, "activation": "relu"},
                         {"type": "Dense", "units": "num_classes", "activation": "softmax"}]},
    "train": {"epochs": 1, "batch_size": 256},
}


def _yaml(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_compare_prints_the_table_and_exits_1_when_a_variant_failed(tmp_path, capsys):
    """The YAML's own compare: section; the first variant cannot be built, the second still trains."""
    bad_conv = {"type": "Conv2D", "filters": 2, "kernel_size": 40}
    base = _yaml(tmp_path / "cfg" / "tiny.yaml", {**TINY, "compare": {"vary": {"model.layers.0": [bad_conv,
                                                                                                  {"type": "Flatten"}]}}})
    out = tmp_path / "cmp"
    assert main(["compare", str(base), "--out", str(out), "--no-progress"]) == 1
    printed = capsys.readouterr().out
    assert "| failed: model.layers.0" in printed and "| completed |" in printed
    assert "=== Variant 1/2: layers.0-type_Conv2D_filters_2_kernel_size_40 (model.layers.0=" in printed
    assert printed.endswith(f"\nCompared in: {out} (compare.md, compare.csv, compare.png)\n")
    assert (out / "compare.md").read_text() in printed


def test_training_flags_and_set_apply_to_every_variant(tmp_path, capsys, monkeypatch):
    import cnnlab.cli.experiments as experiments

    seen = {}

    def fake_run_compare(variants, out, *, overwrite=False, progress=None):
        seen.update(variants=variants, out=out, overwrite=overwrite, progress=progress)
        return CompareResult(Path(out), [], "| the table |")

    monkeypatch.setattr(experiments, "run_compare", fake_run_compare)
    base = _yaml(tmp_path / "tiny.yaml", TINY)
    assert main(["compare", str(base), "--vary", "train.lr=0.1,0.2", "--epochs", "3", "--set", "train.batch_size=32",
                 "--out", str(tmp_path / "x"), "--overwrite", "--no-progress"]) == 0
    assert [(v.cfg.train.lr, v.cfg.train.epochs, v.cfg.train.batch_size) for v in seen["variants"]] == [
        (0.1, 3, 32), (0.2, 3, 32)]
    assert (seen["out"], seen["overwrite"], seen["progress"]) == (tmp_path / "x", True, False)
    assert capsys.readouterr().out == f"\n| the table |\n\nCompared in: {tmp_path / 'x'} (compare.md, compare.csv, compare.png)\n"


def test_bad_vary_is_a_one_line_error(tmp_path, capsys):
    base = _yaml(tmp_path / "tiny.yaml", TINY)
    for bad in ("train.lr", "train.lr=0.1,,0.2", "model.layers.0.kernel_size=[3,3", "train..lr=1"):
        assert main(["compare", str(base), "--vary", bad, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --vary ") and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()


def test_nothing_to_compare(tmp_path, capsys):
    base = _yaml(tmp_path / "tiny.yaml", TINY)
    assert main(["compare", str(base)]) == 2
    assert "has no compare: section" in capsys.readouterr().err
    assert main(["compare"]) == 2
    assert "needs a base config or --configs" in capsys.readouterr().err


def test_a_bad_override_fails_before_training(tmp_path, capsys):
    base = _yaml(tmp_path / "tiny.yaml", TINY)
    assert main(["compare", str(base), "--vary", "train.lr=0.1,0.2", "--set", "train.epoch=2",
                 "--out", str(tmp_path / "x")]) == 2
    assert "unknown config key 'train.epoch'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_out_is_never_clobbered(tmp_path, capsys):
    base = _yaml(tmp_path / "tiny.yaml", TINY)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    for extra in ([], ["--overwrite"]):
        assert main(["compare", str(base), "--vary", "train.lr=0.1,0.2", "--out", str(tmp_path / "mine"), *extra]) == 2
    err = capsys.readouterr().err
    assert "already exists; pass --overwrite" in err and "not a cnnlab compare folder" in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_demo_falls_back_to_the_bundled_sample_and_says_where_everything_is(tmp_path, capsys, monkeypatch):
    import cnnlab.cli.experiments as experiments

    calls = {}

    def not_found(dataset, data_dir):
        raise DatasetMissing(f"{dataset} is not available: put its files into {data_dir}; could not download "
                             "t10k-images-idx3-ubyte.gz (https://... unreachable ([Errno -3] Temporary failure in "
                             "name resolution); https://... unreachable (...)) " + "x" * 400, dataset)

    def fake_train(cfg, *, out, overwrite, progress):
        calls["train"] = (cfg, out, overwrite, progress)
        test = Evaluation(0.5, 0.8125, None, ())
        return TrainResult(RunDir(out), [], test, None, None)

    def fake_report(run_dir, **kwargs):
        calls["report"] = (run_dir, kwargs)
        return Path(run_dir) / "report.html"

    monkeypatch.setattr(experiments, "locate", not_found)
    monkeypatch.setattr(experiments, "train", fake_train)
    monkeypatch.setattr(experiments, "build_report", fake_report)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--data-dir", str(tmp_path / "data"), "--no-progress"]) == 0
    cfg, _, overwrite, progress = calls["train"]
    assert cfg.data.dataset == "fashion-mnist-sample" and cfg.model.name == "cnn_64x2"
    assert not overwrite and progress is False  # a fresh folder; --no-progress
    assert calls["report"] == (out, {"data_dir": str(tmp_path / "data"), "maximize": True, "figures_dir": out / "figures",
                                     "extra_views": ("kernels", "saliency")})
    printed = capsys.readouterr().out.splitlines()
    assert printed[:2] == ["note: the full fashion-mnist is not on this machine and could not be downloaded",
                           "note: using the bundled sample instead; cnnlab datasets info fashion-mnist says where the "
                           "full files go"]
    assert "Test accuracy: 0.8125 (loss 0.5000)" in printed and f"Run: {out}" in printed
    assert f"Open: {(out / 'report.html').resolve().as_uri()} (everything on one page), figures in {out / 'figures'}" in printed
    out.mkdir()
    (out / "run.json").write_text("{}")
    assert main(["demo", "--out", str(out), "--no-progress"]) == 0
    assert calls["train"][2]  # an earlier demo run is replaced


def test_demo_never_replaces_a_folder_that_is_not_its_run(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    assert main(["demo", "--out", str(tmp_path / "mine"), "--no-progress"]) == 2
    assert "holds something that is not a cnnlab run; the demo will not replace it" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"

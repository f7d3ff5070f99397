"""Compare: variants of a config planned, trained one after another and tabulated, on the bundled
Fashion-MNIST sample with tiny dense nets and 1-epoch runs."""

import csv
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from cnnlab.app.compare import (
    VariantResult,
    csv_text,
    markdown_table,
    parse_vary,
    plan,
    plot_compare,
    run_compare,
    split_values,
    yaml_text,
)
from cnnlab.errors import CnnlabError
from cnnlab.runs.experiment import train
from cnnlab.runs.options import experiment_config

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


def _nonblank(path):
    return np.asarray(Image.open(path).convert("L"), dtype=np.float32).std() > 5


def _quiet(line: str) -> None:
    pass


@pytest.fixture(scope="module")
def vary_run(tmp_path_factory):
    """compare with vary over two hidden-layer sizes, plus a direct training of the base config."""
    tmp = tmp_path_factory.mktemp("vary")
    base = _yaml(tmp / "tiny.yaml", TINY)
    with pytest.MonkeyPatch.context() as mp:  # a module fixture is set up before the per-test cache exists
        mp.setenv("CNNLAB_CACHE", str(tmp / "cache"))
        variants, out = plan(base, vary=["model.layers.1.units=8,16"], out=tmp / "cmp")
        result = run_compare(variants, out, progress=False, log=_quiet)
        direct = tmp / "direct"
        assert train(experiment_config(base), out=direct, progress=False, log=_quiet).failed is None
    return result, out, direct


def test_vary_trains_one_run_per_value(vary_run):
    result, out, _ = vary_run
    assert not result.failed and result.out == out
    assert sorted(p.name for p in out.iterdir()) == ["compare.csv", "compare.json", "compare.md", "compare.png",
                                                     "units-16", "units-8"]
    for name, units in (("units-8", 8), ("units-16", 16)):
        cfg = yaml.safe_load((out / name / "config.yaml").read_text())
        assert cfg["model"]["layers"][1]["units"] == units and cfg["compare"] == {"vary": {}, "configs": []}
        assert json.loads((out / name / "run.json").read_text())["status"] == "done"
    assert _nonblank(out / "compare.png")
    assert (out / "compare.md").read_text() == result.markdown + "\n"


def test_table_and_csv(vary_run):
    _, out, _ = vary_run
    lines = (out / "compare.md").read_text().splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head == ["variant", "changed", "params", "s/epoch", "train acc", "test acc", "test loss",
                    "best epoch (val acc)", "epochs", "stop"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [r[0] for r in rows] == ["units-8", "units-16"]
    assert [r[1] for r in rows] == ["model.layers.1.units=8", "model.layers.1.units=16"]
    # Flatten-Dense(u)-Dense(10) on 28x28: 785u + (u + 1) * 10 parameters.
    assert [r[2] for r in rows] == ["6,370", "12,730"]
    assert all(r[8] == "1" and r[9] == "completed" and r[7].startswith("1 (") for r in rows)
    with open(out / "compare.csv", newline="") as f:
        recs = list(csv.DictReader(f))
    assert [r["variant"] for r in recs] == ["units-8", "units-16"] and {r["status"] for r in recs} == {"done"}
    for rec, row in zip(recs, rows, strict=True):
        assert 0.2 < float(rec["test_acc"]) <= 1 and f"{float(rec['test_acc']):.4f}" == row[5]
        assert float(rec["sec_per_epoch"]) > 0 and int(rec["params"]) == int(row[2].replace(",", ""))
        assert int(rec["best_epoch"]) == 1 and rec["error"] == ""
    saved = json.loads((out / "compare.json").read_text())["variants"]
    assert [len(v["history"]) for v in saved] == [1, 1]


def test_same_seed_reproduces_a_direct_run(vary_run):
    _, out, direct = vary_run
    variant = json.loads((out / "units-8" / "results.json").read_text())
    alone = json.loads((direct / "results.json").read_text())
    assert variant["test_acc"] == alone["test_acc"]
    assert variant["test_loss"] == pytest.approx(alone["test_loss"], rel=1e-6)


def test_yaml_section_with_a_failing_variant(tmp_path):
    """The YAML's own compare: section; the first variant cannot be built, the second still trains."""
    bad_conv = {"type": "Conv2D", "filters": 2, "kernel_size": 40}
    base = _yaml(tmp_path / "cfg" / "tiny.yaml", {**TINY, "compare": {"vary": {"model.layers.0": [bad_conv,
                                                                                                  {"type": "Flatten"}]}}})
    out = tmp_path / "cmp"
    variants, _ = plan(base)
    result = run_compare(variants, out, progress=False, log=_quiet)
    assert [r.variant for r in result.failed] == ["layers.0-type_Conv2D_filters_2_kernel_size_40"]
    with open(out / "compare.csv", newline="") as f:
        recs = list(csv.DictReader(f))
    assert [r["status"] for r in recs] == ["failed", "done"]
    assert recs[0]["variant"] == "layers.0-type_Conv2D_filters_2_kernel_size_40"
    assert "kernel 40x40 is larger than its 28x28 input" in recs[0]["error"] and "\n" not in recs[0]["error"]
    assert recs[1]["variant"] == "layers.0-type_Flatten" and float(recs[1]["test_acc"]) >= 0.32  # measured 0.336
    assert "| failed: model.layers.0" in result.markdown and "| completed |" in result.markdown
    assert _nonblank(out / "compare.png")


def test_bad_vary_is_a_one_line_error(tmp_path):
    base = _yaml(tmp_path / "tiny.yaml", TINY)
    for bad in ("train.lr", "train.lr=0.1,,0.2", "model.layers.0.kernel_size=[3,3", "train..lr=1"):
        with pytest.raises(CnnlabError, match="^`vary` ") as err:
            plan(base, vary=[bad], out=tmp_path / "x")
        assert "\n" not in str(err.value)
    assert not (tmp_path / "x").exists()


def test_a_value_its_key_can_never_take_is_refused_before_any_variant_trains(tmp_path):
    base = _yaml(tmp_path / "tiny.yaml", TINY)
    cases = {"data.augment.padding_mode=nearest,bogus": "^data.augment.padding_mode: 'bogus' is not one of zeros, "
                                                        "reflect, nearest \\(in `vary`\\)$",
             "train.optimizer=adam,bogus": "^train.optimizer: 'bogus' is not one of adam, adamw, sgd, rmsprop",
             "train.lr=0.1,-1": "^train.lr must be > 0, got -1.0 \\(in `vary`\\)$",
             "train.epochs=1,x": "^train.epochs expects an integer, got 'x'"}
    for vary, message in cases.items():
        with pytest.raises(CnnlabError, match=message):
            plan(base, vary=[vary], out=tmp_path / "x")
    yaml_section = _yaml(tmp_path / "s.yaml", {**TINY, "compare": {"vary": {"train.optimizer": ["sgd", "nope"]}}})
    with pytest.raises(CnnlabError, match="^train.optimizer: 'nope' is not one of"):
        plan(yaml_section)
    # a layer list's values are the experiment (a kernel too large for the input is a result, see above)
    assert len(plan(base, vary=["model.layers.0.filters=2,3"], out=tmp_path / "x")[0]) == 2
    assert not (tmp_path / "x").exists()


def test_nothing_to_compare(tmp_path):
    base = _yaml(tmp_path / "tiny.yaml", TINY)
    with pytest.raises(CnnlabError, match="has no compare: section; say what to `vary`"):
        plan(base)
    with pytest.raises(CnnlabError, match="needs a base config or `configs`"):
        plan(None)


def test_a_bad_override_fails_before_training(tmp_path):
    base = _yaml(tmp_path / "tiny.yaml", TINY)
    with pytest.raises(CnnlabError, match="unknown config key 'train.epoch'"):
        plan(base, vary=["train.lr=0.1,0.2"], overrides=[("train.epoch", 2)], out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_out_is_never_clobbered(tmp_path):
    base = _yaml(tmp_path / "tiny.yaml", TINY)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    variants, out = plan(base, vary=["train.lr=0.1,0.2"], out=tmp_path / "mine")
    with pytest.raises(CnnlabError, match="already exists; pass `overwrite` to replace it or choose another `out`"):
        run_compare(variants, out, log=_quiet)
    with pytest.raises(CnnlabError, match="not a cnnlab compare folder"):
        run_compare(variants, out, overwrite=True, log=_quiet)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_variants_that_cannot_start_leave_nothing_behind(tmp_path):
    """Every variant stops on a data mistake before training: no compare folder, no run folders, one error."""
    base = _yaml(tmp_path / "f.yaml", {**TINY, "data": {"dataset": f"folder:{tmp_path / 'nowhere'}"}})
    variants, out = plan(base, vary=["train.lr=0.1,0.2"], out=tmp_path / "cmp")
    with pytest.raises(CnnlabError, match=r"^no variant could start training: lr-0.1: folder datasets need "
                                          r"`data.image_size` .*; lr-0.2: folder datasets need"):
        run_compare(variants, out, log=_quiet)
    assert not out.exists()
    (tmp_path / "empty").mkdir()  # an empty folder is accepted, and stays (empty) when nothing could run
    variants, out = plan(base, vary=["train.lr=0.1,0.2"], out=tmp_path / "empty")
    with pytest.raises(CnnlabError, match="no variant could start training"):
        run_compare(variants, out, log=_quiet)
    assert out.is_dir() and not any(out.iterdir())
    # one variant trains: the compare folder stays, with the failed one's row
    good = _yaml(tmp_path / "g.yaml", {**TINY, "compare": {"vary": {"data.dataset": [
        f"folder:{tmp_path / 'nowhere'}", "fashion-mnist-sample"]}}})
    result = run_compare(plan(good)[0], tmp_path / "mixed", progress=False, log=_quiet)
    assert [r.status for r in result.results] == ["failed", "done"]
    assert sorted(p.name for p in (tmp_path / "mixed").iterdir()) == [
        "compare.csv", "compare.json", "compare.md", "compare.png", result.results[1].variant]


def test_table_csv_and_plot_of_hand_made_results():
    done = VariantResult("a", "train.lr=0.1", status="done", params=1234, sec_per_epoch=2.25, train_acc=0.5,
                         test_acc=0.61234, test_loss=1.5, best_epoch=2, best_val_acc=0.6, epochs=3)
    failed = VariantResult("b|c", "train.lr=0.2", error="diverged\nbadly", epochs=0)
    assert markdown_table([done, failed]).splitlines() == [
        "| variant | changed | params | s/epoch | train acc | test acc | test loss | best epoch (val acc) | epochs "
        "| stop |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
        "| a | train.lr=0.1 | 1,234 | 2.2 | 0.5000 | 0.6123 | 1.5000 | 2 (0.6000) | 3 | completed |",
        "| b\\|c | train.lr=0.2 |  |  |  |  |  |  | 0 | failed: diverged badly |",
    ]
    rows = list(csv.DictReader(csv_text([done, failed]).splitlines()))
    assert rows[0]["test_acc"] == "0.61234" and rows[1]["params"] == "" and rows[1]["status"] == "failed"
    assert "history" not in rows[0]
    fig = plot_compare([failed], title="T")
    assert fig.get_suptitle() == "T: 1 variants, 1 failed"
    assert [t.get_text() for t in fig.axes[0].texts] == ["no variant finished an epoch"]


# ------------------------------------------------------------------------------ planning without training


def test_configs_from_the_yaml_are_relative_to_it(tmp_path):
    other = _yaml(tmp_path / "cfg" / "more" / "other.yaml", {**TINY, "train": {"epochs": 2}})
    twin = _yaml(tmp_path / "cfg" / "twin.yaml", TINY)  # same name as the base: gets a suffix
    base = _yaml(tmp_path / "cfg" / "tiny.yaml", {**TINY, "compare": {"configs": ["more/other.yaml", "twin.yaml"]}})
    variants, out = plan(base)
    assert [v.name for v in variants] == ["tiny", "tiny-2", "tiny-3"]
    assert [v.cfg.train.epochs for v in variants] == [1, 2, 1]
    assert variants[1].changed == f"config {other}" and variants[2].changed == f"config {twin}"
    assert out.name == "compare-tiny"


def test_configs_times_vary_and_cli_flags_replace_the_section(tmp_path):
    base = _yaml(tmp_path / "tiny.yaml", {**TINY, "compare": {"vary": {"train.lr": [0.1, 0.2]}}})
    dnn = _yaml(tmp_path / "dnn.yaml", {**TINY, "name": "dnn"})
    variants, _ = plan(base, vary=["train.batch_size=32,64"], configs=[dnn], overrides=[("train.epochs", 3)])
    assert [v.name for v in variants] == ["tiny_batch_size-32", "tiny_batch_size-64", "dnn_batch_size-32",
                                          "dnn_batch_size-64"]
    assert {v.cfg.train.lr for v in variants} == {None}  # the section's rates are gone: unset, as in the YAML
    assert {v.cfg.train.epochs for v in variants} == {3}
    assert [v.cfg.train.batch_size for v in variants] == [32, 64, 32, 64]


def test_names_are_short_unique_and_filesystem_safe(tmp_path):
    base = _yaml(tmp_path / "tiny.yaml", TINY)
    variants, _ = plan(base, vary=["model.layers.1.units=8,16", "data.augment.zoom=0.1,0.2"])
    assert [v.name for v in variants] == ["units-8_zoom-0.1", "units-8_zoom-0.2", "units-16_zoom-0.1",
                                          "units-16_zoom-0.2"]
    variants, _ = plan(base, vary=["callbacks.stop_at=[loss=0.3],[val_acc=0.9]", "model.layers.2={type: Dense}"])
    assert [v.name for v in variants] == ["stop_at-loss_0.3_layers.2-type_Dense", "stop_at-val_acc_0.9_layers.2-type_Dense"]
    assert variants[0].cfg.callbacks.stop_at == ("loss=0.3",)
    variants, _ = plan(base, vary=['description="a/b","a b"'])
    assert [v.name for v in variants] == ["description-a_b", "description-a_b-2"]


def test_parse_vary_values_like_set():
    assert parse_vary(["train.lr=1e-3,0.01", "model.layers.0.kernel_size=[3,3],[5,5]", "x=true,abc"]) == {
        "train.lr": [0.001, 0.01], "model.layers.0.kernel_size": [[3, 3], [5, 5]], "x": [True, "abc"]}
    assert split_values('[1, 2], {a: 1, b: 2}, "x,y"') == ["[1, 2]", "{a: 1, b: 2}", '"x,y"']
    assert split_values("[1, 2") is None
    with pytest.raises(CnnlabError, match="lists 16 twice"):
        parse_vary(["model.layers.0.filters=16,32,16"])
    with pytest.raises(CnnlabError, match="given twice"):
        parse_vary(["train.lr=0.1", "train.lr=0.2"])
    for value in (16, 1e-5, "abc", "16", [3, 3], {"type": "Flatten"}, None, True):
        assert yaml.safe_load(yaml_text(value)) == value

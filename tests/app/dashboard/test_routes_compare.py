"""Compare: only the config keys that differ, per-class deltas, the difference of confusion matrices, and
the API over two trained runs that differ in exactly one key."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from cnnlab.app.dashboard import create_app
from cnnlab.app.dashboard.routes_compare import MISSING, config_diff, confusion_diffs, flatten, per_class

LR = 0.003  # conftest.LR: the trained runs' one difference


def test_flatten_to_dotted_keys():
    cfg = {"model": {"layers": [{"filters": 8}, {"type": "Flatten"}], "name": None}, "train": {"lr": 0.1},
           "data": {"augment": {}}}
    assert flatten(cfg) == {"model.layers.0.filters": 8, "model.layers.1.type": "Flatten", "model.name": None,
                            "train.lr": 0.1, "data.augment": {}}


def test_only_keys_that_differ_in_some_config():
    a = {"train": {"lr": 0.1, "epochs": 3}, "model": {"layers": [{"filters": 8}]}}
    b = {"train": {"lr": 0.1, "epochs": 5}, "model": {"layers": [{"filters": 16}]}}
    c = {"train": {"lr": 0.1, "epochs": 3}, "model": {"layers": [{"filters": 8}]}, "extra": 1}
    assert config_diff([a, b, c]) == [{"key": "train.epochs", "values": [3, 5, 3]},
                                      {"key": "model.layers.0.filters", "values": [8, 16, 8]},
                                      {"key": "extra", "values": [MISSING, MISSING, 1]}]
    assert config_diff([a, dict(a)]) == []
    assert config_diff([{"x": 1}, {"x": 1.0}]) == [{"key": "x", "values": [1, 1.0]}]  # as written in the files


def test_per_class_deltas_against_the_first():
    r1 = {"classes": ["a", "b"], "per_class": {"a": 0.5, "b": 0.9}}
    r2 = {"classes": ["a", "b"], "per_class": {"a": 0.75, "b": 0.8}}
    out = per_class([r1, r2, None])
    assert out["classes"] == ["a", "b"]
    assert out["rows"][0] == {"class": "a", "acc": [0.5, 0.75, None], "delta": [0.0, 0.25, None]}
    assert out["rows"][1]["delta"][1] == pytest.approx(-0.1)


def test_confusion_difference_needs_the_same_classes():
    base = {"classes": ["a", "b"], "confusion": [[5, 1], [2, 4]]}
    assert confusion_diffs([base, {"classes": ["a", "b"], "confusion": [[6, 0], [3, 3]]}]) == [
        {"classes": ["a", "b"], "diff": [[1, -1], [1, -1]]}]
    assert confusion_diffs([base, {"classes": ["x", "y"], "confusion": [[1, 0], [0, 1]]}, None]) == [None, None]


def test_two_runs_that_differ_in_one_key(trained_runs):
    c = TestClient(create_app(trained_runs), base_url="http://127.0.0.1")
    d = c.get("/api/compare", params={"runs": "base,lr"}).json()
    assert [x["key"] for x in d["diff"]] == ["train.lr"] and d["diff"][0]["values"][1] == LR
    assert [r["id"] for r in d["runs"]] == ["base", "lr"] and d["same_test_set"] is True
    assert len(d["histories"]) == 2 and d["histories"][1][0]["epoch"] == 1
    assert len(d["per_class"]["rows"]) == 10 and d["per_class"]["rows"][0]["delta"][0] == 0
    diff = d["confusion_diff"][0]["diff"]
    assert sum(map(sum, diff)) == 0  # both matrices count the same 1,000 test images
    assert d["command"] == f"cnnlab compare --configs {trained_runs}/base/config.yaml {trained_runs}/lr/config.yaml"


@pytest.mark.parametrize(("runs", "status"), [("base", 400), ("base,base", 400), ("base,lr,base,lr,base", 400),
                                              ("base,nope", 404), ("", 400)])
def test_compare_needs_two_to_four_known_runs(trained_runs, runs, status):
    c = TestClient(create_app(trained_runs), base_url="http://127.0.0.1")
    assert c.get("/api/compare", params={"runs": runs}).status_code == status

"""What a run directory's files must hold: run.json fields, metrics.jsonl rows, config.yaml sections."""

import re
from pathlib import Path

import pytest

from cnnlab.errors import CnnlabError
from cnnlab.runs.records import META_FIELDS, check_config, check_meta, check_row, parse_json

P = Path("run.json")
GOOD = {"input_shape": [1, 28, 28], "classes": ["a", "b"], "normalizer": {"mean": [0.5], "std": [0.25]},
        "params": 10, "min_delta": 0.0, "status": "done", "stop_reason": None, "engine": {}, "unknown": object()}


def test_a_written_meta_passes_whole():
    assert check_meta(GOOD, P) is GOOD
    assert check_meta({}, P) == {}  # absent fields are the reader's business (older runs lack some)


@pytest.mark.parametrize("key, value", [
    ("input_shape", None), ("input_shape", [1, 0, 28]), ("input_shape", [1.0, 28, 28]), ("input_shape", "zzz"),
    ("classes", None), ("classes", "zzz"), ("classes", []), ("classes", [1, 2]),
    ("normalizer", None), ("normalizer", "zzz"), ("normalizer", {"mean": [0.5], "std": [0.0]}),
    ("normalizer", {"mean": [0.5, 0.5], "std": [1.0]}), ("normalizer", {"mean": [float("nan")], "std": [1.0]}),
    ("params", None), ("params", True), ("params", "10"), ("min_delta", None), ("status", 3), ("engine", []),
])
def test_each_field_of_another_type_is_named(key, value):
    with pytest.raises(CnnlabError, match=f"^run.json field '{key}' is .*, not {re.escape(META_FIELDS[key][1][:12])}"):
        check_meta({**GOOD, key: value}, P)


def test_rows_and_json():
    row = {"epoch": 2, "train_loss": float("nan"), "val_loss": None, "extra": "kept"}
    assert check_row(row, P, 1, ("train_loss", "val_loss")) is row
    with pytest.raises(CnnlabError, match="^run.json line 3 field 'epoch' is 0, not a positive integer"):
        check_row({"epoch": 0}, P, 3, ())
    with pytest.raises(CnnlabError, match=r"^run.json line 4 is damaged \(JSON nested too deeply\)"):
        parse_json("[" * 100000, P, " line 4")
    assert parse_json("[1]", P) == [1]


def test_a_run_config_needs_its_sections():
    good = {"data": {"dataset": "mnist"}, "model": {}, "train": {}}
    assert check_config(good, P) is good
    with pytest.raises(CnnlabError, match="^run.json section 'model' is missing: it is not the config a run"):
        check_config({"data": {"dataset": "x"}, "train": {}}, P)
    with pytest.raises(CnnlabError, match="^run.json has no 'data.dataset'"):
        check_config({"data": {}, "model": {}, "train": {}}, P)

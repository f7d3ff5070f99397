"""Filtering and sorting the runs table: words, expressions (numbers, text, percentages, missing values)
and sort order with missing values last."""

from __future__ import annotations

import pytest

from cnnlab.app.dashboard.index import RunRow
from cnnlab.app.dashboard.table import parse_filter, select
from cnnlab.errors import CnnlabError

ROWS = [RunRow("a", "alpha", status="finished", model="cnn_64x2", dataset="mnist", best_val_acc=0.95, test_acc=0.94,
               epochs=3, started="2026-01-01T10:00:00"),
        RunRow("b", "beta", status="running", model="dnn_128", dataset="fashion-mnist", best_val_acc=0.85, epochs=1,
               started="2026-01-03T10:00:00"),
        RunRow("c", "gamma", group="compare-x", status="failed", model="cnn_64x2", dataset="fashion-mnist",
               best_val_acc=None, epochs=0, started="2026-01-02T10:00:00")]


def names(rows):
    return [r.name for r in rows]


@pytest.mark.parametrize(("where", "expected"), [
    ("val_acc > 0.9", ["alpha"]),
    ("val_acc >= 0.85", ["alpha", "beta"]),
    ("best_val_acc < 90%", ["beta"]),  # a missing value never matches a comparison
    ("model = cnn_64x2", ["alpha", "gamma"]),
    ("model == CNN_64X2", ["alpha", "gamma"]),  # text compares case-insensitively
    ("model != cnn_64x2", ["beta"]),
    ("test_acc != 0.94", ["beta", "gamma"]),  # ... except !=
    ("dataset ~ fashion", ["beta", "gamma"]),
    ("model = cnn_64x2 and status = failed", ["gamma"]),
    ("epochs >= 1, status != running", ["alpha"]),
    ("", ["alpha", "beta", "gamma"]),
])
def test_filter_expressions(where, expected):
    assert names(select(ROWS, where=where, sort="name", desc=False)) == expected


def test_words_must_all_appear_in_name_model_dataset_status_or_group():
    assert names(select(ROWS, text="cnn fashion", sort="name", desc=False)) == ["gamma"]
    assert names(select(ROWS, text="COMPARE", sort="name")) == ["gamma"]
    assert names(select(ROWS, text="nothing-like-it")) == []


def test_sorting_puts_missing_values_last_either_way():
    assert names(select(ROWS, sort="val_acc", desc=True)) == ["alpha", "beta", "gamma"]
    assert names(select(ROWS, sort="val_acc", desc=False)) == ["beta", "alpha", "gamma"]
    assert names(select(ROWS)) == ["beta", "gamma", "alpha"]  # default: newest start first


@pytest.mark.parametrize(("where", "message"), [
    ("val_acc >", "cannot read the filter 'val_acc >'; write COLUMN OP VALUE"),
    ("colour = red", "unknown filter column 'colour'"),
    ("just words", "cannot read the filter"),
])
def test_bad_expressions_are_one_line_errors(where, message):
    with pytest.raises(CnnlabError, match=message):
        parse_filter(where)


def test_an_unknown_sort_column():
    with pytest.raises(CnnlabError, match="sort column"):
        select(ROWS, sort="colour")

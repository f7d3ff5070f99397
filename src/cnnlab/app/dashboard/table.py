"""Filtering and sorting the runs table: free text, and simple expressions such as ``val_acc > 0.9``,
``model = cnn_64x2`` or ``status != finished and epochs >= 3``."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from cnnlab.app.dashboard.index import RunRow
from cnnlab.errors import CnnlabError, one_of

# column → what the table header says; also the names an expression may use
COLUMNS = {"name": "Run", "status": "Status", "dataset": "Dataset", "model": "Model", "params": "Params",
           "epochs": "Epochs", "best_val_acc": "Best val acc", "best_epoch": "Best epoch", "test_acc": "Test acc",
           "wall_seconds": "Wall time", "started": "Started"}
ALIASES = {"val_acc": "best_val_acc", "best": "best_val_acc", "acc": "test_acc", "test": "test_acc",
           "wall": "wall_seconds", "time": "wall_seconds", "seconds": "wall_seconds", "run": "name",
           "epoch": "best_epoch", "parameters": "params"}
_CLAUSE = re.compile(r"^\s*([A-Za-z_]+)\s*(>=|<=|!=|==|=|>|<|~)\s*(.+?)\s*$")
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
    "=": lambda a, b: a == b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
    "~": lambda a, b: str(b) in str(a)}
Predicate = Callable[[RunRow], bool]


def _number(text: str) -> float | None:
    try:
        return float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        return None


def parse_clause(text: str) -> Predicate:
    """One ``column OP value`` test; OP is one of ``> >= < <= = == != ~`` (``~``: contains).

    Numbers compare as numbers (``90%`` is 0.9); text compares case-insensitively. A run without a value
    for the column never matches (except ``!=``).

    Raises:
        CnnlabError: not of that form, or an unknown column (the valid ones are listed).
    """
    m = _CLAUSE.match(text)
    if not m or m.group(3)[0] in "<>=!~":  # `val_acc >>> 1`: an operator typo, not a value
        raise CnnlabError(f"cannot read the filter {text.strip()!r}; write COLUMN OP VALUE, e.g. val_acc > 0.9 or "
                          "model = cnn_64x2 (OP: > >= < <= = != ~)")
    col, op, raw = m.group(1).lower(), m.group(2), m.group(3).strip("'\"")
    col = ALIASES.get(col, col)
    if col not in COLUMNS:
        raise one_of("filter column", m.group(1), [*COLUMNS, *ALIASES])
    num = _number(raw)
    fn = _OPS[op]

    def test(row: RunRow) -> bool:
        value = getattr(row, col)
        if value is None:
            return op == "!="
        if num is not None and isinstance(value, (int, float)) and op != "~":
            return fn(float(value), num)
        return fn(str(value).lower(), raw.lower())

    return test


def parse_filter(expr: str) -> Predicate:
    """Clauses joined by ``and`` or ``,`` (all must hold); an empty expression keeps every run."""
    parts = [p for p in re.split(r"\s+and\s+|,", expr or "", flags=re.IGNORECASE) if p.strip()]
    tests = [parse_clause(p) for p in parts]
    return lambda row: all(t(row) for t in tests)


def _matches_text(row: RunRow, text: str) -> bool:
    hay = " ".join(str(v) for v in (row.name, row.model, row.dataset, row.status, row.group) if v).lower()
    return all(word in hay for word in text.lower().split())


def select(rows: Sequence[RunRow], *, text: str = "", where: str = "", sort: str = "started",
           desc: bool = True) -> list[RunRow]:
    """The rows that contain every word of ``text`` and satisfy ``where``, sorted by ``sort``.

    Runs without a value for the sort column come last in either direction; ties keep path order.

    Raises:
        CnnlabError: a bad ``where`` expression or an unknown ``sort`` column.
    """
    sort = ALIASES.get(sort, sort)
    if sort not in COLUMNS:
        raise one_of("sort column", sort, COLUMNS)
    keep = parse_filter(where)
    picked = [r for r in rows if (not text or _matches_text(r, text)) and keep(r)]
    present = [r for r in picked if getattr(r, sort) is not None]
    missing = [r for r in picked if getattr(r, sort) is None]

    def key(r: RunRow) -> Any:
        v = getattr(r, sort)
        return v.lower() if isinstance(v, str) else v

    return sorted(present, key=key, reverse=desc) + missing

"""What a run directory's files must hold: run.json's fields, metrics.jsonl's rows, config.yaml's sections.

A run directory is read back by evaluate, predict, show, report, compare and the dashboard, and each of
them trusts the types of the fields it uses. A file edited by hand, damaged or written by a hostile party
is refused here, once, with a one-line error naming the file and the field, instead of a ``TypeError``
somewhere later (or, worse, a plausible wrong answer: ``"classes": "abc"`` is three classes to ``tuple``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError

REDO = "restore it from a backup or train the run again"


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _optional(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or test(v)


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _shape(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 3 and all(_int(d) and d >= 1 for d in v)


def _classes(v: Any) -> bool:
    return isinstance(v, list) and len(v) >= 1 and all(isinstance(c, str) for c in v)


def _floats(v: Any, positive: bool = False) -> bool:
    return (isinstance(v, list) and len(v) >= 1
            and all(_number(x) and math.isfinite(x) and (x > 0 or not positive) for x in v))


def _normalizer(v: Any) -> bool:
    return (isinstance(v, dict) and _floats(v.get("mean")) and _floats(v.get("std"), positive=True)
            and len(v["mean"]) == len(v["std"]))


# field → (test, what it must be); a field that is absent is the reader's business (older runs lack some)
META_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "input_shape": (_shape, "a list [channels, height, width] of positive integers"),
    "classes": (_classes, "a non-empty list of class names"),
    "normalizer": (_normalizer, 'a mapping {"mean": [...], "std": [...]} of finite numbers, std > 0'),
    "engine": (lambda v: isinstance(v, dict), "a mapping"),
    "imported_from": (lambda v: isinstance(v, dict), "a mapping"),
    "mlflow": (lambda v: isinstance(v, dict), "a mapping"),
    "config_changes": (lambda v: isinstance(v, list), "a list"),
    **{k: (_int, "an integer") for k in ("params", "world_size", "epochs_planned", "epochs", "model_layers")},
    **{k: (_number, "a number") for k in ("min_delta", "wall_seconds", "test_acc", "test_loss")},
    **{k: (_str, "a string") for k in ("cnnlab", "torch", "status", "monitor", "mode", "command", "updated",
                                       "started", "imported", "source", "failure")},
    **{k: (_optional(_str), "a string or null") for k in ("dataset", "model", "stop_reason")},
}


def parse_json(text: str, path: Path, where: str = "") -> Any:
    """``json.loads`` with one-line errors: not JSON, or nested too deeply (Python's parser recurses).

    Raises:
        CnnlabError: the text is not JSON (``where``: `` line 3`` for a JSON-lines file).
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise CnnlabError(f"{path}{where} is damaged (JSON nested too deeply); {REDO}") from None
    except ValueError as exc:
        raise CnnlabError(f"{path}{where} is not valid JSON ({exc}); {REDO}") from None


def check_meta(meta: Any, path: Path) -> dict[str, Any]:
    """run.json's object, with every field it holds of the type cnnlab writes (see :data:`META_FIELDS`).

    Raises:
        CnnlabError: not an object, or a field of another type (the message names it).
    """
    if not isinstance(meta, dict):
        raise CnnlabError(f"{path} holds a JSON {type(meta).__name__}, not an object; {REDO}")
    for key, (test, what) in META_FIELDS.items():
        if key in meta and not test(meta[key]):
            raise CnnlabError(f"{path} field '{key}' is {_shown(meta[key])}, not {what}; {REDO}")
    return meta


def check_row(row: Any, path: Path, line: int, columns: tuple[str, ...]) -> dict[str, Any]:
    """One metrics.jsonl row: an object whose ``epoch`` is a positive integer and whose ``columns`` are
    numbers (NaN and infinities included: a diverged epoch logs them) or null.

    Raises:
        CnnlabError: another JSON value, or a field of another type (the message names line and field).
    """
    where = f"{path} line {line}"
    if not isinstance(row, dict):
        raise CnnlabError(f"{where} is a JSON {type(row).__name__}, not an object; {REDO}")
    if not (_int(row.get("epoch")) and row["epoch"] >= 1):
        raise CnnlabError(f"{where} field 'epoch' is {_shown(row.get('epoch'))}, not a positive integer; {REDO}")
    for key in columns:
        if row.get(key) is not None and not _number(row[key]):
            raise CnnlabError(f"{where} field '{key}' is {_shown(row[key])}, not a number; {REDO}")
    return row


RUN_SECTIONS = ("data", "model", "train")  # what `train` writes (the whole resolved config) always holds


def check_config(raw: dict, path: Path) -> dict:
    """A run's config.yaml mapping: non-empty, with the sections every run writes (``data.dataset`` set).

    An empty file would otherwise read as the default config and, e.g., evaluate the run on another dataset.

    Raises:
        CnnlabError: a section is missing or is not a mapping.
    """
    for key in RUN_SECTIONS:
        if not isinstance(raw.get(key), dict):
            got = "missing" if key not in raw else f"{_shown(raw[key])}, not a mapping"
            raise CnnlabError(f"{path} section '{key}' is {got}: it is not the config a run writes; {REDO}")
    if not isinstance(raw["data"].get("dataset"), str):
        raise CnnlabError(f"{path} has no 'data.dataset': it is not the config a run writes; {REDO}")
    return raw


def _shown(value: Any) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."

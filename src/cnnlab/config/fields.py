"""Raw config values checked against the schema's fields: types, choices and ranges, one line per mistake.

:func:`from_dict` builds a dataclass section from a mapping; :func:`check_value` checks one dotted key's value
alone (a ``compare --vary`` value before any variant trains). Errors name config keys, never flags.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import types
import typing
from typing import Any

from cnnlab.config.schema import Config
from cnnlab.errors import CnnlabError


def from_dict(cls: type, data: Any, prefix: str) -> Any:
    """Builds dataclass ``cls`` from a mapping, checking keys, types and choices recursively."""
    where = prefix.rstrip(".") or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CnnlabError(f"{where} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise CnnlabError(f"unknown config key '{prefix}{unknown[0]}'; valid keys in {where}: {', '.join(fields)}")
    kwargs = {name: _field_value(fields[name], hints[name], value, f"{prefix}{name}") for name, value in data.items()}
    return cls(**kwargs)


def _field_value(f: dataclasses.Field, hint: Any, value: Any, key: str) -> Any:
    """``value`` coerced to field ``f``'s type, its choices and range checked."""
    out = _coerce(hint, value, key)
    choices = f.metadata.get("choices")
    if choices is not None and out not in choices:
        shown = ", ".join("null" if c is None else str(c) for c in choices)
        raise CnnlabError(f"{_named(key)}: {value!r} is not one of {shown}")
    if "range" in f.metadata and out is not None:
        _check_range(out, f.metadata["range"], key)
    return out


def check_value(key: str, value: Any) -> None:
    """Checks one ``key`` = ``value`` on its own: the type, choices and range its field allows (what
    :func:`from_dict` checks), e.g. each value of a ``compare --vary`` before any variant trains. Keys inside
    lists or free mappings (``model.layers.0.filters``) and unknown keys are left to :func:`from_dict`.

    Raises:
        CnnlabError: a value the field can never take, naming the key.
    """
    cls: Any = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            return
        hint = typing.get_type_hints(cls)[part]
        if i == len(parts) - 1:
            _field_value(fields[part], hint, value, key)
        elif dataclasses.is_dataclass(hint):
            cls = hint
        else:
            return


def _check_range(value: float, bounds: tuple, key: str) -> None:
    ge, gt, le, lt = bounds
    wrong = ((ge is not None and not value >= ge) or (gt is not None and not value > gt)
             or (le is not None and not value <= le) or (lt is not None and not value < lt))
    if wrong:
        parts = [f"≥ {ge}" if ge is not None else "", f"> {gt}" if gt is not None else "",
                 f"≤ {le}" if le is not None else "", f"< {lt}" if lt is not None else ""]
        raise CnnlabError(f"`{key}` must be {' and '.join(p for p in parts if p)}, got {value}")


def _named(key: str) -> str:
    """A dotted config key in backticks, so the CLI names the flag the user typed (``train.lr`` → ``--lr``).

    A top-level key (``model``, ``name``) stays bare: it is a section, not an option, and ``model`` would
    otherwise read as the ``--model`` flag.
    """
    return f"`{key}`" if "." in key else key


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(a, value, key)
            except CnnlabError as exc:
                errors.append(exc)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise CnnlabError(f"{_named(key)} expects true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise CnnlabError(f"{_named(key)} expects an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None:
            raise CnnlabError(f"{_named(key)} expects a number, got {value!r}")
        if not math.isfinite(number):
            raise CnnlabError(f"{_named(key)} expects a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        hint = ("; write it in quotes to keep it text (YAML reads yes/no/on/off as true/false, 2024 as a number "
                "and a: b as a mapping), e.g. KEY='\"no\"'") if isinstance(value, (bool, int, float, dict)) else ""
        raise CnnlabError(f"{_named(key)} expects a string, got {value!r}{hint}")
    if origin is tuple:
        items = [value] if isinstance(value, (str, dict)) else value
        if not isinstance(items, (list, tuple)):
            raise CnnlabError(f"{_named(key)} expects a list, got {value!r}")
        return tuple(_coerce(args[0], v, f"{key}.{i}") for i, v in enumerate(items))
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise CnnlabError(f"{_named(key)} expects a mapping, got {value!r}")
    return value

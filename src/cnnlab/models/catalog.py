"""The model catalogue: every registered model's name and one-line description, without importing torch.

``cnnlab models`` only lists names and descriptions, yet the registry learns them by importing every family
module, and those define ``nn.Module`` classes: importing torch costs ~1.1 s, most of the command's time.
The catalogue reads the same facts without it: the tutorial models from their data (``SEED_SPECS``), the
classic families from their source text (each ``@register_model(...)`` builder: its registered name and the
first line of its docstring, what :meth:`ModelEntry.description` reads). A source that is missing, or that
registers a model in a way its text does not show plainly, sends the whole listing to the registry itself
(slower, never different); a test pins that the two agree exactly.
"""

from __future__ import annotations

import ast
from pathlib import Path

from cnnlab.models.registry import FAMILIES, describe, first_line, model_names
from cnnlab.models.seeds import SEED_SPECS

SOURCES = Path(__file__).parent  # where the family modules' source files are
_DATA_FAMILIES = ("seeds",)  # families registered from data that imports without torch, read directly


class UnreadableSource(Exception):
    """A family's source registers a model in a way that reading it cannot tell (only running it can)."""


def catalog() -> list[tuple[str, str]]:
    """(name, one-line description) of every registered model, sorted by name.

    Equal to ``[(n, describe(n)) for n in model_names()]``, read without importing torch when the family
    modules' sources are at hand (otherwise from the registry, which imports them).
    """
    found = {name: first_line(spec.description) for name, spec in SEED_SPECS.items()}
    try:
        for family in FAMILIES:
            if family in _DATA_FAMILIES:
                continue
            for name, doc in registered_in((SOURCES / f"{family}.py").read_text(encoding="utf-8")):
                if name in found:
                    raise UnreadableSource(f"{name} registered twice")  # the registry raises on it: it says so
                found[name] = first_line(doc)
    except (OSError, UnicodeDecodeError, SyntaxError, UnreadableSource):
        return [(name, describe(name)) for name in model_names()]
    return sorted(found.items())


def registered_in(source: str) -> list[tuple[str, str | None]]:
    """(registered name, docstring) of each builder a family module's source registers, in source order.

    A builder is a module-level function decorated with ``register_model(meta)`` (its function name) or
    ``register_model(meta, name="...")`` / ``register_model(meta, "...")``.

    Raises:
        SyntaxError: the source does not parse.
        UnreadableSource: ``register_model`` called anywhere else or with a computed name, or ``MODELS.add`` called
            directly: what the module registers is only known by running it.
    """
    tree = ast.parse(source)
    found, seen = [], set()
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for deco in node.decorator_list:
            if isinstance(deco, ast.Call) and _is_register_model(deco.func):
                found.append((_registered_name(deco) or node.name, ast.get_docstring(node, clean=False)))
                seen.add(id(deco))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and id(node) not in seen and (
                _is_register_model(node.func) or _is_models_add(node.func)):
            raise UnreadableSource(f"line {node.lineno}: a registration that is not a plain decorator")
    return found


def _is_register_model(func: ast.expr) -> bool:
    return (isinstance(func, ast.Name) and func.id == "register_model") or (
        isinstance(func, ast.Attribute) and func.attr == "register_model")


def _is_models_add(func: ast.expr) -> bool:
    return isinstance(func, ast.Attribute) and func.attr == "add" and (
        (isinstance(func.value, ast.Name) and func.value.id == "MODELS")
        or (isinstance(func.value, ast.Attribute) and func.value.attr == "MODELS"))


def _registered_name(call: ast.Call) -> str | None:
    """The ``name`` given to ``register_model`` (None: the function's own), as ``name or fn.__name__`` reads it."""
    given = [kw.value for kw in call.keywords if kw.arg == "name"] + call.args[1:2]
    if (any(kw.arg is None for kw in call.keywords) or len(call.args) > 2
            or any(isinstance(arg, ast.Starred) for arg in call.args)):
        raise UnreadableSource(f"line {call.lineno}: register_model with arguments it does not take plainly")
    if not given:
        return None
    node = given[0]
    if not (isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, str))):
        raise UnreadableSource(f"line {call.lineno}: register_model with a computed name")
    return node.value or None

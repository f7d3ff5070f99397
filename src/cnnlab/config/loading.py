"""Building a :class:`Config`: YAML files, packaged configs by name, and typed ``key.path`` overrides.

An override is a ``(key, value)`` pair whose value is already typed (``("train.epochs", 3)``); the
command line's ``--set KEY=VALUE`` text is parsed into such a pair by :func:`parse_override` (the value as
YAML). Errors name config keys, never command-line flags; the CLI translates them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from cnnlab.config.fields import from_dict
from cnnlab.config.schema import Config, ModelConfig
from cnnlab.errors import CnnlabError

Override = tuple[str, Any]
LayerLists = Callable[[str], list[dict]]  # model name -> its Keras-style layer list (or CnnlabError)
PACKAGED = Path(__file__).resolve().parent.parent / "configs"  # also reachable as configs/ at the repository root


# ------------------------------------------------------------------------------------------ YAML files


def load_config(path: str | Path | None = None, overrides: Iterable[Override] = (), base: dict | None = None,
                *, layer_lists: LayerLists | None = None) -> Config:
    """Reads a YAML config (or starts from ``base`` / the defaults) and applies typed overrides.

    Args:
        path: a YAML file.
        overrides: ``(key.path, value)`` pairs applied in order, e.g. ``("train.epochs", 3)``.
        base: the raw mapping to start from when no ``path`` is given.
        layer_lists: resolves a registered model's layer list, so that ``model.layers.0.filters`` can
            edit a model given by name (see :func:`apply_override`).

    Raises:
        CnnlabError: unreadable file, unknown key, wrong type or invalid choice.
    """
    raw: dict = dict(base or {})
    if path is not None:
        raw = read_yaml(path)
    for key, value in overrides:
        apply_override(raw, key, value, layer_lists=layer_lists)
    return from_dict(Config, raw, "")


def read_yaml(path: str | Path, *, allow_list: bool = False) -> dict | list:
    """A YAML mapping (or, with ``allow_list``, a list) from ``path``, with one-line errors for missing or
    malformed files.

    YAML's own safe loader reads it: no tags that build objects. A file over ``MAX_CONFIG_BYTES`` is refused
    before parsing, and so is one whose aliases would expand to more than ``MAX_CONFIG_NODES`` values (a
    "billion laughs" file: PyYAML shares aliased values, but every later walk over the config would not).

    Raises:
        CnnlabError: the file is missing, unreadable, too large, not YAML, or holds something else.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise CnnlabError(f"config file {p} not found; pass an existing YAML file (see configs/)")
    try:
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise CnnlabError(f"config file {p} is {size:,} bytes; a config is at most {MAX_CONFIG_BYTES:,} "
                              "(is it the right file?)")
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        _check_expansion(data, p)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise CnnlabError(f"config file {p}{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CnnlabError(f"config file {p} cannot be read ({exc}); save it as UTF-8 text") from None
    except ValueError as exc:  # a value YAML types but cannot build, e.g. the date 2024-13-01
        raise CnnlabError(f"config file {p} holds a value YAML cannot read ({exc}); quote it") from None
    except RecursionError:  # PyYAML composes nested values recursively
        raise CnnlabError(f"config file {p} is nested too deeply to be a config") from None
    if not isinstance(data, dict) and not (allow_list and isinstance(data, list)):
        raise CnnlabError(f"config file {p} must hold a mapping (data:, model:, train:, ...), got {type(data).__name__}")
    return data


MAX_CONFIG_BYTES = 1 << 20  # the largest packaged config is ~2 KB
MAX_CONFIG_NODES = 100_000  # values in the config once every alias is expanded


def _check_expansion(data: Any, path: Path) -> None:
    """Refuses a YAML document whose aliases expand to more than ``MAX_CONFIG_NODES`` values, or that
    contains itself; counts each shared value once per use in O(distinct values)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def count(node: Any) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise CnnlabError(f"config file {path} contains itself through a YAML alias; write the values out")
        active.add(key)
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        total = 1
        for child in children:
            total += count(child)
            if total > MAX_CONFIG_NODES:
                raise CnnlabError(f"config file {path} expands to more than {MAX_CONFIG_NODES:,} values through "
                                  "its YAML aliases; write the values out")
        active.discard(key)
        sizes[key] = total
        return total

    count(data)


def config_path(name: str | Path) -> Path:
    """A config file: an existing path, else a packaged config by name (``fashion_mnist_cnn``, ``fast/mnist``).

    Raises:
        CnnlabError: neither exists (or the path is a folder); the message lists the packaged configs.
    """
    path = Path(name)
    if path.is_file():
        return path
    packaged = PACKAGED / (str(name) if str(name).endswith((".yaml", ".yml")) else f"{name}.yaml")
    if packaged.is_file():
        return packaged
    # a folder of that name (and no packaged config of it): say what it is, not "not found"
    if (path / "config.yaml").is_file():  # a run directory: the config it was trained with
        raise CnnlabError(f"config {name} is a run directory; pass its config.yaml ({path / 'config.yaml'}) to train "
                          "it again, or resume it")
    if path.is_dir():
        raise CnnlabError(f"config {name} is a folder; pass a YAML file in it or a packaged config name")
    names = sorted(str(p.relative_to(PACKAGED).with_suffix("")) for p in PACKAGED.rglob("*.yaml"))
    raise CnnlabError(f"config file {name} not found; pass an existing YAML file or a packaged config: {', '.join(names)}")


def recipe_path(recipe: str, dataset: str, model: str | None = None) -> Path:
    """The packaged recipe ``configs/<recipe>/<dataset>.yaml`` (e.g. recipe ``fast``, dataset ``mnist``), or,
    for a ``model``, the recipe written for that model on that dataset when there is one (a file of the
    recipe's folder whose ``data.dataset`` and ``model.name`` are these, e.g. ``fast/fashion-mnist-tutorial.yaml``
    for ``cnn_64x2``).

    Raises:
        CnnlabError: unknown recipe, or no config of it for ``dataset``.
    """
    docs = _recipe_docs(PACKAGED / recipe)  # each file parsed once, for both questions below
    if model is not None:
        for candidate, doc in docs:
            if _dataset_of(doc) == dataset and (doc.get("model") or {}).get("name") == model:
                return candidate
    have = _dataset_recipes(docs)
    if not have:
        recipes = sorted(p.name for p in PACKAGED.iterdir() if p.is_dir() and _dataset_recipes(_recipe_docs(p)))
        raise CnnlabError(f"unknown recipe {recipe!r}; valid: {', '.join(recipes)}")
    if dataset not in have:
        raise CnnlabError(f"recipe {recipe!r} has no config for dataset {dataset!r}; it has: {', '.join(have)}")
    return PACKAGED / recipe / f"{dataset}.yaml"


def _recipe_docs(folder: Path) -> list[tuple[Path, dict]]:
    """(file, parsed YAML) of every config in a recipe folder, in name order (none when it is no folder)."""
    return [(p, read_yaml(p)) for p in sorted(folder.glob("*.yaml"))] if folder.is_dir() else []


def _dataset_of(doc: dict) -> Any:
    return (doc.get("data") or {}).get("dataset")


def _dataset_recipes(docs: list[tuple[Path, dict]]) -> list[str]:
    """The datasets a recipe folder has a config for: files named after the dataset they train on (others, like
    ``fast/mnist_best.yaml``, are configs reached by name)."""
    return [p.stem for p, doc in docs if _dataset_of(doc) == p.stem]


# ------------------------------------------------------------------------------------------- overrides


def parse_value(text: str) -> Any:
    """A value written on a command line, read as YAML (``32``, ``true``, ``[1, 2]``), else the plain text.

    YAML 1.1 reads ``1e-3`` (no dot) as a string; learning rates are written that way, so such scalars
    become floats.
    """
    if not text.strip():
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value.strip()):
        return float(value)
    return value


def parse_override(item: str) -> Override:
    """``"a.b.c=value"`` → ``("a.b.c", value)`` with the value read by :func:`parse_value`.

    Raises:
        CnnlabError: not of the form KEY=VALUE.
    """
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise CnnlabError(f"{item!r}: expected KEY=VALUE, e.g. train.epochs=10")
    return key.strip(), parse_value(text)


def apply_override(raw: dict, key: str, value: Any, *, layer_lists: LayerLists | None = None) -> None:
    """Sets ``key`` (dotted; list items by index: ``model.layers.0.filters``) to ``value`` in ``raw``.

    A key into ``model.layers`` of a model given by name first copies that model's layer list in, via
    ``layer_lists``.

    Raises:
        CnnlabError: a path through something that is not a mapping or list, or an index out of range.
    """
    parts = key.strip().split(".")
    if parts[:2] == ["model", "layers"] and len(parts) > 2:
        _materialize_layers(raw, key, layer_lists)
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            node = node[_index(node, part, parts[: i + 1])]
            continue
        if not isinstance(node, dict):
            raise CnnlabError(f"{key}: {'.'.join(parts[:i])} is not a mapping")
        if node.get(part) is None:
            node[part] = [] if nxt.isdigit() else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[_index(node, last, parts)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise CnnlabError(f"{key}: {'.'.join(parts[:-1])} is not a mapping")


def _index(node: list, part: str, path: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise CnnlabError(f"{'.'.join(path)}: index {part} out of range (the list has {len(node)} items)")
    return int(part)


def _materialize_layers(raw: dict, key: str, layer_lists: LayerLists | None) -> None:
    """Lets ``model.layers.0.filters=32`` edit a model given by name: copy its layer list in."""
    model = raw.setdefault("model", {})
    if not isinstance(model, dict) or model.get("layers"):
        return
    name = model.get("name", ModelConfig.name)
    if layer_lists is None:
        raise CnnlabError(f"{key}: the config has no model.layers to edit; give model.layers in the YAML")
    model["layers"] = layer_lists(name)


# ------------------------------------------------------------------------------------------- saving


def to_dict(cfg: Any) -> Any:
    """Plain YAML-ready data (tuples → lists) of a config dataclass."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` → ``{"train.lr": 0.1}`` (lists of mappings by index: ``model.layers.0.filters``)."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list) and any(isinstance(v, (dict, list)) for v in tree):
        items = ((str(i), v) for i, v in enumerate(tree))
    else:
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def dump_yaml(cfg: Config) -> str:
    """The fully resolved config as YAML (what ``config.yaml`` in a run holds)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False, width=110)


def replace(cfg: Config, **sections: Any) -> Config:
    """A copy with whole sections or top-level values replaced."""
    return dataclasses.replace(cfg, **sections)

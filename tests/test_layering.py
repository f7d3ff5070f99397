"""The house rule: every import points down the layers (function-local and TYPE_CHECKING imports included).

errors/registry/io/files → config → native → models → data → training → runs → inspect → plots → views → serve
→ app → cli → the package face. A module may import its own layer and the ones before it; config imports
only errors.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("cnnlab._version", "cnnlab.errors", "cnnlab.registry", "cnnlab.io", "cnnlab.files"),
    ("cnnlab.config",),
    ("cnnlab.native",),
    ("cnnlab.models",),
    ("cnnlab.data",),
    ("cnnlab.training",),
    ("cnnlab.runs",),
    ("cnnlab.inspect",),
    ("cnnlab.plots",),
    ("cnnlab.views",),
    ("cnnlab.serve",),
    ("cnnlab.app",),
    ("cnnlab.cli",),
    ("cnnlab", "cnnlab.__main__"),  # the public face: imports anything, imported by nothing below it
)
ONLY = {"cnnlab.config": ("cnnlab.errors", "cnnlab.config")}  # config imports only errors (and itself)


def layer_of(module: str) -> int:
    """Index of the layer that owns ``module`` (the longest matching prefix wins)."""
    best, found = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, found = len(name), i
    if found is None:
        raise AssertionError(f"{module} belongs to no layer; add it to LAYERS in tests/test_layering.py")
    return found


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported cnnlab module) for every import statement anywhere in the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "cnnlab"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "cnnlab":
                continue
            # `from cnnlab.x import y` may name a submodule y: judge by the most specific module that exists
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if _is_module(sub) else target))
    return found


def _is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def violations(root: Path) -> list[str]:
    """Every import under ``root`` (a ``src`` folder) that points to a later layer, as ``file:line: a -> b``."""
    out = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        own = layer_of(module)
        for line, target in imports(path, module):
            allowed = ONLY.get(next((k for k in ONLY if module == k or module.startswith(k + ".")), ""))
            if layer_of(target) > own or (allowed and not target.startswith(allowed)):
                out.append(f"{path.relative_to(root)}:{line}: {module} -> {target}")
    return out


def test_no_import_points_up():
    assert violations(SRC) == []


def test_every_module_has_a_layer():
    for path in SRC.joinpath("cnnlab").rglob("*.py"):
        layer_of(module_name(path, SRC))


@pytest.mark.parametrize(("source", "bad"), [
    ("from cnnlab.training.trainer import Trainer\n", True),  # models -> training: up
    ("def f():\n    from cnnlab.app import report\n", True),  # a lazy import counts too
    ("from cnnlab import errors\n", False),
    ("from cnnlab.config import ModelConfig\n", False),
])
def test_an_upward_import_is_caught(tmp_path, source, bad):
    pkg = tmp_path / "cnnlab" / "models"
    pkg.mkdir(parents=True)
    (tmp_path / "cnnlab" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "synthetic.py").write_text(source)
    assert bool(violations(tmp_path)) is bad


def test_config_imports_only_errors(tmp_path):
    pkg = tmp_path / "cnnlab" / "config"
    pkg.mkdir(parents=True)
    (tmp_path / "cnnlab" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from cnnlab.io import write_atomic\n")  # io is below config, still refused
    assert violations(tmp_path) == ["cnnlab/config/__init__.py:1: cnnlab.config -> cnnlab.io"]

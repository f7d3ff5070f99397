"""``cnnlab`` itself: the parser, library errors as one ``error:`` line with flags for names, exit codes,
``python -m cnnlab`` and a reader that leaves early."""

import argparse
import importlib
import subprocess
import sys

import pytest

from cnnlab._version import __version__
from cnnlab.cli import build_parser, main
from cnnlab.cli.main import COMMANDS, translate


def test_python_dash_m_exit_codes_and_a_closed_pipe():
    bad = subprocess.run([sys.executable, "-m", "cnnlab", "datasets", "info", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown dataset 'nope'; valid:")
    usage = subprocess.run([sys.executable, "-m", "cnnlab", "train", "--bogus"], capture_output=True, text=True)
    assert usage.returncode == 2 and "unrecognized arguments: --bogus" in usage.stderr
    # `cnnlab models | head -1`: the reader has gone before the output is written; no traceback, exit 0
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0
    assert b"Traceback" not in proc.stderr.read()


def test_an_output_that_cannot_encode_a_character_gets_a_question_mark_not_a_traceback():
    import os

    for encoding in ("ascii", "latin-1"):
        env = {**os.environ, "PYTHONIOENCODING": encoding}
        proc = subprocess.run([sys.executable, "-m", "cnnlab", "models"], capture_output=True, env=env, timeout=60)
        assert proc.returncode == 0 and b"Traceback" not in proc.stderr
        assert b"inputs ? 63x63" in proc.stdout  # inception_v3's "inputs ≥ 63x63"


def test_no_command_prints_the_help_and_version_prints_the_version(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: cnnlab") and "cnnlab demo" in out and "data: --data-dir" in out
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"cnnlab {__version__}\n"


def test_every_command_has_its_module_and_function():
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == set(COMMANDS)
    for command, module in COMMANDS.items():
        assert callable(getattr(importlib.import_module(f"cnnlab.cli.{module}"), "cmd_" + command.replace("-", "_")))


def test_translate_names_flags_except_keys_set_with_set():
    plain = argparse.Namespace(overrides=[])
    message = ("`out` exists; pass `overwrite` or `resume` it; `top_k` `n` `model.weights` `train.epochs` "
               "`data.data_dir` `fine_tune` `unknown.key` `1x`")
    assert translate(message, plain) == ("--out exists; pass --overwrite or --resume it; --top-k -n --weights "
                                         "--epochs --data-dir --fine-tune unknown.key `1x`")
    by_set = argparse.Namespace(overrides=["model.weights=/w.pth", " train.epochs =3"])
    assert translate("`model.weights` and `train.epochs`", by_set) == "model.weights and train.epochs"
    assert translate("`images` 7", argparse.Namespace()) == "--images 7"  # commands without --set


def test_library_errors_are_one_line_with_flags(capsys, tmp_path):
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'nope'} is not a directory; pass a run directory written by cnnlab train\n"


def test_interrupted_commands_exit_130(capsys, monkeypatch):
    import cnnlab.cli.catalog as catalog

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(catalog, "cmd_models", interrupted)
    assert main(["models"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_bugs_keep_their_traceback(monkeypatch):
    import cnnlab.cli.catalog as catalog

    def broken(args):
        raise ValueError("a bug, not a user mistake")

    monkeypatch.setattr(catalog, "cmd_models", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["models"])


def test_the_readme_table_of_exit_codes_is_the_codes_commands_return():
    import ast
    import importlib
    import re
    from pathlib import Path

    cli_main = importlib.import_module("cnnlab.cli.main")  # the package's `main` attribute is the function

    root = Path(__file__).resolve().parents[2]
    text = (root / "README.md").read_text()
    table = text[text.index("### Exit codes"):].split("\n\n")[2]
    rows = {int(m.group(1)): m.group(2) for m in re.finditer(r"^\| (\d+) \| (.+) \|$", table, re.M)}
    assert set(rows) == set(cli_main.EXIT_CODES) == {0, 1, 2, 130, 143}
    assert rows[0] == cli_main.EXIT_CODES[0]
    assert rows[130].startswith(cli_main.EXIT_CODES[130]) and rows[143].startswith(cli_main.EXIT_CODES[143])
    assert rows[1].startswith(cli_main.EXIT_CODES[1]) and rows[2].startswith(cli_main.EXIT_CODES[2].split(":")[0])
    # commands return the named codes, never bare numbers that could drift from the table
    for path in (root / "src" / "cnnlab" / "cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Return) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, int):
                raise AssertionError(f"{path.name}:{node.lineno} returns a bare {node.value.value}")

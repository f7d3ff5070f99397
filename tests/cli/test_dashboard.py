"""``cnnlab dashboard``: prints its URL and serves until Ctrl-C; a missing folder, a taken port and another
--host (a warning, and the Host check still on) from the command line."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from cnnlab.cli import main

URL = re.compile(r"cnnlab dashboard: (http://\S+/)\s+\((\d+) runs? under ")


def _start(args):
    # Ctrl-C as at a terminal: a suite started in the background (`cmd &` in a script) inherits SIGINT ignored,
    # and uvicorn then has no Ctrl-C to re-raise after its clean shutdown
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "dashboard", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    line = proc.stdout.readline()
    m = URL.search(line)
    if not m:
        proc.kill()
        raise AssertionError(f"no URL line: {line!r} {proc.stderr.read()}")
    return proc, m


def _get(url, host=None):
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _stop(proc):
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    try:
        return proc.wait(timeout=20)
    finally:
        proc.kill()


@pytest.mark.slow
def test_serves_the_runs_until_ctrl_c(dnn_run):
    proc, m = _start([str(dnn_run.parent), "--port", "0"])
    url, count = m.group(1), int(m.group(2))
    assert url.startswith("http://localhost:") and count == 1
    port = int(url.rsplit(":", 1)[1].strip("/"))
    status, body = _get(f"http://127.0.0.1:{port}/api/runs")
    assert status == 200 and [r["name"] for r in json.loads(body)["rows"]] == [dnn_run.name]
    assert _get(f"http://127.0.0.1:{port}/api/runs", host="attacker.example")[0] == 403
    assert _stop(proc) == 130  # EXIT_INTERRUPTED, as for any command stopped by Ctrl-C


@pytest.mark.slow
def test_another_host_prints_a_warning(tmp_path):
    proc, m = _start([str(tmp_path), "--port", "0", "--host", "0.0.0.0"])
    port = int(m.group(1).rsplit(":", 1)[1].strip("/"))
    assert _get(f"http://127.0.0.1:{port}/", host="attacker.example")[0] == 403  # DNS rebinding still refused
    assert _stop(proc) == 130  # EXIT_INTERRUPTED, as for any command stopped by Ctrl-C
    assert "warning: serving on 0.0.0.0, not 127.0.0.1" in proc.stderr.read()


def test_a_missing_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["dashboard", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "nope is not a folder of runs" in err and "as RUNS_DIR" in err


def test_a_taken_port_names_the_flag(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        assert main(["dashboard", str(tmp_path), "--port", str(taken.getsockname()[1])]) == 2
    assert "choose another --port" in capsys.readouterr().err


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["dashboard", "--help"])
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("RUNS_DIR", "--port", "--host", "--open", "127.0.0.1"))

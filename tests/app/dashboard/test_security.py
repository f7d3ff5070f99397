"""The safety rules: the Host check (DNS rebinding), security headers, capped uploads, run files by name only."""

from __future__ import annotations

import os

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from cnnlab.app.dashboard.security import HostGuard, TooLarge, form_file, host_name, read_capped, run_file
from cnnlab.errors import CnnlabError


@pytest.mark.parametrize(("header", "name"), [
    ("localhost:8765", "localhost"), ("127.0.0.1", "127.0.0.1"), ("[::1]:8765", "[::1]"), ("[::1]", "[::1]"),
    ("Evil.Example:80", "evil.example"), ("", ""), ("localhost.evil.example", "localhost.evil.example")])
def test_host_name(header, name):
    assert host_name(header) == name


def _app(**kw):
    app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("hi"))])
    return HostGuard(app, **kw)


@pytest.mark.parametrize(("host", "status"), [
    ("127.0.0.1:8765", 200), ("localhost", 200), ("[::1]:8765", 200),
    ("evil.example", 403), ("127.0.0.1.nip.io", 403), ("localhost.evil.example:8765", 403), ("10.0.0.5:8765", 403)])
def test_only_loopback_hosts_are_served(host, status):
    r = TestClient(_app()).get("/", headers={"Host": host})
    assert r.status_code == status
    assert r.headers["x-frame-options"] == "DENY" and "default-src 'self'" in r.headers["content-security-policy"]
    if status == 403:
        assert "DNS rebinding" in r.text


def test_an_allowed_extra_host():
    client = TestClient(_app(allowed=["Box.Lan"]))
    assert client.get("/", headers={"Host": "box.lan:8765"}).status_code == 200
    assert client.get("/", headers={"Host": "other.lan"}).status_code == 403


def _request(chunks, length=None):
    headers = [(b"content-length", str(length).encode())] if length is not None else []
    messages = [{"type": "http.request", "body": c, "more_body": i + 1 < len(chunks)} for i, c in enumerate(chunks)]

    async def receive():
        return messages.pop(0)

    return Request({"type": "http", "method": "POST", "headers": headers}, receive)


def test_uploads_are_capped_by_declared_length_and_while_they_arrive(run_async):
    assert run_async(read_capped(_request([b"ab", b"cd"]), 4)) == b"abcd"
    with pytest.raises(TooLarge):
        run_async(read_capped(_request([b"x"], length=10), 4))  # refused before reading
    with pytest.raises(TooLarge):
        run_async(read_capped(_request([b"abc", b"de"]), 4))  # no length given: counted


def test_run_files_by_offered_name_inside_the_root_only(tmp_path):
    root = tmp_path / "runs"
    run = root / "r"
    run.mkdir(parents=True)
    (run / "model.safetensors").write_bytes(b"w")
    (tmp_path / "secret.txt").write_text("s")
    os.symlink(tmp_path / "secret.txt", run / "report.html")
    allowed = ("model.safetensors", "report.html", "../secret.txt")
    real = root.resolve()
    assert run_file(run, "model.safetensors", allowed, real) == (run / "model.safetensors").resolve()
    assert run_file(run, "report.html", allowed, real) is None  # a symlink out of RUNS_DIR
    assert run_file(run, "../secret.txt", allowed, real) is None  # a path, even if listed
    assert run_file(run, "config.yaml", allowed, real) is None  # not offered
    assert run_file(run, "model.onnx", ("model.onnx",), real) is None  # offered but absent


def _form(*parts: tuple[str, str | None, bytes], boundary: str = "----cnnlab7") -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_form_file_unwraps_a_multipart_upload_byte_for_byte():
    data = bytes(range(256)) * 8 + b"\r\n------cnnlab\r\n\r\n"  # every byte value, line ends, a boundary look-alike
    ctype = "multipart/form-data; boundary=----cnnlab7"
    assert form_file(_form(("note", None, b"hi"), ("file", "x.png", data)), ctype) == data
    assert form_file(_form(("other", "y.png", b"first"), ("file", "x.png", data)), ctype) == data  # `file` first
    assert form_file(_form(("image", "y.png", data)), ctype) == data  # else the first part with a file name
    assert form_file(data, "image/png") == data and form_file(data, "") == data  # a raw body as it is
    with pytest.raises(CnnlabError, match=r"^the form has no file; send the image as `file` .*--data-binary"):
        form_file(_form(("note", None, b"hi")), ctype)
    with pytest.raises(CnnlabError, match="the form has no file"):
        form_file(data, "multipart/form-data")  # no boundary: no parts

"""The server: addresses and URLs, a real uvicorn server in a thread, raw requests that no client library
would normalise (traversal, Host), and request mistakes as 400/404 JSON."""

from __future__ import annotations

import socket

import pytest
from fastapi.testclient import TestClient

from cnnlab.app.dashboard import server as server_module
from cnnlab.app.dashboard.server import Background, _extra_hosts, _url, create_app, listen, serve
from cnnlab.errors import CnnlabError


def test_urls_name_loopback_as_localhost():
    assert _url("127.0.0.1", 8765) == "http://localhost:8765/"
    assert _url("0.0.0.0", 80) == "http://localhost:80/"
    assert _url("192.168.1.5", 8765) == "http://192.168.1.5:8765/"
    assert _url("fe80::1", 8765) == "http://[fe80::1]:8765/"


def test_a_non_loopback_host_is_added_to_the_allowed_hosts():
    assert _extra_hosts("192.168.1.5") == ["192.168.1.5"]
    assert _extra_hosts("fe80::1") == ["[fe80::1]"]
    assert socket.gethostname() in _extra_hosts("0.0.0.0")


def test_a_taken_port_is_a_one_line_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(CnnlabError, match=r"cannot listen on 127.0.0.1:\d+ .*choose another `port`"):
            listen("127.0.0.1", taken.getsockname()[1])



def test_ctrl_c_stops_the_server_cleanly_then_is_raised_again(tmp_path, monkeypatch):
    def interrupted(self, sockets):  # what uvicorn.Server.run does on Ctrl-C: shut down, then re-raise it
        assert len(sockets) == 1 and sockets[0].fileno() >= 0
        raise KeyboardInterrupt

    monkeypatch.setattr(server_module.uvicorn.Server, "run", interrupted)
    lines = []
    with pytest.raises(KeyboardInterrupt):  # the CLI's EXIT_INTERRUPTED (130), not a clean 0
        serve(tmp_path, port=0, log=lines.append)
    assert lines[0].startswith("cnnlab dashboard: http://localhost:") and lines[1:] == ["cnnlab dashboard stopped"]


@pytest.mark.parametrize("port", [65536, 99999, -1])
def test_a_port_out_of_range_is_a_one_line_error(port):
    with pytest.raises(CnnlabError, match=rf"^`port` {port} is not a TCP port; choose one in 1..65535"):
        listen("127.0.0.1", port)


def test_a_host_that_does_not_resolve_is_a_one_line_error():
    with pytest.raises(CnnlabError, match=r"^cannot listen on nosuchhost.invalid:0 "):
        listen("nosuchhost.invalid", 0)


def _raw(port: int, target: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """One HTTP/1.1 request sent byte for byte (no client library to clean the path)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("srv") / "runs"
    (root / "r").mkdir(parents=True)
    (root / "r" / "run.json").write_text('{"status": "done"}')
    (root / "r" / "config.yaml").write_text("model: {name: x}\n")
    (root / "r" / "model.safetensors").write_bytes(b"weights")
    (root.parent / "secret.txt").write_text("secret")
    srv = Background(root)
    yield srv
    srv.stop()


@pytest.mark.parametrize("target", [
    "/runs/r/files/../../secret.txt", "/runs/r/files/%2e%2e%2f%2e%2e%2fsecret.txt", "/runs/../secret.txt",
    "/runs/%2e%2e/files/model.safetensors", "/static/../../../../secret.txt", "/static/%2e%2e/%2e%2e/secret.txt",
    "/runs/r/figures/%2e%2e%2fmodel.safetensors", "/../secret.txt", "//etc/passwd"])
def test_raw_traversal_requests(server, target):
    status, body = _raw(server.port, target)
    assert status in (400, 404) and b"secret" not in body and b"weights" not in body


def test_raw_host_headers(server):
    assert _raw(server.port, "/api/runs")[0] == 200
    assert _raw(server.port, "/api/runs", host=f"localhost:{server.port}")[0] == 200
    assert _raw(server.port, "/api/runs", host="[::1]")[0] == 200
    assert _raw(server.port, "/api/runs", host="rebind.attacker.example")[0] == 403
    assert _raw(server.port, "/runs/r/files/model.safetensors", host="rebind.attacker.example")[1].count(b"weights") == 0


def test_request_mistakes_are_json_errors(tmp_path):
    c = TestClient(create_app(tmp_path), base_url="http://127.0.0.1")
    r = c.get("/api/runs/x/test-images", params={"limit": "lots"})
    assert r.status_code == 400 and r.json()["error"].startswith("limit:")
    assert c.get("/api/runs/x/confusion/a/b").status_code == 404

"""The dashboard's safety rules, each in one place.

* :class:`HostGuard`: a request whose ``Host`` header is not a loopback name gets 403. A web page on
  another site could otherwise point its own domain at 127.0.0.1 (DNS rebinding) and read the runs.
  Every response also carries headers that keep other sites from framing or sniffing it.
* :func:`read_capped`: uploads larger than the limit are refused while they arrive (413), before they
  are decoded by :func:`cnnlab.data.decode.decode_image`, which refuses decompression bombs itself.
* :func:`form_file`: a ``multipart/form-data`` upload (``curl -F file=@x.png``, an HTML form) is unwrapped
  to its file with the standard library's MIME parser, within the same cap (python-multipart not needed).
* :func:`run_file`: a file of a run is served only when its name is one the dashboard offers and its real
  location (symlinks followed) is inside RUNS_DIR.
"""

from __future__ import annotations

import email.parser
import email.policy
from collections.abc import Iterable
from pathlib import Path

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from cnnlab.errors import CnnlabError

LOOPBACK = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
                                 b"script-src 'self'; connect-src 'self'; frame-ancestors 'none'"),
]


class TooLarge(Exception):  # noqa: N818 - an HTTP 413
    """An upload over the limit."""


def host_name(header: str) -> str:
    """The host part of a ``Host`` header, lower-case, without the port (``[::1]:8765`` → ``[::1]``)."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[: h.find("]") + 1] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class HostGuard:
    """ASGI middleware: 403 unless the Host header names this machine's loopback (or an allowed host).

    Args:
        app: the application.
        allowed: extra host names (without port), e.g. the address given to ``--host``.
    """

    def __init__(self, app: ASGIApp, allowed: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = LOOPBACK | {a.lower() for a in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
        if host_name(host) not in self.allowed:
            body = (b"403 Forbidden: this dashboard answers only requests addressed to localhost / 127.0.0.1 / [::1]"
                    b" (Host header check against DNS rebinding)\n")
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                    (b"content-length", str(len(body)).encode()), *HEADERS]})
            await send({"type": "http.response.body", "body": body})
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in HEADERS if h[0] not in present)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def read_capped(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it passes ``limit`` bytes (a declared length is checked first).

    Raises:
        TooLarge: over the limit.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def form_file(body: bytes, content_type: str) -> bytes:
    """The file in a ``multipart/form-data`` body (RFC 7578): the part named ``file``, else the first part
    with a file name; ``body`` itself for any other content type (the raw bytes of an image).

    Raises:
        CnnlabError: a form without a boundary or without a file part.
    """
    if not content_type.lower().lstrip().startswith("multipart/form-data"):
        return body
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    parts = list(msg.iter_parts()) if msg.is_multipart() else []
    named = [p for p in parts if p.get_param("name", header="content-disposition") == "file"]
    files = named or [p for p in parts if p.get_filename() is not None]
    if not files:
        raise CnnlabError("the form has no file; send the image as `file` (curl -F file=@x.png) or as the raw "
                          "body (curl --data-binary @x.png -H 'Content-Type: image/png')")
    return files[0].get_payload(decode=True) or b""


def run_file(run_path: Path, name: str, allowed: Iterable[str], root: Path) -> Path | None:
    """``run_path/name`` if ``name`` is one of ``allowed`` (plain names, no folders) and the file's real
    location is inside ``root`` (resolved RUNS_DIR); else None."""
    if name not in set(allowed) or "/" in name or "\\" in name or name in (".", ".."):
        return None
    path = run_path / name
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return real if real.is_file() and real.is_relative_to(root) else None

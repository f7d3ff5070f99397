"""The dashboard application (FastAPI on uvicorn) and ``serve``, which ``cnnlab dashboard`` calls."""

from __future__ import annotations

import contextlib
import html
import ipaddress
import os
import socket
import sys
import threading
import time
import webbrowser
from collections.abc import AsyncIterator, Callable, Iterable
from importlib import resources
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from cnnlab.app.dashboard import pages, routes_compare, routes_model, routes_runs
from cnnlab.app.dashboard.jobs import Busy
from cnnlab.app.dashboard.security import LOOPBACK, HostGuard, TooLarge
from cnnlab.app.dashboard.store import Dashboard, NotFound
from cnnlab.errors import CnnlabError

STATIC = Path(str(resources.files("cnnlab.app.dashboard") / "static"))
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8765
Log = Callable[[str], None]


def _error(request: Request, status: int, message: str, headers: dict | None = None) -> Response:
    if request.url.path.startswith("/api/") or status not in (404,):
        return JSONResponse({"error": message}, status, headers=headers)
    body = (f"<!doctype html><meta charset=utf-8><link rel=stylesheet href=/static/style.css><title>Not found</title>"
            f"<main class=notfound><h1>Not found</h1><p>{html.escape(message)}</p><p><a href=/>All runs</a></p></main>")
    return HTMLResponse(body, status)


def create_app(runs_dir: str | os.PathLike, *, display: str | None = None, allowed_hosts: Iterable[str] = (),
               upload_limit: int = 20 << 20, job_timeout: float = 30.0, workers: int = 2) -> FastAPI:
    """The dashboard over ``runs_dir``: pages, JSON API, server-sent events and the packaged static files.

    Args:
        runs_dir: RUNS_DIR (read-only; each run's ``.cache/dashboard`` is the only thing written).
        display: how commands on the page name RUNS_DIR (default ``runs_dir`` as given).
        allowed_hosts: Host header names accepted besides localhost, 127.0.0.1 and [::1].
        upload_limit: largest upload in bytes (default 20 MiB).
        job_timeout: seconds a request waits for a heavy computation before a "still computing" 503.
        workers: threads for heavy computations.
    """
    dash = Dashboard(runs_dir, display=display, upload_limit=upload_limit, job_timeout=job_timeout, workers=workers)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        dash.close()

    app = FastAPI(title="cnnlab dashboard", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.dash = dash

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        return _error(request, 404, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(CnnlabError)
    async def user_error(request: Request, exc: CnnlabError) -> Response:
        return _error(request, 400, str(exc))

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy) -> Response:
        return _error(request, 503, str(exc), {"Retry-After": "2"})

    @app.exception_handler(TooLarge)
    async def too_large(request: Request, exc: TooLarge) -> Response:
        mib = dash.upload_limit / (1 << 20)
        return _error(request, 413, f"the upload is larger than {mib:g} MiB; send a smaller image")

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:])
        return _error(request, 404 if first.get("loc", ("",))[0] == "path" else 400,
                      f"{where}: {first.get('msg', 'invalid request')}")

    for module in (routes_runs, routes_model, routes_compare, pages):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(HostGuard, allowed=allowed_hosts)
    return app


def _wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def _extra_hosts(host: str) -> list[str]:
    """Host names a non-loopback ``--host`` should accept: the address itself, or for a wildcard bind this
    machine's name and addresses."""
    if not _wildcard(host):
        return [f"[{host}]" if ":" in host else host]
    name = socket.gethostname()
    try:
        addresses = socket.gethostbyname_ex(name)[2]
    except OSError:
        addresses = []
    return [name, socket.getfqdn(), *addresses]


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port).

    Raises:
        CnnlabError: the address cannot be used (port taken or out of range, host not on this machine).
    """
    if not 0 <= port <= 65535:  # socket.bind raises OverflowError, no OSError, for these
        raise CnnlabError(f"`port` {port} is not a TCP port; choose one in 1..65535 (0: any free port)")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        raise CnnlabError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another `port` "
                          "(or stop what uses it)") from None
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    shown = "localhost" if host in LOOPBACK or _wildcard(host) else host
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(shown).version == 6:
            shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


class Background:
    """A dashboard server in a daemon thread (tests, benchmarks, screenshots): ``url``, then ``stop()``."""

    def __init__(self, runs_dir: str | os.PathLike, host: str = DEFAULT_HOST, port: int = 0, **options) -> None:
        self.sock = listen(host, port)
        self.port = self.sock.getsockname()[1]
        self.url = _url(host, self.port)
        self.app = create_app(runs_dir, **options)
        config = uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.server.started:
            raise RuntimeError("the dashboard server did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def serve(runs_dir: str | os.PathLike = "runs", *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          open_browser: bool = False, log: Log = print) -> None:
    """Serves the dashboard of ``runs_dir`` until Ctrl-C, printing its URL first.

    Binds 127.0.0.1 unless ``host`` says otherwise; another host prints a warning, since anyone who can
    reach it can then see the runs (requests must still name this machine in their Host header).

    Raises:
        CnnlabError: ``runs_dir`` is not a folder, or ``host:port`` cannot be used.
        KeyboardInterrupt: Ctrl-C, after the server has shut down cleanly (``cnnlab dashboard`` exits 130).
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise CnnlabError(f"{root} is not a folder of runs; train one first (cnnlab train) or give the folder that "
                          "holds them as `runs_dir`")
    loopback = host in LOOPBACK
    sock = listen(host, port)
    url = _url(host, sock.getsockname()[1])
    if not loopback:
        print(f"warning: serving on {host}, not 127.0.0.1: anyone who can reach this machine on port "
              f"{sock.getsockname()[1]} can see these runs and their images", file=sys.stderr)
    app = create_app(root, display=str(runs_dir), allowed_hosts=[] if loopback else _extra_hosts(host))
    count = len(app.state.dash.index.rows())
    log(f"cnnlab dashboard: {url}  ({count} run{'s' if count != 1 else ''} under {root}; Ctrl-C stops it)")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    if open_browser:
        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down cleanly, then re-raises Ctrl-C: the CLI exits 130 as for
        log("cnnlab dashboard stopped")  # any interrupted command (README: Exit codes)
        raise
    finally:
        sock.close()
    log("cnnlab dashboard stopped")

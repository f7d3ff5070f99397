"""Runs: the table, one run's facts and files, its live metrics as server-sent events, confusion cells."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse

from cnnlab.app.dashboard.encode import png
from cnnlab.app.dashboard.index import RunRow
from cnnlab.app.dashboard.security import run_file
from cnnlab.app.dashboard.store import Dashboard, NotFound, RunContext
from cnnlab.app.dashboard.table import COLUMNS, select
from cnnlab.app.report import REPORT
from cnnlab.errors import CnnlabError
from cnnlab.files import read_text
from cnnlab.runs.progress import PROGRESS, read_progress, trainer_alive
from cnnlab.runs.run_dir import CONFIG, META, METRICS, RESULTS, SUMMARY, WEIGHTS, RunDir
from cnnlab.serve.onnx import ONNX_FILE
from cnnlab.views import cell_images

router = APIRouter()
DOWNLOADS = (WEIGHTS, ONNX_FILE, REPORT)
POLL = 0.25  # seconds between looks at a live run's files: a new epoch shows well within 2 s


def dash(request: Request) -> Dashboard:
    return request.app.state.dash


async def compute(request: Request, row: RunRow, name: str, fn: Callable[..., Any], *args: Any,
                  timeout: float | None = None) -> Any:
    """``fn(ctx, *args)`` in the worker pool on the loaded run, one computation per model at a time."""
    d = dash(request)

    def job() -> Any:
        ctx = d.context(row)
        with ctx.lock:
            return fn(ctx, *args)

    return await d.jobs.run((row.id, name, args), job, timeout)


def _read(path, parse: Callable[[str], Any] = json.loads) -> Any:
    try:
        return parse(read_text(path))  # never blocks on a FIFO
    except (OSError, ValueError, RecursionError, CnnlabError):
        return None


# ------------------------------------------------------------------------------------------- the table


@router.get("/api/runs")
def runs(request: Request, q: str = "", where: str = "", sort: str = "started", desc: bool = True) -> Response:
    d = dash(request)
    t0 = time.perf_counter()
    rows = d.index.rows()
    shown = select(rows, text=q, where=where, sort=sort, desc=desc)
    body = {"root": d.display, "total": len(rows), "columns": COLUMNS, "rows": [r.to_dict() for r in shown],
            "seconds": round(time.perf_counter() - t0, 4)}
    # plain JSON values already: json.dumps directly, not FastAPI's field-by-field encoder (~3x slower at 1,000)
    return Response(json.dumps(body), media_type="application/json")


# ------------------------------------------------------------------------------------------- one run


def commands(path: str) -> dict[str, str]:
    """The ``cnnlab`` command behind each panel of the run page."""
    return {"curves": f"cnnlab show {path} curves", "results": f"cnnlab evaluate {path}",
            "confusion": f"cnnlab show {path} mistakes", "summary": f"cnnlab summary {path}/config.yaml",
            "figures": f"cnnlab show {path} all", "report": f"cnnlab report {path}",
            "export": f"cnnlab export {path} --format onnx", "data": f"cnnlab train --resume {path}"}


@router.get("/api/runs/{rid}")
def run_details(request: Request, rid: str) -> dict:
    d = dash(request)
    row = d.row(rid)
    run = RunDir(row.path)
    figures = sorted(p.name for p in run.figures.glob("*.png")) if run.figures.is_dir() else []
    downloads = [{"name": n, "bytes": f.stat().st_size} for n in DOWNLOADS
                 if (f := run_file(row.path, n, DOWNLOADS, d.real_root)) is not None]
    history = _read(run.file(METRICS), lambda t: [json.loads(x) for x in t.splitlines() if x.strip()]) or []
    path = d.path_text(row)
    return {"row": row.to_dict(), "path": path, "config": _read(run.file(CONFIG), str),
            "meta": _read(run.file(META)), "history": history, "progress": read_progress(run),
            "results": _read(run.file(RESULTS)), "data_report": _read(run.file("data_report.json")),
            "summary": _read(run.file(SUMMARY), str), "figures": figures, "downloads": downloads,
            "commands": commands(path)}


@router.get("/runs/{rid}/files/{name}")
def download(request: Request, rid: str, name: str) -> FileResponse:
    d = dash(request)
    path = run_file(d.row(rid).path, name, DOWNLOADS, d.real_root)
    if path is None:
        raise NotFound(f"no file {name!r} in this run")
    media = "text/html" if name.endswith(".html") else "application/octet-stream"
    return FileResponse(path, media_type=media, filename=None if name.endswith(".html") else name)


@router.get("/runs/{rid}/figures/{name}")
def figure(request: Request, rid: str, name: str) -> FileResponse:
    d = dash(request)
    row = d.row(rid)
    folder = RunDir(row.path).figures
    names = [p.name for p in folder.glob("*.png")] if folder.is_dir() else []
    path = run_file(folder, name, names, d.real_root)
    if path is None:
        raise NotFound(f"no figure {name!r} in this run")
    return FileResponse(path, media_type="image/png")


# ------------------------------------------------------------------------------------ live: SSE


def _event(kind: str, data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


def _stat(path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _history(run: RunDir) -> list[dict] | None:
    """metrics.jsonl, or None when it cannot be read right now (then the next poll tries again)."""
    try:
        return run.read_history()  # rows checked by type; never blocks on a FIFO
    except FileNotFoundError:
        return []
    except (OSError, ValueError, CnnlabError):
        return None


def _status(run: RunDir) -> str:
    meta = _read(run.file(META)) or {}
    status = meta.get("status", "unknown")
    if status == "running" and trainer_alive(read_progress(run)) is False:
        return "interrupted"
    return {"done": "finished"}.get(status, status)


async def live_events(request: Request, run: RunDir, max_seconds: float) -> AsyncIterator[str]:
    """``epoch`` (each new metrics.jsonl line), ``reset`` (the history was rewritten shorter, e.g. a
    resume), ``progress`` (progress.json), ``status``, then ``end`` once the run is not running."""
    yield "retry: 2000\n\n"
    sent: list[dict] = []
    keys: dict[str, Any] = {}
    status = None
    deadline = time.monotonic() + max_seconds
    beat = time.monotonic()
    while time.monotonic() < deadline and not await request.is_disconnected():
        k = _stat(run.file(METRICS))
        if k != keys.get("metrics"):
            history = _history(run)
            if history is not None:
                keys["metrics"] = k
                if history[:len(sent)] != sent:
                    sent = history
                    yield _event("reset", history)
                else:
                    for row in history[len(sent):]:
                        yield _event("epoch", row)
                    sent = history
        k = _stat(run.file(PROGRESS))
        if k != keys.get("progress") and (p := read_progress(run)) is not None:
            keys["progress"] = k
            yield _event("progress", p)
        now = _status(run)
        if now != status:
            status = now
            yield _event("status", status)
        if status != "running":
            yield _event("end", status)
            return
        if time.monotonic() - beat > 15:
            beat = time.monotonic()
            yield ": keep-alive\n\n"
        await asyncio.sleep(POLL)


@router.get("/api/runs/{rid}/events")
def events(request: Request, rid: str, max_seconds: float = Query(3600, gt=0, le=86400)) -> StreamingResponse:
    row = dash(request).row(rid)
    return StreamingResponse(live_events(request, RunDir(row.path), max_seconds), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# ------------------------------------------------------------------------------ images of the test set


def _cell(ctx: RunContext, true: int, pred: int, limit: int) -> dict:
    idx, losses = cell_images(ctx.probs(), ctx.view.test.labels, true, pred)
    probs = ctx.probs()
    items = [{"index": int(i), "loss": round(float(loss), 5), "p_true": round(float(probs[i, true]), 5),
              "p_pred": round(float(probs[i, pred]), 5)} for i, loss in zip(idx[:limit].tolist(), losses[:limit], strict=True)]
    return {"true": true, "pred": pred, "classes": list(ctx.classes), "count": int(idx.numel()), "images": items}


@router.get("/api/runs/{rid}/confusion/{true}/{pred}")
async def confusion_cell(request: Request, rid: str, true: int, pred: int,
                         limit: int = Query(120, ge=1, le=2000)) -> dict:
    row = dash(request).row(rid)
    out = await compute(request, row, "cell", _cell, true, pred, limit)
    results = _read(RunDir(row.path).file(RESULTS)) or {}
    conf = results.get("confusion")
    out["count_results"] = conf[true][pred] if conf and true < len(conf) and pred < len(conf[true]) else None
    out["command"] = f"cnnlab show {dash(request).path_text(row)} mistakes"
    return out


def _test_list(ctx: RunContext, offset: int, limit: int, label: int | None) -> dict:
    labels = ctx.view.test.labels
    idx = list(range(len(labels))) if label is None else [i for i, v in enumerate(labels.tolist()) if v == label]
    return {"total": len(idx), "classes": list(ctx.classes), "input_shape": list(ctx.input_shape),
            "images": [{"index": i, "label": int(labels[i])} for i in idx[offset:offset + limit]]}


@router.get("/api/runs/{rid}/test-images")
async def test_images(request: Request, rid: str, offset: int = Query(0, ge=0), limit: int = Query(48, ge=1, le=500),
                      label: int | None = None) -> dict:
    return await compute(request, dash(request).row(rid), "tests", _test_list, offset, limit, label)


def _png(ctx: RunContext, d: Dashboard, key: str, scale: int) -> bytes:
    return png(d.image(ctx, key)[0], scale)


@router.get("/api/runs/{rid}/images/{key}")
async def image(request: Request, rid: str, key: str, scale: int = Query(1, ge=1, le=16)) -> Response:
    d = dash(request)
    data = await compute(request, d.row(rid), "png", _png, d, key, scale)
    return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=300"})

"""The HTML pages: one stable URL each, a small shell that names the page and its run; the page's script
(``static/<page>.js``) fills it from the JSON API. Everything is served from the package: no CDN."""

from __future__ import annotations

import html

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from cnnlab.app.dashboard.jobs import Busy
from cnnlab.app.dashboard.routes_model import unit_count
from cnnlab.app.dashboard.routes_runs import compute, dash
from cnnlab.app.dashboard.store import NotFound
from cnnlab.errors import CnnlabError

router = APIRouter()

TABS = (("", "Overview"), ("/explorer", "Explorer"), ("/units", "Units"), ("/architecture", "Architecture"))
EXTRA = {"explorer": ("math.js",)}  # scripts a page needs before its own
CHARTS = {"runs": False, "run": True, "explorer": False, "units": False, "unit": False, "architecture": False,
          "cell": False, "compare": True}


def page(title: str, name: str, data: dict[str, str], *, run: tuple[str, str] | None = None,
         tab: str | None = None) -> HTMLResponse:
    """A page shell: header with the runs link and, on a run's pages, its tabs; ``data`` becomes the
    ``data-*`` attributes the page script reads."""
    esc = html.escape
    crumbs = '<a href="/">Runs</a>'
    tabs = ""
    if run is not None:
        rid, label = run
        crumbs += f' <span class=sep>›</span> <a href="/runs/{esc(rid)}">{esc(label)}</a>'
        tabs = "<nav class=tabs>" + "".join(
            f'<a href="/runs/{esc(rid)}{suffix}"{" class=on" if tab == suffix else ""}>{text}</a>'
            for suffix, text in TABS) + "</nav>"
    attrs = " ".join(f'data-{k}="{esc(v)}"' for k, v in data.items())
    chart = ('<link rel=stylesheet href="/static/vendor/uPlot.min.css">'
             '<script src="/static/vendor/uPlot.iife.min.js" defer></script>') if CHARTS[name] else ""
    extra = "".join(f'<script src="/static/{js}" defer></script>' for js in EXTRA.get(name, ()))
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} · cnnlab dashboard</title>
<link rel="icon" href="data:,">
<link rel=stylesheet href="/static/style.css">{chart}
<script src="/static/common.js" defer></script>{extra}<script src="/static/{name}.js" defer></script>
</head><body>
<header class=top><a class=brand href="/">cnnlab <b>dashboard</b></a><span class=crumbs>{crumbs}</span>{tabs}</header>
<main id=app data-page="{name}" {attrs}><p class=loading>Loading…</p></main>
</body></html>"""
    return HTMLResponse(body)


@router.get("/", response_class=HTMLResponse)
def runs_page(request: Request) -> HTMLResponse:
    return page("Runs", "runs", {"root": dash(request).display})


def _run_page(request: Request, rid: str, title: str, name: str, tab: str | None, **data: str) -> HTMLResponse:
    row = dash(request).row(rid)  # unknown id: 404
    return page(f"{title} · {row.name}", name, {"run": rid, "name": row.name, **data}, run=(rid, row.name), tab=tab)


@router.get("/runs/{rid}", response_class=HTMLResponse)
def run_page(request: Request, rid: str) -> HTMLResponse:
    return _run_page(request, rid, "Run", "run", "")


@router.get("/runs/{rid}/explorer", response_class=HTMLResponse)
def explorer_page(request: Request, rid: str) -> HTMLResponse:
    return _run_page(request, rid, "Explorer", "explorer", "/explorer")


@router.get("/runs/{rid}/units", response_class=HTMLResponse)
def units_page(request: Request, rid: str) -> HTMLResponse:
    return _run_page(request, rid, "Units", "units", "/units")


@router.get("/runs/{rid}/layers/{layer}/units/{unit}", response_class=HTMLResponse)
async def unit_page(request: Request, rid: str, layer: str, unit: int) -> HTMLResponse:
    """A unit's page; 404 (the not-found page) for a layer without units or a unit out of range."""
    row = dash(request).row(rid)  # unknown id: 404
    try:
        units = await compute(request, row, "unit-count", unit_count, layer)
    except (CnnlabError, Busy):  # no weights yet, or the model still loading: the page's script reports it
        units = -1
    if units is None:
        raise NotFound(f"run {row.name} has no layer {layer} with units")
    if units >= 0 and not 0 <= unit < units:
        raise NotFound(f"layer {layer} of run {row.name} has units 0..{units - 1}; there is no unit {unit}")
    return _run_page(request, rid, f"{layer} unit {unit}", "unit", "/units", layer=layer, unit=str(unit))


@router.get("/runs/{rid}/architecture", response_class=HTMLResponse)
def architecture_page(request: Request, rid: str) -> HTMLResponse:
    return _run_page(request, rid, "Architecture", "architecture", "/architecture")


@router.get("/runs/{rid}/confusion/{true}/{pred}", response_class=HTMLResponse)
def cell_page(request: Request, rid: str, true: int, pred: int) -> HTMLResponse:
    return _run_page(request, rid, "Confusion cell", "cell", None, true=str(true), pred=str(pred))


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, runs: str = "") -> HTMLResponse:
    for rid in [r for r in runs.split(",") if r]:
        dash(request).row(rid)
    return page("Compare", "compare", {"runs": runs})

"""Compare 2–4 runs: only the config keys that differ (mlflow #3763 asks for exactly this), their
histories for overlaid curves, per-class accuracy with deltas and the difference of confusion matrices,
all against the first run picked. The same test image's prediction and Grad-CAM under each model come
from the per-run routes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import yaml
from fastapi import APIRouter, Request

from cnnlab.app.dashboard.routes_runs import dash
from cnnlab.errors import CnnlabError
from cnnlab.files import read_text
from cnnlab.runs.run_dir import CONFIG, META, METRICS, RESULTS, RunDir

router = APIRouter()
MISSING = "(not set)"


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings and lists as dotted keys: ``{"model": {"layers": [{"filters": 8}]}}`` →
    ``{"model.layers.0.filters": 8}``; empty containers stay as values."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: value} if prefix else {"": value}


def config_diff(configs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The keys whose values are not the same in every config, in the first config's order (keys only
    some configs have come after); each with one value per config (``(not set)`` where absent)."""
    flat = [flatten(c or {}) for c in configs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    out = []
    for k in keys:
        values = [f.get(k, MISSING) for f in flat]
        if any(json.dumps(v, sort_keys=True, default=str) != json.dumps(values[0], sort_keys=True, default=str)
               for v in values[1:]):
            out.append({"key": k, "values": values})
    return out


def per_class(results: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """Per-class accuracy of each run and its delta against the first (None where a run has no results)."""
    base = results[0] or {}
    classes = list(base.get("classes") or (base.get("per_class") or {}).keys())
    rows = []
    for c in classes:
        accs = [(r or {}).get("per_class", {}).get(c) for r in results]
        deltas = [None if a is None or accs[0] is None else a - accs[0] for a in accs]
        rows.append({"class": c, "acc": accs, "delta": deltas})
    return {"classes": classes, "rows": rows}


def confusion_diffs(results: Sequence[dict[str, Any] | None]) -> list[dict[str, Any] | None]:
    """Each later run's confusion matrix minus the first's (None when either is missing or their classes
    differ): positive off-diagonal cells are mistakes the later run makes more often."""
    base = results[0] or {}
    out: list[dict[str, Any] | None] = []
    for r in results[1:]:
        r = r or {}
        a, b = base.get("confusion"), r.get("confusion")
        if a is None or b is None or base.get("classes") != r.get("classes"):
            out.append(None)
            continue
        out.append({"classes": base["classes"], "diff": [[y - x for x, y in zip(ra, rb, strict=True)]
                                                          for ra, rb in zip(a, b, strict=True)]})
    return out


def _load(path, parse) -> Any:
    try:
        return parse(read_text(path))  # never blocks on a FIFO
    except (OSError, ValueError, yaml.YAMLError, RecursionError, CnnlabError):
        return None


@router.get("/api/compare")
def compare(request: Request, runs: str) -> dict[str, Any]:
    """``runs``: 2 to 4 run ids separated by commas."""
    d = dash(request)
    ids = [r for r in runs.split(",") if r]
    if not 2 <= len(ids) <= 4 or len(set(ids)) != len(ids):
        raise CnnlabError(f"compare takes 2 to 4 different runs, got {len(ids)}; tick them in the runs table")
    rows = [d.row(i) for i in ids]
    dirs = [RunDir(r.path) for r in rows]
    configs = [_load(r.file(CONFIG), yaml.safe_load) for r in dirs]
    results = [_load(r.file(RESULTS), json.loads) for r in dirs]
    histories = [_load(r.file(METRICS), lambda t: [json.loads(x) for x in t.splitlines() if x.strip()]) or []
                 for r in dirs]
    metas = [_load(r.file(META), json.loads) or {} for r in dirs]
    # the same test images when dataset, input shape and classes agree (augmentation does not touch them)
    same_test = len({json.dumps([m.get("dataset"), m.get("input_shape"), m.get("classes")]) for m in metas}) == 1
    paths = [d.path_text(r) for r in rows]
    return {"runs": [r.to_dict() for r in rows], "paths": paths, "diff": config_diff(configs),
            "histories": histories, "per_class": per_class(results), "confusion_diff": confusion_diffs(results),
            "same_test_set": same_test,
            "command": "cnnlab compare --configs " + " ".join(f"{p}/config.yaml" for p in paths)}

"""``cnnlab report RUN_DIR``: one self-contained HTML page with everything worth seeing about a run.

The page embeds every figure as a base64 PNG data URI and carries its CSS inline, so the single file can be
mailed, archived or opened offline; it needs no JavaScript (``<details>`` folds the long config). The
figures come from the same view functions as ``cnnlab show``, all called on one :class:`ViewContext`, so
the model, the test set and the fp32 evaluation are loaded once for the whole page.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from cnnlab._version import __version__
from cnnlab.errors import CnnlabError
from cnnlab.files import read_text
from cnnlab.io import write_atomic
from cnnlab.models.summary import layer_rows, param_counts
from cnnlab.plots.common import figure_data_uri, save_figure
from cnnlab.runs.history import run_best_epoch
from cnnlab.runs.loggers import publish
from cnnlab.runs.run_dir import RESULTS
from cnnlab.training.metrics import Evaluation
from cnnlab.views import VIEWS, ShowOptions, ViewContext, applicable, correct_indices

REPORT = "report.html"

# (section id, heading, [(view, sub-heading, one line telling a learner what to look for)]). Views that do
# not apply to the model (see views.applicable) are left out; a section with several views shows them side
# by side, each under an element whose id is the view's name.
FIGURE_SECTIONS: tuple[tuple[str, str, tuple[tuple[str, str, str], ...]], ...] = (
    ("predictions", "Predictions", (("predictions", "", "Random test images with the predicted class and its "
                                     "probability; wrong ones are red."),)),
    ("mistakes", "Most confident mistakes", (("mistakes", "", "The wrong predictions the model was surest about: "
                                              "often ambiguous or mislabelled images."),)),
    ("feature-maps", "Feature maps", (("feature-maps", "", "What the convolution and pooling layers output for a "
                                       "few test images (the first tutorial's grid), then every channel of the "
                                       "first convolution."),)),
    ("filters", "Filters", (("filters", "", "The learned kernels of the first convolution layer."),)),
    ("templates", "Class templates", (("templates", "", "For a dense-only network: the input pattern each "
                                       "class's score responds to (the weights multiplied through)."),)),
    ("attribution", "Which pixels matter", (
        ("occlusion", "Occlusion", "Grey out one patch at a time: hot areas are where hiding the image costs the "
                                   "true class most."),
        ("gradcam", "Grad-CAM", "Where the last convolution layer's evidence for the true class lies."))),
    ("maximize", "Activation maximisation", (("maximize", "", "Inputs synthesised by gradient ascent to excite "
                                              "single filters and classes."),)),
    ("architecture", "Architecture", (("architecture", "", "The layers and the shape of the data between "
                                       "them."),)),
)

CSS = """
body{font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1d2330;
 background:#f4f5f7;margin:0}
main{max-width:1120px;margin:0 auto;padding:28px 32px 60px;background:#fff;box-shadow:0 0 12px rgba(0,0,0,.06)}
h1{font-size:28px;margin:0 0 4px}h2{font-size:21px;margin:38px 0 8px;padding-bottom:4px;border-bottom:2px solid #e3e6ea}
.sub{color:#5b6472;margin:0 0 18px}.hint{color:#5b6472;margin:2px 0 10px}
nav{background:#f0f3f7;border-radius:6px;padding:8px 14px;margin:14px 0 8px;font-size:14px;display:flex;
 flex-wrap:wrap;gap:2px 16px}
nav a{color:#1f5fa8;text-decoration:none;white-space:nowrap}nav a:hover{text-decoration:underline}
table{border-collapse:collapse;margin:8px 0 14px;font-size:14px}
th,td{padding:5px 10px;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top}
th{background:#f0f3f7;font-weight:600}tr:nth-child(even) td{background:#fafbfc}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
table.facts th{width:180px;background:none;color:#5b6472;font-weight:500}
table.facts td,table.facts th{border-bottom:1px solid #eef0f3}
.cards{display:flex;gap:14px;flex-wrap:wrap;margin:10px 0}
.card{border:1px solid #e3e6ea;border-radius:8px;padding:10px 18px;min-width:150px}
.card b{display:block;font-size:26px;font-variant-numeric:tabular-nums}.card span{color:#5b6472;font-size:13px}
.bar{background:#e9edf2;border-radius:3px;width:160px;height:10px;display:inline-block;vertical-align:middle}
.bar i{display:block;height:10px;border-radius:3px;background:#2e7d4f}
table.confusion td,table.confusion th{padding:4px 6px;text-align:center;font-size:12px;border:1px solid #e6e8eb}
table.confusion th.true{text-align:right}
img{max-width:100%;height:auto;display:block;margin:8px 0 16px;border:1px solid #eef0f3;border-radius:4px}
details{margin:8px 0}summary{cursor:pointer;color:#1f5fa8}
pre{background:#f6f8fa;border:1px solid #e3e6ea;border-radius:6px;padding:12px;overflow-x:auto;font-size:13px}
.note{background:#fff8e6;border-left:4px solid #e0a100;padding:8px 12px;margin:12px 0;font-size:14px}
footer{color:#8a93a0;font-size:13px;margin-top:40px}
.row{display:flex;flex-wrap:wrap;gap:8px 28px;align-items:flex-start}.col{flex:1 1 300px;min-width:0}
h3{font-size:16px;margin:6px 0 2px}
"""

Log = Callable[[str], None]


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(fig: Figure, alt: str) -> str:
    return f'<img src="{figure_data_uri(fig)}" alt="{_esc(alt)}">'


def _table(header: list[str], rows: list[list[Any]], *, numeric: set[int] = frozenset(), cls: str = "") -> str:
    def cell(tag: str, i: int, v: Any) -> str:
        return f'<{tag}{" class=num" if i in numeric else ""}>{v}</{tag}>'

    head = "".join(cell("th", i, _esc(h)) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f'<table{f" class={cls}" if cls else ""}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _facts(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows if v not in (None, ""))
    return f'<table class="facts">{body}</table>'


def _duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    m, s = divmod(float(seconds), 60)
    return f"{int(m)} min {s:.0f} s" if m else f"{s:.1f} s"


# --------------------------------------------------------------------------------------------- sections


def _run_facts(ctx: ViewContext) -> str:
    meta, cfg = ctx.loaded.run.meta, ctx.loaded.cfg
    model = cfg.model.name if not cfg.model.layers else f"layer list from the config ({len(cfg.model.layers)} layers)"
    if cfg.model.pretrained:
        model += " (ImageNet weights)"
    engine = meta.get("engine") or {}
    engine_text = ", ".join(str(x) for x in (engine.get("device"), engine.get("precision"),
                                             "channels_last" if engine.get("channels_last") else None,
                                             f"{engine['threads']} threads" if engine.get("threads") else None) if x)
    c, h, w = ctx.input_shape
    epochs = meta.get("epochs", len(ctx.history))
    t = cfg.train
    tested = f"{int(_evaluation(ctx).confusion.sum()):,} test images" + ("" if _has_data(ctx) else ", not found here")
    return _facts([
        ("Dataset", f"{meta.get('dataset', cfg.data.dataset)} ({h}×{w}×{c}, {len(ctx.classes)} classes, {tested})"),
        ("Model", model),
        ("Parameters", f"{meta['params']:,}" if "params" in meta else None),
        ("Training", f"{t.optimizer} lr {t.lr:g}, batch {t.batch_size}, {epochs} of {t.epochs} epochs"
                     + (f", L2 {t.l2:g}" if t.l2 else "") + (", augmentation" if cfg.data.augment.enabled else "")
         if "imported_from" not in meta else None),
        ("Imported", _imported(meta.get("imported_from"))),
        ("Stopped", meta.get("stop_reason")),
        ("Status", meta.get("status")),
        ("Wall time", _duration(meta.get("wall_seconds"))),
        ("Engine", engine_text),
        ("Versions", f"cnnlab {meta.get('cnnlab', '?')}, torch {meta.get('torch', '?')}"),
        ("Finished" if meta.get("status") == "done" else "Last updated", meta.get("updated")),
        ("Command", meta.get("command")),
    ])


def _imported(source: dict | None) -> str | None:
    if not source:
        return None
    return f"from Keras {source.get('keras_version', '?')}: {source.get('file')} (sha256 {source.get('sha256', '?')[:12]}…)"


def _summary_table(ctx: ViewContext) -> str:
    rows = layer_rows(ctx.model, ctx.input_shape)
    total, trainable = param_counts(ctx.model)
    body = [[f"{_esc(r.name)} <span class=hint>({_esc(r.type)})</span>", _esc(r.output_shape), f"{r.params:,}"]
            for r in rows]
    return (_table(["Layer (type)", "Output Shape", "Param #"], body, numeric={2})
            + f"<p>Total params: <b>{total:,}</b> · trainable: {trainable:,} · non-trainable: {total - trainable:,}</p>")


# Views that draw test images (the others need only the model and the history).
DATA_VIEWS = frozenset({"predictions", "mistakes", "feature-maps", "occlusion", "gradcam", "saliency", "kernels"})


def _has_data(ctx: ViewContext) -> bool:
    """Whether the run's test images can be found (``ctx.data_problem`` says why not)."""
    return ctx.data_problem is None


def _evaluation(ctx: ViewContext) -> Evaluation:
    """The fp32 evaluation of the test images, or, when they are not here, the one saved at the end of training."""
    if _has_data(ctx):
        return ctx.evaluation
    if not ctx.loaded.run.file(RESULTS).is_file():  # nothing evaluated, nothing to evaluate: say why, not "finished?"
        raise CnnlabError(f"the report needs test results: {ctx.data_problem}")
    saved = ctx.loaded.run.read_json(RESULTS)
    return Evaluation(saved["test_loss"], saved["test_acc"], torch.tensor(saved["confusion"]), tuple(ctx.classes))


def _metrics(ctx: ViewContext) -> str:
    ev, hist, run = _evaluation(ctx), ctx.history, ctx.loaded.run
    cards = [("test accuracy", f"{ev.acc:.4f}"), ("test loss", f"{ev.loss:.4f}")]
    if hist:
        last = hist[-1]
        cards.append(("final training accuracy", f"{last['train_acc']:.4f}"))
        meta = run.meta
        monitor = meta.get("monitor", "val_loss")
        best = run_best_epoch(meta, hist)
        if best is not None:  # the epoch checkpoints/best holds: one definition for report, compare and training
            cards.append((f"best epoch (by {monitor})", str(best["epoch"])))
            if best.get("val_acc") is not None:
                cards.append((f"validation accuracy at epoch {best['epoch']}", f"{best['val_acc']:.4f}"))
    out = '<div class="cards">' + "".join(f"<div class=card><b>{v}</b><span>{_esc(k)}</span></div>"
                                           for k, v in cards) + "</div>"
    if not _has_data(ctx):
        return out + ("<p class=hint>From results.json, the evaluation at the end of training: the test images "
                      f"are not here ({_esc(ctx.data_problem)}).</p>")
    out += (f"<p class=hint>Recomputed in fp32 on the {len(ctx.test):,} test images with the final weights, "
            "the same evaluation every figure below uses.")
    if run.file(RESULTS).is_file():
        saved = run.read_json(RESULTS)
        if abs(saved.get("test_acc", ev.acc) - ev.acc) > 5e-5:
            out += (f" The evaluation at the end of training (results.json, in the training precision) gave "
                    f"accuracy {saved['test_acc']:.4f}, loss {saved['test_loss']:.4f}.")
    return out + "</p>"


def _per_class(ctx: ViewContext) -> str:
    conf = _evaluation(ctx).confusion
    rows = []
    for i, name in enumerate(ctx.classes):
        total, right = int(conf[i].sum()), int(conf[i, i])
        acc = right / total if total else None
        bar = f'<span class=bar><i style="width:{acc * 100:.1f}%"></i></span>' if acc is not None else ""
        rows.append([_esc(name), f"{right:,}", f"{total:,}", "n/a" if acc is None else f"{acc:.4f}", bar])
    return _table(["Class", "Correct", "Images", "Accuracy", ""], rows, numeric={1, 2, 3})


def confusion_html(confusion: Any, classes: tuple[str, ...] | list[str]) -> str:
    """The confusion matrix as an HTML table, each cell shaded by its share of the true class's images.

    The diagonal is green and the mistakes red; off-diagonal shading is stretched ×4 because even a
    bad confusion is usually a small share of a class and would otherwise be invisible.
    """
    conf = [[int(v) for v in row] for row in confusion.tolist()]
    short = [c if len(c) <= 10 else c[:9] + "…" for c in classes]
    head = "<tr><th>true \\ predicted</th>" + "".join(f'<th title="{_esc(c)}">{_esc(s)}</th>'
                                                       for c, s in zip(classes, short, strict=True)) + "</tr>"
    body = []
    for i, row in enumerate(conf):
        total = max(sum(row), 1)
        cells = []
        for j, v in enumerate(row):
            share = v / total
            alpha = share if i == j else min(1.0, 4 * share)
            rgb = "46,125,79" if i == j else "192,57,43"
            color = "#fff" if alpha > 0.55 else "#1d2330"
            style = f"background:rgba({rgb},{alpha:.2f});color:{color}" if v else "color:#b8bec7"
            cells.append(f'<td style="{style}" title="{_esc(classes[i])} → {_esc(classes[j])}: {v}">{v}</td>')
        body.append(f'<tr><th class=true title="{_esc(classes[i])}">{_esc(short[i])}</th>{"".join(cells)}</tr>')
    return f'<table class="confusion"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


# ------------------------------------------------------------------------------------------------ page


def build_report(run_dir: str | Path, *, out: str | Path | None = None, data_dir: str | None = None,
                 maximize: bool = False, figures_dir: str | Path | None = None, extra_views: Sequence[str] = (),
                 log: Log = print) -> Path:
    """Writes the HTML report of a trained run and returns its path.

    Args:
        run_dir: a run directory written by ``cnnlab train``.
        out: the HTML file to write (default ``RUN_DIR/report.html``).
        data_dir: where the run's dataset lies, if not where training found it.
        maximize: also include activation maximisation (gradient ascent; the slowest figure, so opt-in).
        figures_dir: also save every figure there as PNG (the names ``cnnlab show`` uses).
        extra_views: views the page leaves out to save into ``figures_dir`` as well (e.g. ``kernels``),
            drawn from the same loaded run and test evaluation.
        log: receives one line per view that could not be drawn.

    Raises:
        CnnlabError: not a finished run directory, or its data cannot be found.
    """
    t0 = time.perf_counter()
    ctx = ViewContext(run_dir, data_dir)
    run, cfg = ctx.loaded.run, ctx.loaded.cfg
    if not ctx.history and "imported_from" not in run.meta:  # an imported run has weights but no epochs
        raise CnnlabError(f"{run.path} has no finished epoch (metrics.jsonl is empty); train it before reporting")
    path = Path(out).expanduser() if out else run.file(REPORT)
    if path.suffix.lower() not in (".html", ".htm"):
        raise CnnlabError(f"`out` {path}: the report is one HTML file; give a name ending in .html")
    shown = set(applicable(ctx))
    missing: list[str] = []

    if not _has_data(ctx):
        _evaluation(ctx)  # no test results saved either: the one error, before any note
        log(f"note: report without the figures of test images: {ctx.data_problem.replace('`', '')}")

    def figures(view: str, opts: ShowOptions) -> dict[str, Figure]:
        if view in DATA_VIEWS and not _has_data(ctx):
            missing.append(f"{view}: needs the test images, which are not here")
            return {}
        try:
            figs = VIEWS.get(view)(ctx, opts)
            if figures_dir is not None:
                for stem, fig in figs.items():
                    save_figure(fig, Path(figures_dir) / f"{stem}.png")
            return figs
        except CnnlabError as exc:
            missing.append(f"{view}: {exc}")
        except Exception as exc:  # one broken figure must not cost the whole report
            missing.append(f"{view}: {type(exc).__name__}: {exc}")
        log(f"note: report without {missing[-1]}")
        return {}

    title = cfg.name or run.path.name
    sections: list[tuple[str, str, str]] = [("run", "Run", _run_facts(ctx))]
    sections.append(("config", "Configuration", "<details><summary>Fully resolved config (config.yaml): "
                     "pass it to <code>cnnlab train --config</code> to repeat the run</summary>"
                     f"<pre>{_esc(read_text(run.file('config.yaml')))}</pre></details>"))
    sections.append(("summary", "Model summary", _summary_table(ctx)))
    curves = figures("curves", ShowOptions()) if "curves" in shown else {}
    if curves:
        sections.append(("curves", "Learning curves", "<p class=hint>Loss and accuracy per epoch; validation "
                         "falling behind training is overfitting.</p>" + _img(curves["curves"], "learning curves")))
    sections.append(("metrics", "Final metrics", _metrics(ctx)))
    sections.append(("per-class", "Per-class accuracy", _per_class(ctx)))
    mistakes = figures("mistakes", ShowOptions(n=16)) if "mistakes" in shown else {}
    confusion = confusion_html(_evaluation(ctx).confusion, ctx.classes)
    if "mistakes-breakdown" in mistakes:
        confusion += _img(mistakes.pop("mistakes-breakdown"), "breakdown of the wrong predictions")
    sections.append(("confusion", "Confusion matrix", "<p class=hint>Rows are the true class, columns the "
                     "prediction; colour is the share of the row.</p>" + confusion))
    # the same images for both heat maps
    few_correct = ShowOptions(n=6, images=tuple(correct_indices(ctx, 6)) or None if _has_data(ctx) else None)
    options = {"predictions": ShowOptions(n=16), "occlusion": few_correct, "gradcam": few_correct}
    for sid, heading, views in FIGURE_SECTIONS:
        parts = []
        for view, sub, hint in views:
            if view not in shown or (view == "maximize" and not maximize):
                continue
            figs = mistakes if view == "mistakes" else figures(view, options.get(view, ShowOptions(n=6)))
            if figs:
                imgs = "".join(_img(f, f"{sub or heading}: {k}") for k, f in figs.items())
                parts.append((view, sub, f"<p class=hint>{_esc(hint)}</p>{imgs}"))
        if len(views) == 1 and parts:
            sections.append((sid, heading, parts[0][2]))
        elif parts:
            cols = "".join(f'<div class=col id="{v}"><h3>{_esc(sub)}</h3>{body}</div>' for v, sub, body in parts)
            sections.append((sid, heading, f"<div class=row>{cols}</div>"))
    if missing:
        why = (f"The test images are not here ({_esc(ctx.data_problem)}); the numbers above are those saved at the "
               "end of training.<br>" if not _has_data(ctx) else "")
        sections.append(("not-shown", "Not shown", '<div class="note">' + why
                         + "<br>".join(_esc(m) for m in missing) + "</div>"))
    views = [v for _, _, group in FIGURE_SECTIONS for v, _, _ in group]
    skipped = [v for v in views if v not in shown]
    notes = [f"Not applicable to this model: {', '.join(skipped)}." if skipped else "",
             "Activation maximisation: cnnlab report --maximize." if "maximize" in shown and not maximize else ""]
    page = _page(title, cfg.description, sections, " ".join(n for n in notes if n), time.perf_counter() - t0)
    write_atomic(path, page)
    publish(run, [path], log=log)  # the run's MLflow run, when it logs to one, gets report.html too
    for view in extra_views:
        for stem, fig in VIEWS.get(view)(ctx, ShowOptions(n=6)).items():
            save_figure(fig, Path(figures_dir or run.figures) / f"{stem}.png")
    return path


def _page(title: str, description: str, sections: list[tuple[str, str, str]], note: str, seconds: float) -> str:
    nav = "".join(f'<a href="#{sid}">{_esc(h)}</a>' for sid, h, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{_esc(h)}</h2>{content}</section>' for sid, h, content in sections)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>cnnlab report: {_esc(title)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>{_esc(title)}</h1><p class=sub>{_esc(description) if description else 'cnnlab run report'}</p>"
            f"<nav>{nav}</nav>{body}"
            f"<footer>{_esc(note)} Written by cnnlab {__version__} on {stamp} in {seconds:.1f} s.</footer>"
            "</main></body></html>\n")

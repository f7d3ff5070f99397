"""Data for an architecture diagram (what Keras's ``plot_model`` draws), without Graphviz.

The layers come from :func:`cnnlab.inspect.summary.layer_rows` in execution order, preceded by an input
box, and are laid out top-to-bottom in one or more columns. The diagram is a chain in execution order:
skip connections and branches of nested models are not traced (their layers still appear, in the order
they run). ``plot_maps.plot_architecture`` draws it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.summary import LayerRow, keras_shape, layer_rows, param_counts


@dataclass(frozen=True)
class Box:
    """One layer box: its row and where it sits (column 0.., slot 0.. from the top)."""

    row: LayerRow
    column: int
    slot: int


@dataclass(frozen=True)
class Diagram:
    """Boxes laid out in columns, and arrows as (from, to) indices into ``boxes``.

    Attributes:
        boxes: in execution order, the input first.
        edges: consecutive boxes; the arrow from a column's last box goes to the next column's top.
        columns: number of columns.
        per_column: boxes in the tallest column.
        total_params: exact parameter count of the model.
    """

    boxes: list[Box]
    edges: list[tuple[int, int]]
    columns: int
    per_column: int
    total_params: int


def architecture_rows(model: nn.Module, input_shape: Sequence[int], *, depth: int | None = None) -> list[LayerRow]:
    """An ``input`` row (Keras's InputLayer) followed by the summary's rows that the forward pass uses.

    Args:
        model: maps (N, C, H, W) floats to logits.
        input_shape: (C, H, W) of one image.
        depth: as in :func:`~cnnlab.inspect.summary.layer_rows`; e.g. 2 shows ResNet blocks, not their layers.
    """
    shape = tuple(int(s) for s in input_shape)
    first = LayerRow("input", "InputLayer", keras_shape((1, *shape)), 0, 0, "input", shape)
    return [first, *(r for r in layer_rows(model, shape, depth=depth) if r.output_shape != "unused")]


def layout(rows: Sequence[LayerRow], *, max_per_column: int = 14, total_params: int | None = None) -> Diagram:
    """Spreads rows over balanced columns of at most ``max_per_column`` boxes.

    Args:
        rows: from :func:`architecture_rows`.
        max_per_column: boxes per column before wrapping to the next column.
        total_params: shown under the diagram; default the rows' sum.
    """
    if not rows:
        raise CnnlabError("the model has no layers to draw")
    if max_per_column < 1:
        raise CnnlabError(f"max_per_column must be ≥ 1, got {max_per_column}")
    columns = math.ceil(len(rows) / max_per_column)
    per = math.ceil(len(rows) / columns)  # balance: 20 layers → 10 + 10, not 14 + 6
    boxes = [Box(r, i // per, i % per) for i, r in enumerate(rows)]
    edges = [(i, i + 1) for i in range(len(rows) - 1)]
    total = total_params if total_params is not None else sum(r.params for r in rows)
    return Diagram(boxes, edges, columns, per, total)


def architecture_diagram(model: nn.Module, input_shape: Sequence[int], *, depth: int | None = None,
                         max_per_column: int = 14) -> Diagram:
    """:func:`architecture_rows` laid out by :func:`layout`, with the model's exact parameter total."""
    rows = architecture_rows(model, input_shape, depth=depth)
    return layout(rows, max_per_column=max_per_column, total_params=param_counts(model)[0])

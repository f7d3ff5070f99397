"""Keras's ``model.summary()`` table, and a layer list's table worked out without PyTorch.

:mod:`cnnlab.models.summary` fills the table from a forward trace of any ``nn.Module``; a Keras-style layer
list needs no trace, since :func:`cnnlab.models.specshape.infer_spec` knows every layer's output shape and
parameters, so :func:`spec_summary_text` prints the same table without importing torch (~1.2 s of start-up).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cnnlab.models.specshape import infer_spec

# The coarse kind (LayerRow.kind) of each layer type, as cnnlab.models.summary.layer_kind sorts its module.
SPEC_KINDS = {
    "Conv2D": "conv", "MaxPooling2D": "pool", "AveragePooling2D": "pool", "GlobalAveragePooling2D": "pool",
    "GlobalMaxPooling2D": "pool", "Flatten": "reshape", "Dense": "dense", "Dropout": "dropout",
    "BatchNormalization": "norm", "Activation": "activation",
}


@dataclass(frozen=True)
class LayerRow:
    """One row of the summary.

    Attributes:
        name: the layer's key in ``dict(model.named_modules())`` (dotted for nested models).
        type: class name, or the Keras layer type when the model carries a Keras-like ``spec``.
        output_shape: as Keras prints it, e.g. ``(None, 26, 26, 64)``; ``multiple`` when the layer is
            called more than once with different shapes; ``unused`` when the forward pass never calls it.
        params: parameters of the layer and its children.
        trainable: how many of ``params`` have ``requires_grad``.
        kind: conv, pool, dense, norm, dropout, reshape, activation, block or other.
        shape: PyTorch output shape without the batch dimension, e.g. (64, 26, 26); None when not one shape.
    """

    name: str
    type: str
    output_shape: str
    params: int
    trainable: int
    kind: str
    shape: tuple[int, ...] | None


def keras_shape(size: Sequence[int] | None) -> str:
    """PyTorch output size (batch first, channels second) → Keras's ``(None, H, W, C)`` text."""
    if size is None:
        return "multiple"
    dims = [int(d) for d in size[1:]]
    if len(dims) >= 2:  # (C, H, W) → (H, W, C); (C, L) → (L, C)
        dims = dims[1:] + dims[:1]
    return "(" + ", ".join(["None", *map(str, dims)]) + ("," if not dims else "") + ")"


def keras_table(rows: Sequence[LayerRow], title: str | None = None, *,
                params: tuple[int, int] | None = None) -> str:
    """Formats rows like Keras's ``model.summary()``.

    Args:
        rows: from :func:`layer_rows`.
        title: printed as ``Model: "title"`` above the table.
        params: exact (total, trainable) counts from :func:`param_counts`; by default the rows' sums,
            which equal the model's totals when every parameter lives in exactly one listed layer (true
            for Keras-like sequential models).
    """
    total, trainable = params if params is not None else (sum(r.params for r in rows),
                                                          sum(r.trainable for r in rows))
    cells = [(f"{r.name} ({r.type})", r.output_shape, str(r.params)) for r in rows]
    header = ("Layer (type)", "Output Shape", "Param #")
    # Keras's widths (29, 26, 10), widened to fit long nested names or shapes.
    widths = [max([w, *(len(c[i]) + 1 for c in cells)]) for i, w in enumerate((29, 26, 10))]
    width = sum(widths)

    def line(cols: Sequence[str]) -> str:
        return "".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()

    out = [f'Model: "{title}"'] if title else []
    out += ["_" * width, line(header), "=" * width]
    for i, cell in enumerate(cells):
        out.append(line(cell))
        out.append("=" * width if i == len(cells) - 1 else "_" * width)
    if not cells:
        out.append("=" * width)
    out += [f"Total params: {total:,}", f"Trainable params: {trainable:,}",
            f"Non-trainable params: {total - trainable:,}", "_" * width]
    return "\n".join(out)


def spec_rows(layers: Sequence[Mapping[str, Any]], input_shape: Sequence[int],
              num_classes: int | None = None) -> list[LayerRow]:
    """The summary rows of a layer list (one per layer, Keras's names and types), equal to those of a
    forward trace of ``build_spec(layers, ...)`` through :func:`cnnlab.models.summary.layer_rows`.

    Args:
        layers: Keras-named layer dicts, as :func:`cnnlab.models.spec.build_spec` takes them.
        input_shape: (C, H, W) of one input image.
        num_classes: when given, the last Dense layer must have this many units (``units: num_classes``).

    Raises:
        CnnlabError: what ``build_spec`` raises for the list.
    """
    return [LayerRow(layer.name, layer.kind, keras_shape((1, *layer.out_shape)), layer.params, layer.trainable,
                     SPEC_KINDS[layer.kind], layer.out_shape)
            for layer in infer_spec(layers, input_shape=input_shape, num_classes=num_classes)]


def spec_summary_text(layers: Sequence[Mapping[str, Any]], input_shape: Sequence[int], *,
                      num_classes: int | None = None, title: str | None = None) -> str:
    """The Keras-style summary of a layer list, without building it: what
    ``summary_text(build_spec(layers, ...), input_shape, title=title)`` prints (every parameter lives in
    exactly one row, so the rows' sums are the totals).

    Raises:
        CnnlabError: what ``build_spec`` raises for the list.
    """
    return keras_table(spec_rows(layers, input_shape, num_classes), title)

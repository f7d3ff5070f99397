"""Architecture rows, diagram layout and the plot_model-style figure."""

from __future__ import annotations

import pytest
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.inspect.architecture import architecture_diagram, architecture_rows, layout
from cnnlab.models.summary import layer_rows


def test_rows_are_the_summary_rows_after_an_input(keras_cnn_maps, nested_cnn_maps) -> None:
    rows = architecture_rows(keras_cnn_maps, (1, 14, 14))
    assert (rows[0].name, rows[0].type, rows[0].output_shape) == ("input", "InputLayer", "(None, 14, 14, 1)")
    assert rows[1:] == layer_rows(keras_cnn_maps, (1, 14, 14))
    nested = [r.name for r in architecture_rows(nested_cnn_maps, (3, 8, 8), depth=2)]
    assert nested == ["input", "stem", "layer1.0", "layer1.1", "pool", "fc"]  # unused "aux" is not drawn


def test_layout_wraps_into_balanced_columns(keras_cnn_maps) -> None:
    rows = architecture_rows(keras_cnn_maps, (1, 14, 14)) * 5  # 40 boxes
    d = layout(rows, max_per_column=14)
    assert (d.columns, d.per_column) == (3, 14)
    assert [(b.column, b.slot) for b in d.boxes[13:15]] == [(0, 13), (1, 0)]
    assert d.edges[:2] == [(0, 1), (1, 2)] and len(d.edges) == 39
    assert layout(rows[:20], max_per_column=14).per_column == 10  # 10 + 10, not 14 + 6
    with pytest.raises(CnnlabError, match="no layers"):
        layout([])


def test_diagram_totals_are_exact(nested_cnn_maps) -> None:
    d = architecture_diagram(nested_cnn_maps, (3, 8, 8))
    stats = sum(m.running_mean.numel() * 2 for m in nested_cnn_maps.modules() if isinstance(m, nn.BatchNorm2d))
    # every parameter, and BatchNorm's moving mean and variance, which Keras counts as (non-trainable) parameters
    assert d.total_params == sum(p.numel() for p in nested_cnn_maps.parameters()) + stats == 745 + 16

"""Keras-style summary rows, shapes and exact totals."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.summary import keras_table, layer_rows, param_counts, summary_text


def tutorial_cnn() -> nn.Sequential:
    """Keras's tutorial CNN at 28×28×1: Conv64-Pool-Conv64-Pool-Flatten-Dense128-Dense10."""
    return nn.Sequential(OrderedDict(
        conv2d=nn.Conv2d(1, 64, 3), max_pooling2d=nn.MaxPool2d(2), conv2d_1=nn.Conv2d(64, 64, 3),
        max_pooling2d_1=nn.MaxPool2d(2), flatten=nn.Flatten(), dense=nn.Linear(1600, 128),
        dense_1=nn.Linear(128, 10)))


def test_tutorial_cnn_matches_keras_summary() -> None:
    text = summary_text(tutorial_cnn(), (1, 28, 28), title="sequential")
    lines = text.splitlines()
    assert lines[0] == 'Model: "sequential"'
    assert lines[2].split() == ["Layer", "(type)", "Output", "Shape", "Param", "#"]
    assert "Total params: 243,786" in lines
    assert "Trainable params: 243,786" in lines
    assert "Non-trainable params: 0" in lines
    body = [line.split("  ")[0].strip() for line in lines if line.startswith(("conv", "max", "flat", "dense"))]
    assert body == ["conv2d (Conv2d)", "max_pooling2d (MaxPool2d)", "conv2d_1 (Conv2d)",
                    "max_pooling2d_1 (MaxPool2d)", "flatten (Flatten)", "dense (Linear)", "dense_1 (Linear)"]


def test_rows_have_keras_shapes_and_params(keras_cnn_maps) -> None:
    rows = layer_rows(keras_cnn_maps, (1, 14, 14))
    assert [r.name for r in rows] == list(dict(keras_cnn_maps.named_children()))
    assert [r.output_shape for r in rows] == ["(None, 12, 12, 4)", "(None, 6, 6, 4)", "(None, 4, 4, 6)",
                                              "(None, 2, 2, 6)", "(None, 24)", "(None, 8)", "(None, 3)"]
    assert [r.params for r in rows] == [40, 0, 222, 0, 0, 200, 27]
    assert rows[0].shape == (4, 12, 12) and rows[0].kind == "conv" and rows[1].kind == "pool"
    assert sum(r.params for r in rows) == param_counts(keras_cnn_maps)[0]


def test_keras_types_come_from_a_spec_and_layers_with_children_stay_one_row() -> None:
    class Conv2D(nn.Conv2d):  # a Keras-like conv keeping its activation as a child module
        def __init__(self) -> None:
            super().__init__(1, 2, 3)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(super().forward(x))

    class Pool2D(nn.Module):  # a project layer subclassing nn.Module directly
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.max_pool2d(x, 2)

    model = nn.Sequential(OrderedDict(conv2d=Conv2D(), max_pooling2d=Pool2D(), flatten=nn.Flatten()))
    model.spec = [{"type": "Conv2D", "name": "conv2d"}, {"type": "MaxPooling2D", "name": "max_pooling2d"}]
    rows = layer_rows(model, (1, 6, 6))
    assert [(r.name, r.type, r.kind) for r in rows] == [
        ("conv2d", "Conv2D", "conv"), ("max_pooling2d", "MaxPooling2D", "pool"), ("flatten", "Flatten", "reshape")]


def test_nested_rows_use_dotted_names_depth_and_unused(nested_cnn_maps) -> None:
    rows = layer_rows(nested_cnn_maps, (3, 8, 8))
    names = [r.name for r in rows]
    assert names == ["stem", "layer1.0.conv1", "layer1.0.bn1", "layer1.0.relu", "layer1.0.conv2",
                     "layer1.1.conv1", "layer1.1.bn1", "layer1.1.relu", "layer1.1.conv2", "pool", "fc", "aux"]
    assert rows[-1].output_shape == "unused" and rows[-1].params == 10
    assert all(name in dict(nested_cnn_maps.named_modules()) for name in names)
    shallow = layer_rows(nested_cnn_maps, (3, 8, 8), depth=2)
    # 2 convs 4→4 3x3 (2 x 148) + BatchNorm(4): gamma, beta and, as Keras counts them, moving mean/variance (16)
    assert [(r.name, r.type, r.params) for r in shallow[1:3]] == [("layer1.0", "Block", 312), ("layer1.1", "Block", 312)]
    total, _ = param_counts(nested_cnn_maps)
    assert f"Total params: {total:,}" in keras_table(shallow, params=param_counts(nested_cnn_maps))


def test_non_trainable_counts_and_state_is_kept(keras_cnn_maps) -> None:
    keras_cnn_maps.conv2d.requires_grad_(False)
    keras_cnn_maps.train()
    keras_cnn_maps.dense.eval()  # a mixed train/eval state must survive
    rng = torch.get_rng_state()
    text = summary_text(keras_cnn_maps, (1, 14, 14))
    assert "Total params: 489" in text and "Trainable params: 449" in text and "Non-trainable params: 40" in text
    assert keras_cnn_maps.training and keras_cnn_maps.conv2d.training and not keras_cnn_maps.dense.training
    assert torch.equal(torch.get_rng_state(), rng)  # the dummy input is zeros, no random draw
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in keras_cnn_maps.modules())


def test_batchnorm_statistics_count_as_keras_non_trainable_params() -> None:
    model = nn.Sequential(OrderedDict(conv2d=nn.Conv2d(1, 4, 3), batch_normalization=nn.BatchNorm2d(4),
                                      flatten=nn.Flatten(), dense=nn.Linear(4 * 4 * 4, 2)))
    # Keras: conv 40, BatchNormalization 16 (gamma, beta trainable; moving mean, variance not), dense 130
    assert param_counts(model) == (186, 178)
    assert [r.params for r in layer_rows(model, (1, 6, 6))] == [40, 16, 0, 130]
    assert param_counts(nn.BatchNorm2d(4, track_running_stats=False)) == (8, 8)  # no statistics kept, none counted


def test_bad_input_shape_and_depth_are_user_errors(keras_cnn_maps) -> None:
    with pytest.raises(CnnlabError, match=r"cannot run on a \(3, 14, 14\)"):
        layer_rows(keras_cnn_maps, (3, 14, 14))
    with pytest.raises(CnnlabError, match="depth must be ≥ 1"):
        layer_rows(keras_cnn_maps, (1, 14, 14), depth=0)

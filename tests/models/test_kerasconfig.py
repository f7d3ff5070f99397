"""A Keras model config as untrusted JSON: every wrong shape or type is one line naming the file and the layer,
values are checked as Keras checks them (an integer is an int: not a bool, a float or a string), and the walk
is linear in the number of layers, which is capped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnnlab.errors import CnnlabError
from cnnlab.models.keras import read_keras
from cnnlab.models.kerasconfig import MAX_LAYERS, KerasLayer, model_chain

from .test_kerasfile import CONFIG, LAYERS, h5_model

INPUT, FLATTEN, DENSE = LAYERS


def _config(*layers: dict, kind: str = "Sequential") -> dict:
    return {"class_name": kind, "config": {"name": "m", "layers": list(layers)}}


def _dense(**cfg) -> dict:
    return {"class_name": "Dense", "config": {"name": "dense", "units": 2, "activation": "softmax", **cfg}}


@pytest.mark.parametrize("config, message", [
    (5, "the model config is JSON int, not a mapping with class_name and config"),
    ([1, 2], "the model config is JSON list, not a mapping"),
    ({"class_name": "Sequential", "config": {"layers": None}}, "the model config's layers are NoneType, not a list"),
    ({"class_name": "Sequential", "config": 7}, "the model config's layers are int, not a list"),
    (_config(INPUT, 5, DENSE), "layer 1 of the model config is not a mapping with class_name and config"),
    (_config(INPUT, {"class_name": "Flatten", "config": {"name": 3}}, DENSE),
     r"layer 1 \(Flatten\) has the name 3, not text"),
    ({"class_name": "Subclassed", "config": {}}, "a Subclassed model cannot be imported"),
])
def test_a_config_of_the_wrong_shape_is_one_line(tmp_path, config, message) -> None:
    with pytest.raises(CnnlabError, match=message):
        read_keras(h5_model(tmp_path / "m.h5", config=config))


@pytest.mark.parametrize("dense, message", [
    (_dense(units=float("nan")), r"model.layers.1 \(dense: Dense\): units must be an integer ≥ 1, got nan"),
    (_dense(units=True), r"units must be an integer ≥ 1, got True"),  # was: the misleading sigmoid message
    (_dense(units="2"), r"units must be an integer ≥ 1, got '2'"),
    (_dense(units=2.0), r"units must be an integer ≥ 1, got 2.0"),
    (_dense(units=2**28), r"the model reaches 3,489,660,928 parameters here, over cnnlab's limit of 2,147,483,648 "
                          r"\(2\*\*31\)"),
    ({"class_name": "Dense", "config": {"name": "dense", "activation": "softmax"}}, r"\(dense: Dense\): missing 'units'"),
    (_dense(use_bias="false"), r"layer 'dense' \(Dense\): use_bias must be true or false, got false"),
    (_dense(activation={"class_name": "Custom"}), r"activation \"{'class_name': 'Custom'}\" has no exact cnnlab"),
])
def test_dense_values_are_checked_as_keras_does(tmp_path, dense, message) -> None:
    with pytest.raises(CnnlabError, match=message):
        read_keras(h5_model(tmp_path / "m.h5", config=_config(INPUT, FLATTEN, dense)))


@pytest.mark.parametrize("conv, message", [
    ({"filters": 8.5}, r"model.layers.0 \(conv: Conv2D\): filters must be an integer ≥ 1, got 8.5"),
    ({"filters": "8"}, r"filters must be an integer ≥ 1, got '8'"),  # was: silently accepted
    ({"kernel_size": [True, 1]}, r"kernel_size must be an integer or \[h, w\], got \[True, 1\]"),
    ({"kernel_size": "3"}, r"kernel_size must be an integer or \[h, w\], got '3'"),
    ({"filters": 10**9}, r"its output \(1000000000, 2, 2\) holds 4,000,000,000 values per image, over cnnlab's "
                         r"limit of 268,435,456 \(2\*\*28\) per layer"),
])
def test_conv_values_are_checked_before_anything_is_built(tmp_path, conv, message) -> None:
    layer = {"class_name": "Conv2D", "config": {"name": "conv", "filters": 2, "kernel_size": [1, 1],
                                                "strides": [1, 1], "padding": "valid", **conv}}
    with pytest.raises(CnnlabError, match=message):
        read_keras(h5_model(tmp_path / "m.h5", config=_config(INPUT, layer, FLATTEN, DENSE)))


def test_a_huge_input_is_refused_by_name(tmp_path) -> None:
    huge = {"class_name": "InputLayer", "config": {"name": "input", "batch_input_shape": [None, 100000, 100000, 1]}}
    with pytest.raises(CnnlabError, match=r"the input image of 1 x 100000 x 100000 has over 67,108,864 pixels "
                                          r"\(cnnlab's limit, 8192 x 8192\)"):
        read_keras(h5_model(tmp_path / "m.h5", config=_config(huge, FLATTEN, DENSE)))
    flagged = {"class_name": "InputLayer", "config": {"name": "input", "batch_input_shape": [None, True, 2, 3]}}
    with pytest.raises(CnnlabError, match=r"the model's input is \[None, True, 2, 3\], not a fixed"):
        read_keras(h5_model(tmp_path / "m.h5", config=_config(flagged, FLATTEN, DENSE)))


def test_batchnorm_axis_and_numbers(tmp_path) -> None:
    def bn(**cfg) -> dict:
        return _config(INPUT, {"class_name": "BatchNormalization", "config": {"name": "bn", **cfg}}, FLATTEN, DENSE)

    with pytest.raises(CnnlabError, match=r"layer 'bn' \(BatchNormalization\): axis=7 cannot be imported: cnnlab "
                                          r"normalises the channel axis .* use BatchNormalization\(axis=-1\)"):
        read_keras(h5_model(tmp_path / "m.h5", config=bn(axis=7)))
    with pytest.raises(CnnlabError, match=r"epsilon must be a number in \(0, inf\], got -1"):
        read_keras(h5_model(tmp_path / "m.h5", config=bn(epsilon=-1)))
    with pytest.raises(CnnlabError, match=r"momentum must be a number in \[0, 1\], got 0.9"):
        read_keras(h5_model(tmp_path / "m.h5", config=bn(momentum="0.9")))


def test_the_layer_count_is_capped_in_one_line(tmp_path) -> None:
    drops = [{"class_name": "Dropout", "config": {"name": f"d{i}", "rate": 0.1}} for i in range(MAX_LAYERS)]
    with pytest.raises(CnnlabError, match=r"the model has 10,003 layers, over cnnlab's limit of 10,000 layers"):
        model_chain(_config(INPUT, *drops, FLATTEN, DENSE), Path("m.keras"))


def _functional(layers: list[dict]) -> dict:
    """A functional config chaining ``layers`` in order (Keras 2's inbound_nodes lists)."""
    items, prev = [], None
    for layer in layers:
        name = layer["config"]["name"]
        items.append({**layer, "name": name, "inbound_nodes": [] if prev is None else [[[prev, 0, 0, {}]]]})
        prev = name
    return _config(*items, kind="Functional")


def test_a_long_functional_chain_is_followed_in_order(tmp_path) -> None:
    drops = [{"class_name": "Dropout", "config": {"name": f"d{i}", "rate": 0.1}} for i in range(3000)]
    config = _functional([{**INPUT, "config": {**INPUT["config"], "batch_shape": [None, 2, 2, 3]}}, *drops,
                          FLATTEN, DENSE])
    config["config"]["layers"].reverse()  # the walk follows the inbound nodes, not the listing order
    name, chain, _ = model_chain(config, Path("m.keras"))
    assert name == "m" and [layer.name for layer in chain] == ["input", *(f"d{i}" for i in range(3000)),
                                                                "flatten", "dense"]
    assert all(isinstance(layer, KerasLayer) for layer in chain)
    assert read_keras(h5_model(tmp_path / "m.h5", config=config)).num_classes == 2


def test_deeply_nested_inbound_nodes_are_walked_without_recursion() -> None:
    deep: list = [["input", 0, 0, {}]]
    for _ in range(900):  # within json's own depth, beyond what a recursive walk survives from a deep stack
        deep = [deep]
    config = _functional([INPUT, FLATTEN, DENSE])
    config["config"]["layers"][1]["inbound_nodes"] = json.loads(json.dumps(deep))
    assert [layer.name for layer in model_chain(config, Path("m.keras"))[1]] == ["input", "flatten", "dense"]
    config["config"]["layers"][1]["inbound_nodes"] = [list(range(20_000))]
    with pytest.raises(CnnlabError, match=r"layer 'flatten' \(Flatten\): inbound_nodes holds over 10,000 values"):
        model_chain(config, Path("m.keras"))


def test_the_plain_config_still_reads(tmp_path) -> None:
    assert read_keras(h5_model(tmp_path / "m.h5", config=CONFIG)).layers[-1]["units"] == 2

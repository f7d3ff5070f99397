"""The configured network: a registered model by name (with its options) or a layer list; its metadata."""

import pytest
import torch
from torch import nn

from cnnlab.config import ModelConfig
from cnnlab.errors import CnnlabError
from cnnlab.models import model_meta
from cnnlab.models.build import build_model, count_params, model_meta_for

LAYERS = ({"type": "Flatten"}, {"type": "Dense", "units": "num_classes"})


def test_a_layer_list_wins_over_the_name():
    model = build_model(ModelConfig(name="resnet18", layers=LAYERS), input_shape=(1, 4, 4), num_classes=3)
    assert count_params(model) == 16 * 3 + 3
    assert model(torch.zeros(2, 1, 4, 4)).shape == (2, 3)
    meta = model_meta_for(ModelConfig(layers=LAYERS), (1, 4, 4), 3)
    assert meta.head == "dense" and meta.input_shape == (1, 4, 4)


def test_a_registered_model_gets_the_data_shape_and_its_options():
    model = build_model(ModelConfig(name="vgg11", options={"dropout": 0.25}), input_shape=(3, 32, 32), num_classes=4)
    assert model.classifier[-1].out_features == 4 and model.classifier[2].p == 0.25
    assert model_meta_for(ModelConfig(name="vgg11"), (3, 32, 32), 4) is model_meta("vgg11")
    assert count_params(nn.Linear(3, 2)) == 8


def test_pretrained_brings_the_builder_options_its_weights_need():
    model = build_model(ModelConfig(name="googlenet", pretrained=True), input_shape=(3, 32, 32), num_classes=2)
    assert model.transform_input  # the weights were ported from TensorFlow
    with pytest.raises(CnnlabError, match="no official ImageNet weights for 'cnn_64x2'"):
        build_model(ModelConfig(name="cnn_64x2", pretrained=True), input_shape=(1, 28, 28), num_classes=10)


def test_config_mistakes_are_one_line_errors():
    with pytest.raises(CnnlabError, match="the config names no model; set model.name"):
        build_model(ModelConfig(name=None), input_shape=(1, 28, 28), num_classes=10)
    with pytest.raises(CnnlabError, match="the config names no model"):
        model_meta_for(ModelConfig(name=None), (1, 28, 28), 10)
    with pytest.raises(CnnlabError, match=r"model.options \{'width': 2\} do not fit model 'cnn_64x2'"):
        build_model(ModelConfig(name="cnn_64x2", options={"width": 2}), input_shape=(1, 28, 28), num_classes=10)
    with pytest.raises(CnnlabError, match="unknown model 'resnet9000'"):
        build_model(ModelConfig(name="resnet9000"), input_shape=(1, 28, 28), num_classes=10)

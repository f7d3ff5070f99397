"""The tutorials' models, given as layer lists: Keras's parameter counts and layer names, fresh copies."""

import pytest
import torch

from cnnlab.models import create_model, model_meta
from cnnlab.models.seeds import SEED_SPECS, seed_layers

# Keras 3.15's parameter counts for the same architectures at the tutorials' inputs.
KERAS_PARAMS = {
    "dnn_128": 101_770, "cnn_64x2": 243_786, "cnn_32_64": 225_034, "cnn_32x1": 693_962,
    "fc_1024": 814_090, "cnn_32_64_dropout": 1_199_882, "cnn_64k5": 924_374, "fc_200x2_dropout": 199_210,
    "cifar_basic": 477_994, "cifar_improved": 1_469_994, "cnn_64x2_linear64": 140_682,
}


@pytest.mark.parametrize("name", sorted(KERAS_PARAMS))
def test_tutorial_models_match_keras_parameter_counts(name):
    shape = (3, 32, 32) if name.startswith("cifar") else (1, 28, 28)
    model = create_model(name, num_classes=10, input_shape=shape)
    assert sum(p.numel() for p in model.parameters()) == KERAS_PARAMS[name]
    assert model(torch.zeros(2, *shape)).shape == (2, 10)


def test_keras_layer_names():
    model = create_model("cnn_64x2", num_classes=10, input_shape=(1, 28, 28))
    assert [n for n, _ in model.named_children()] == [
        "conv2d", "max_pooling2d", "conv2d_1", "max_pooling2d_1", "flatten", "dense", "dense_1"]


def test_seed_layers_are_fresh_copies_with_the_class_count_filled_in():
    layers = seed_layers("cnn_64x2")
    assert layers[0] == {"type": "Conv2D", "filters": 64, "kernel_size": 3, "activation": "relu"}
    assert layers[-1] == {"type": "Dense", "units": "num_classes", "activation": "softmax"}
    layers[0]["filters"] = 1
    assert seed_layers("cnn_64x2")[0]["filters"] == 64
    assert seed_layers("cnn_64x2", 7)[-1]["units"] == 7
    assert set(SEED_SPECS) == {"dnn_128", "cnn_64x2", "cnn_32_64", "cnn_32x1", "fc_1024", "cnn_32_64_dropout",
                               "cnn_64k5", "fc_200x2_dropout", "cifar_basic", "cifar_improved", "cnn_64x2_linear64"}


def test_default_inputs_are_the_tutorials():
    assert model_meta("cnn_64x2").input_shape == (1, 28, 28) and model_meta("cifar_basic").input_shape == (3, 32, 32)
    model = create_model("cifar_basic", num_classes=4, input_shape=(3, 32, 32))
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 4)
    with pytest.raises(KeyError):
        seed_layers("resnet18")  # not a tutorial model

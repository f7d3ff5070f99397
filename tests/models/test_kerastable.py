"""Keras's table, and a layer list's table without a trace: equal to the traced one, row for row."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnlab.config import PACKAGED, load_config
from cnnlab.data.datasets import DATASETS
from cnnlab.errors import CnnlabError
from cnnlab.models.kerastable import keras_shape, keras_table, spec_rows, spec_summary_text
from cnnlab.models.seeds import SEED_SPECS, seed_layers
from cnnlab.models.spec import build_spec
from cnnlab.models.summary import layer_rows, summary_text

LAYER_LIST_CONFIGS = sorted(str(p.relative_to(PACKAGED).with_suffix("")) for p in PACKAGED.rglob("*.yaml")
                            if load_config(p).model.layers)


def traced(layers, shape, classes, title=None) -> str:
    return summary_text(build_spec(layers, input_shape=shape, num_classes=classes), shape, title=title)


def test_the_packaged_layer_list_configs_are_found():
    assert "fashion_mnist_cnn32" in LAYER_LIST_CONFIGS and "fast/cifar-10" in LAYER_LIST_CONFIGS
    assert "fashion_mnist_cnn" not in LAYER_LIST_CONFIGS  # it names cnn_64x2


@pytest.mark.parametrize("name", sorted(SEED_SPECS))
def test_every_tutorial_model_at_two_inputs_equals_its_trace(name):
    c = SEED_SPECS[name].input_shape[0]
    for shape, classes in ((SEED_SPECS[name].input_shape, 10), ((c, 40, 36), 3)):
        layers = seed_layers(name, classes)
        assert spec_summary_text(layers, shape, num_classes=classes, title=name) == traced(layers, shape, classes, name)
        model = build_spec(layers, input_shape=shape, num_classes=classes)
        assert spec_rows(layers, shape, classes) == layer_rows(model, shape)  # kinds and shapes too


@pytest.mark.parametrize("config", LAYER_LIST_CONFIGS)
def test_every_packaged_layer_list_at_two_inputs_equals_its_trace(config):
    cfg = load_config(PACKAGED / f"{config}.yaml")
    info = DATASETS.get(cfg.data.dataset)
    layers = list(cfg.model.layers)
    for shape in (info.shape, (info.shape[0], 48, 44)):
        text = spec_summary_text(layers, shape, num_classes=len(info.classes), title=cfg.name)
        assert text == traced(layers, shape, len(info.classes), cfg.name)


def test_tutorial_cnn_is_keras_own_table():
    lines = spec_summary_text(seed_layers("cnn_64x2", 10), (1, 28, 28), title="cnn_64x2").splitlines()
    # Keras's column widths (29, 26, 10), the first widened to fit "max_pooling2d_1 (MaxPooling2D)"
    assert lines[:6] == ['Model: "cnn_64x2"', "_" * 67, "Layer (type)" + " " * 19 + "Output Shape" + " " * 14 + "Param #",
                         "=" * 67, "conv2d (Conv2D)" + " " * 16 + "(None, 26, 26, 64)" + " " * 8 + "640", "_" * 67]
    assert "max_pooling2d_1 (MaxPooling2D) (None, 5, 5, 64)" + " " * 10 + "0" in lines
    assert lines[-4:] == ["Total params: 243,786", "Trainable params: 243,786", "Non-trainable params: 0", "_" * 67]


def test_keras_shape_text() -> None:
    assert keras_shape((1, 64, 26, 26)) == "(None, 26, 26, 64)"
    assert keras_shape((1, 1600)) == "(None, 1600)"
    assert keras_shape((1, 8, 5)) == "(None, 5, 8)"
    assert keras_shape(None) == "multiple"


def test_an_empty_table_still_has_its_frame_and_totals():
    assert keras_table([], "m", params=(5, 3)).splitlines()[-4:] == [
        "Total params: 5", "Trainable params: 3", "Non-trainable params: 2", "_" * 65]


# Any small layer list (valid or not) at any small input: the table without a trace is the traced one, or both
# refuse it with the same one-line error.
_LAYER = st.one_of(
    st.fixed_dictionaries({"type": st.just("Conv2D"), "filters": st.integers(1, 4), "kernel_size": st.integers(1, 4)},
                          optional={"strides": st.integers(1, 3), "padding": st.sampled_from(["valid", "same"]),
                                    "use_bias": st.booleans(), "activation": st.sampled_from(["relu", "linear"])}),
    st.fixed_dictionaries({"type": st.sampled_from(["MaxPooling2D", "AveragePooling2D"])},
                          optional={"pool_size": st.integers(1, 3), "strides": st.integers(1, 3),
                                    "padding": st.sampled_from(["valid", "same"])}),
    st.fixed_dictionaries({"type": st.sampled_from(["Flatten", "GlobalAveragePooling2D", "GlobalMaxPooling2D"])}),
    st.fixed_dictionaries({"type": st.just("Dense"), "units": st.integers(1, 5)}, optional={"use_bias": st.booleans()}),
    st.fixed_dictionaries({"type": st.just("BatchNormalization")},
                          optional={"center": st.booleans(), "scale": st.booleans()}),
    st.fixed_dictionaries({"type": st.just("Dropout"), "rate": st.sampled_from([0.0, 0.5])}),
    st.fixed_dictionaries({"type": st.just("Activation"), "activation": st.sampled_from(["relu", "softmax"])}),
)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers=st.lists(_LAYER, min_size=1, max_size=6), c=st.integers(1, 3), h=st.integers(1, 9),
       w=st.integers(1, 9))
def test_any_layer_list_agrees_with_its_trace(layers, c, h, w):
    def outcome(fn):
        try:
            return fn()
        except CnnlabError as exc:
            assert "\n" not in str(exc)
            return f"error: {exc}"

    fast = outcome(lambda: spec_summary_text(layers, (c, h, w), title="m"))
    assert fast == outcome(lambda: traced(layers, (c, h, w), None, "m"))

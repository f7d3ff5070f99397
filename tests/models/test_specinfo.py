"""A layer list's Keras names and metadata, read without building it (and without torch)."""

from cnnlab.models.specinfo import KERAS_NAMES, keras_name, spec_meta

LAYERS = [
    {"type": "Conv2D", "filters": 8, "kernel_size": 3},
    {"type": "MaxPooling2D", "pool_size": 2},
    {"type": "Conv2D", "filters": 8, "kernel_size": 3, "name": "second"},
    {"type": "Conv2D", "filters": 8, "kernel_size": 3},
    {"type": "Flatten"},
    {"type": "Dense", "units": 32},
    {"type": "Dense", "units": "num_classes"},
]


def test_keras_names_count_per_type_and_a_given_name_wins():
    counts: dict[str, int] = {}
    names = [keras_name(layer["type"], layer.get("name"), counts) for layer in LAYERS]
    # a given name still counts: Keras numbers the third Conv2D conv2d_2 after a named second one
    assert names == ["conv2d", "max_pooling2d", "second", "conv2d_2", "flatten", "dense", "dense_1"]
    assert counts == {"conv2d": 3, "max_pooling2d": 1, "flatten": 1, "dense": 2}
    assert KERAS_NAMES["BatchNormalization"] == "batch_normalization"


def test_spec_meta_names_the_head_and_the_first_conv():
    meta = spec_meta(LAYERS, [1, 28, 28], num_classes=3)
    assert (meta.input_shape, meta.num_classes, meta.head, meta.first_conv) == ((1, 28, 28), 3, "dense_1", "conv2d")
    assert meta.weights is None and meta.lr is None
    # unknown types are skipped here (build_spec names them); no Dense / no Conv2D → None
    bare = spec_meta([{"type": "Flatten"}, {"type": "Mystery"}], (1, 4, 4))
    assert (bare.head, bare.first_conv, bare.num_classes) == (None, None, 10)

"""The configured network: a registered model by name, or a Keras-style layer list from the config."""

from __future__ import annotations

from torch import nn

from cnnlab.config import ModelConfig
from cnnlab.errors import CnnlabError
from cnnlab.models.pretrained import published_weights
from cnnlab.models.registry import ModelMeta, create_model, model_meta
from cnnlab.models.spec import build_spec
from cnnlab.models.specinfo import spec_meta


def build_model(cfg: ModelConfig, *, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The configured network for data of ``input_shape`` (C, H, W) with ``num_classes`` classes.

    Raises:
        CnnlabError: no model named, an unknown name, options the builder does not take, impossible shapes.
    """
    if cfg.layers is not None:  # an empty list is a mistake to report, not a cue to build model.name

        return build_spec(list(cfg.layers), input_shape=input_shape, num_classes=num_classes)
    if not cfg.name:
        raise CnnlabError("the config names no model; set model.name (see cnnlab models) or model.layers")

    options = dict(cfg.options)
    if cfg.pretrained:  # e.g. transform_input for weights ported from TensorFlow

        options = {**published_weights(cfg.name).builder_options, **options}
    try:
        return create_model(cfg.name, num_classes=num_classes, input_shape=input_shape, **options)
    except CnnlabError as exc:
        if not cfg.options or "option" not in str(exc):
            raise
        # the builder names the option; the config key is what a config's author has to change
        raise CnnlabError(f"model.options {cfg.options} do not fit model {cfg.name!r}: {exc}") from None


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not), as Keras's ``Total params``."""
    return sum(p.numel() for p in model.parameters())


def model_meta_for(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> ModelMeta:
    """The metadata of the configured model: the registered one's, or that of its layer list."""
    if cfg.layers is not None:

        return spec_meta(list(cfg.layers), input_shape, num_classes)
    if not cfg.name:
        raise CnnlabError("the config names no model; set model.name (see cnnlab models) or model.layers")
    return model_meta(cfg.name)

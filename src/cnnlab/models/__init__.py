"""Models: registered builders with their metadata (``registry``), one family per file, layer specs, weights."""

from cnnlab.models.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODELS,
    ModelMeta,
    Weights,
    create_model,
    describe,
    model_meta,
    model_names,
    register_model,
)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MODELS", "ModelMeta", "Weights", "create_model", "describe",
           "model_meta", "model_names", "register_model"]

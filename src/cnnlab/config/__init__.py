"""Experiment configuration: the schema (``schema``), its fields checked (``fields``), and how a config is built
and stored (``loading``)."""

from cnnlab.config.fields import check_value, from_dict
from cnnlab.config.loading import (
    PACKAGED,
    Override,
    apply_override,
    config_path,
    dump_yaml,
    flatten,
    load_config,
    parse_override,
    parse_value,
    read_yaml,
    recipe_path,
    replace,
    to_dict,
)
from cnnlab.config.schema import (
    PADDING_MODES,
    AugmentConfig,
    CallbacksConfig,
    CompareConfig,
    Config,
    DataConfig,
    ModelConfig,
    TrainConfig,
    parse_every,
)

__all__ = ["PACKAGED", "PADDING_MODES", "AugmentConfig", "CallbacksConfig", "CompareConfig", "Config", "DataConfig",
           "ModelConfig", "Override", "TrainConfig", "apply_override", "check_value", "config_path", "dump_yaml", "flatten", "from_dict",
           "load_config", "parse_every", "parse_override", "parse_value", "read_yaml", "recipe_path", "replace", "to_dict"]

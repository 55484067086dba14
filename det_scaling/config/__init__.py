"""Configs of both formats: loaded, given the toolkit's keys, and read through one recipe.

This package is the only place that tells a yacs CfgNode from a LazyConfig: :func:`load_cfg`
loads either from a file, :func:`config_format` wraps either in its adapter, whose
:class:`Recipe` and :class:`RunSettings` the scaling, the engine and the commands read.
"""

from det_scaling.config.defaults import add_scaling_config, get_cfg
from det_scaling.config.formats import FORMATS, adapter_of, config_format, read_recipe
from det_scaling.config.lazy import is_lazy_config, is_lazy_config_file
from det_scaling.config.lazy_format import LAZY_KEYS, LazyFormat
from det_scaling.config.load import (
    check_same_format,
    flatten_cfg,
    load_cfg,
    require_yaml_config,
)
from det_scaling.config.names import find_config_file
from det_scaling.config.recipe import (
    FRACTION,
    LENGTH,
    PERIOD,
    POINT,
    STEPS,
    AdaBatchSettings,
    ConfigFormat,
    EpochSchedule,
    NoiseScaleSettings,
    Recipe,
    RecipeKeys,
    RunSettings,
    ScheduleField,
)
from det_scaling.config.yacs_format import YACS_KEYS, YacsFormat

__all__ = [
    "FORMATS",
    "FRACTION",
    "LAZY_KEYS",
    "LENGTH",
    "PERIOD",
    "POINT",
    "STEPS",
    "YACS_KEYS",
    "AdaBatchSettings",
    "ConfigFormat",
    "EpochSchedule",
    "LazyFormat",
    "NoiseScaleSettings",
    "Recipe",
    "RecipeKeys",
    "RunSettings",
    "ScheduleField",
    "YacsFormat",
    "adapter_of",
    "add_scaling_config",
    "check_same_format",
    "config_format",
    "find_config_file",
    "flatten_cfg",
    "get_cfg",
    "is_lazy_config",
    "is_lazy_config_file",
    "load_cfg",
    "read_recipe",
    "require_yaml_config",
]

"""Config formats: yacs CfgNode and LazyConfig, two adapters around one recipe.

:func:`config_format` wraps a config of either format in its :class:`ConfigFormat`; everything
that reads the recipe, the run settings or the data sets of a config goes through it, so the
scaling, the batch schedule, the trainer and the commands know no format.
"""

from __future__ import annotations

from typing import Any

from det_scaling.config.lazy_format import LazyFormat
from det_scaling.config.recipe import ConfigFormat, Recipe
from det_scaling.config.yacs_format import YacsFormat

__all__ = ["FORMATS", "adapter_of", "config_format", "read_recipe"]

FORMATS: tuple[type[ConfigFormat], ...] = (YacsFormat, LazyFormat)


def config_format(cfg: Any) -> ConfigFormat:
    """``cfg`` (a CfgNode or a LazyConfig) in its format's adapter."""
    for fmt in FORMATS:
        if fmt.holds(cfg):
            return fmt(cfg)
    raise TypeError(
        f"not a detectron2 config: {type(cfg).__name__} (expected a CfgNode or a LazyConfig)"
    )


def adapter_of(cfg: Any) -> ConfigFormat:
    """A user's config (a CfgNode or a LazyConfig) in its format's adapter, with the toolkit's
    keys at their defaults where it lacks them (then in a copy): how the library reads a config it
    is handed."""
    fmt = config_format(cfg)
    return fmt if fmt.has_toolkit_keys() else fmt.writable_copy()


def read_recipe(cfg: Any) -> Recipe:
    """The recipe of ``cfg``, with the toolkit's keys at their defaults where it lacks them."""
    return adapter_of(cfg).recipe()

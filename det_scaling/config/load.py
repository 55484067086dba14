"""A config file and its overrides loaded into a config, with errors that name the file or key.

A ``.yaml`` file is a yacs config with the toolkit's keys (:mod:`.defaults`); a ``.py`` file is a
LazyConfig (:mod:`.lazy`). A config is named by its path or its name (:mod:`.names`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import yaml
from detectron2.config import CfgNode

from det_scaling.config.defaults import get_cfg
from det_scaling.config.lazy import (
    flatten_lazy_cfg,
    is_lazy_config_file,
    load_lazy_cfg,
    no_such_key,
)
from det_scaling.config.names import NO_SUCH_CONFIG, find_config_file
from det_scaling.errors import ConfigError
from det_scaling.utils.logs import quiet_logger

__all__ = ["check_same_format", "flatten_cfg", "load_cfg", "require_yaml_config"]


def load_cfg(config_file: str | None = None, overrides: Sequence[str] = ()) -> Any:
    """Default config, merged with ``config_file`` (``_BASE_`` inheritance as in detectron2) and
    then with ``KEY VALUE`` ``overrides`` as detectron2's tools take them. Raises ``ConfigError``
    in one line naming the file or key (with the closest existing key for a misspelt one).

    A ``.py`` file is a LazyConfig: it is loaded by :func:`det_scaling.config.lazy.load_lazy_cfg`
    (``key=value`` overrides) and returned as detectron2's ``LazyConfig.load`` returns it.
    ``config_file`` may be a config's name (:func:`find_config_file`)."""
    if config_file:
        config_file = find_config_file(config_file)
    if config_file and is_lazy_config_file(config_file):
        _check_override_style(config_file, overrides, lazy=True)
        return load_lazy_cfg(config_file, overrides)
    _check_override_style(config_file or "the default config", overrides, lazy=False)
    cfg = get_cfg()
    if config_file:
        if os.path.isdir(config_file):
            raise ConfigError(f"{config_file}: is a directory; give a config file (.yaml or .py)")
        if not os.path.isfile(config_file):
            raise ConfigError(f"{config_file}: {NO_SUCH_CONFIG}")
        try:
            # detectron2 warns that a config without VERSION is taken as the latest version:
            # what every config here means.
            with quiet_logger("detectron2.config.compat"):
                cfg.merge_from_file(config_file)
        except KeyError as error:  # yacs: "Non-existent config key: A.B"
            raise _unknown_key(cfg, str(error.args[0]), f"{config_file}: ") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{config_file}: not a text file; give a YAML config") from None
        except PermissionError as error:
            raise ConfigError(f"{config_file}: cannot be read ({error.strerror})") from None
        except ValueError as error:  # yacs: type mismatch, naming the key
            raise ConfigError(f"{config_file}: {_type_mismatch(error)}") from None
        except (OSError, yaml.YAMLError, AttributeError, TypeError) as error:
            reason = " ".join(str(error).split())
            raise ConfigError(f"{config_file}: not a detectron2 YAML config ({reason})") from None
    if overrides:
        if len(overrides) % 2:
            raise ConfigError(
                f"overrides must be KEY VALUE pairs; got an odd number: {list(overrides)}"
            )
        try:
            cfg.merge_from_list(list(overrides))
        except AssertionError as error:  # yacs: "Non-existent key: A.B"
            raise _unknown_key(cfg, str(error), "") from None
        except ValueError as error:  # yacs: type mismatch, naming the key
            raise ConfigError(_type_mismatch(error)) from None
    return cfg


# yacs: "Type mismatch (<class 'int'> vs. <class 'str'>) with values (40000 vs. ten) for config
# key: SOLVER.MAX_ITER"
_TYPE_MISMATCH = re.compile(
    r"Type mismatch \(<class '(\w+)'> vs\. <class '(\w+)'>\) with values \((.*) vs\. (.*)\) "
    r"for config key: (\S+)",
    re.DOTALL,
)


def _type_mismatch(error: ValueError) -> str:
    """yacs's type mismatch as ``KEY: expected TYPE (like DEFAULT), got VALUE``."""
    match = _TYPE_MISMATCH.match(str(error))
    if match is None:
        return str(error)
    expected, got, default, value, key = match.groups()
    return f"{key}: expected {expected} (like {default}), got {got} {value!r}"


def _check_override_style(config: str, overrides: Sequence[str], *, lazy: bool) -> None:
    """A LazyConfig takes ``key=value`` overrides, a YAML config ``KEY VALUE`` pairs."""
    if lazy:
        plain = [o for o in overrides if "=" not in o]
        if plain:
            raise ConfigError(
                f"{config}: a LazyConfig takes key=value overrides (e.g. train.max_iter=1000), "
                f"got {plain}"
            )
    else:
        key_value = [key for key in overrides[::2] if "=" in key]
        if key_value:
            raise ConfigError(
                f"{config}: key=value overrides are for LazyConfig (.py) files, got {key_value}; "
                "a YAML config takes KEY VALUE pairs (e.g. SOLVER.BASE_LR 0.01)"
            )


def _unknown_key(cfg: CfgNode, message: str, where: str) -> ConfigError:
    key = message.rsplit(":", 1)[-1].strip()
    return no_such_key(key, [*flatten_cfg(cfg), *_section_keys(cfg)], where)


def flatten_cfg(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``{"SOLVER.BASE_LR": 0.02, ...}``: every leaf of ``cfg`` by its dotted key (lists as
    tuples, so values compare alike whatever YAML made of them). A LazyConfig is flattened by
    :func:`det_scaling.config.lazy.flatten_lazy_cfg`."""
    if not isinstance(cfg, CfgNode):
        return flatten_lazy_cfg(cfg)
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, CfgNode):
            flat.update(flatten_cfg(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return flat


def _section_keys(node: CfgNode, prefix: str = "") -> list[str]:
    keys = []
    for name, value in node.items():
        if isinstance(value, CfgNode):
            keys += [f"{prefix}{name}", *_section_keys(value, f"{prefix}{name}.")]
    return keys


def require_yaml_config(config: str, command: str) -> None:
    """Raises ``ConfigError`` for a LazyConfig file: ``command`` takes YAML configs only."""
    if is_lazy_config_file(config):
        raise ConfigError(f"{config}: {command} takes YAML configs; LazyConfig files are not yet")


def check_same_format(config: str, other: str) -> None:
    """Raises ``ConfigError`` unless both files are YAML or both LazyConfigs."""
    if is_lazy_config_file(config) != is_lazy_config_file(other):
        raise ConfigError(
            f"{config} and {other}: one is YAML, the other a LazyConfig (.py); compare configs "
            "of one format"
        )

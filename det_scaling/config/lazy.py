"""detectron2's LazyConfig (``.py`` configs) with the toolkit's keys, loaded with clear errors.

A LazyConfig says the GPU count it is written for in ``train.reference_world_size`` (0 or absent:
written for the GPUs it runs on, nothing is rescaled). The toolkit's other settings are the yacs
``SCALING.*`` keys in lower case under ``train.scaling`` (``train.scaling.rule``,
``train.scaling.keep_reference_batch``, ``train.scaling.epochs.max``, ...), with the defaults and
meaning :func:`det_scaling.config.add_scaling_config` gives them; the synthetic VOC set's
parameters (``DATASETS.SYNTHETIC_VOC``) are ``dataloader.synthetic_voc``. Overrides are
detectron2's ``key=value`` (``LazyConfig.apply_overrides``); ``+key=value`` adds a key the config
lacks.
"""

from __future__ import annotations

import difflib
import inspect
import os
import warnings
from collections.abc import Sequence
from typing import Any

from detectron2.config import LazyConfig
from omegaconf import DictConfig, OmegaConf

from det_scaling.config.defaults import get_cfg
from det_scaling.config.names import NO_SUCH_CONFIG
from det_scaling.errors import ConfigError

__all__ = [
    "add_lazy_scaling_keys",
    "apply_lazy_overrides",
    "flatten_lazy_cfg",
    "is_lazy_config",
    "is_lazy_config_file",
    "load_lazy_cfg",
    "lower_case_keys",
    "no_such_key",
    "toolkit_defaults",
]

_ABSENT = object()


def is_lazy_config_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a LazyConfig (a ``.py`` file) rather than a YAML config."""
    return os.fspath(path).endswith(".py")


def is_lazy_config(cfg: Any) -> bool:
    return isinstance(cfg, DictConfig)


def lower_case_keys(node: Any) -> Any:
    """A yacs CfgNode section as plain dicts and lists with lower-case keys (tuples as lists)."""
    if isinstance(node, dict):
        return {key.lower(): lower_case_keys(value) for key, value in node.items()}
    if isinstance(node, tuple | list):
        return [lower_case_keys(value) for value in node]
    return node


def toolkit_defaults() -> dict[str, dict[str, Any]]:
    """LazyConfig node -> the toolkit's keys there with their defaults (the yacs ones)."""
    cfg = get_cfg()
    return {
        "train.scaling": lower_case_keys(cfg.SCALING),
        "dataloader.synthetic_voc": lower_case_keys(cfg.DATASETS.SYNTHETIC_VOC),
    }


def add_lazy_scaling_keys(cfg: DictConfig, where: str = "") -> None:
    """Adds the toolkit's keys at their defaults where ``cfg`` lacks them (in place; calling it
    twice is harmless): ``train.reference_world_size``, ``train.deterministic``,
    ``train.allow_pickled_weights`` and ``train.scaling``; and ``dataloader.synthetic_voc`` when
    the config has it. Raises ``ConfigError`` (prefixed with ``where``) for a key under them that
    does not exist, naming the closest one."""
    if OmegaConf.select(cfg, "train", default=None) is None:
        cfg.train = {}
    if "reference_world_size" not in cfg.train:
        cfg.train.reference_world_size = 0
    yacs = get_cfg()
    if "deterministic" not in cfg.train:
        cfg.train.deterministic = yacs.DETERMINISTIC
    if "allow_pickled_weights" not in cfg.train:
        cfg.train.allow_pickled_weights = yacs.MODEL.ALLOW_PICKLED_WEIGHTS
    for node_key, defaults in toolkit_defaults().items():
        written = OmegaConf.select(cfg, node_key, default=None)
        if written is None and node_key != "train.scaling":
            continue
        written = written if written is not None else OmegaConf.create({})
        _check_known(written, OmegaConf.create(defaults), node_key, where)
        OmegaConf.update(cfg, node_key, OmegaConf.merge(defaults, written), merge=False)


def _check_known(written: DictConfig, defaults: DictConfig, prefix: str, where: str) -> None:
    for key, value in written.items():
        if key not in defaults:
            known = [f"{prefix}.{k}" for k in _flatten(OmegaConf.to_container(defaults))]
            raise no_such_key(f"{prefix}.{key}", known, where)
        if isinstance(value, DictConfig):
            _check_known(value, defaults[key], f"{prefix}.{key}", where)


def load_lazy_cfg(config_file: str, overrides: Sequence[str] = ()) -> DictConfig:
    """``config_file`` loaded by ``LazyConfig.load``, with the toolkit's keys added and the
    ``key=value`` ``overrides`` applied. Raises ``ConfigError`` in one line naming the file or key
    (with the closest existing key for a misspelt one)."""
    if not os.path.isfile(config_file):
        raise ConfigError(f"{config_file}: {NO_SUCH_CONFIG}")
    try:
        with warnings.catch_warnings():
            # detectron2.model_zoo, which LazyConfigs import, uses pkg_resources (setuptools<81
            # keeps it); its deprecation warning is about detectron2's code, not the user's.
            warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
            cfg = LazyConfig.load(config_file)
    except Exception as error:  # a LazyConfig is Python: it can raise anything
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        raise ConfigError(f"{config_file}: cannot load the LazyConfig ({reason})") from None
    add_lazy_scaling_keys(cfg, f"{config_file}: ")
    apply_lazy_overrides(cfg, overrides)
    return cfg


def apply_lazy_overrides(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Applies detectron2's ``key=value`` overrides to ``cfg`` in place. A key must exist, or be
    an argument of the call it belongs to (``optimizer.nesterov=True`` on ``torch.optim.SGD``),
    or be written ``+key=value``."""
    plain = []
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key.lstrip("+"):
            raise ConfigError(
                f"{override}: a LazyConfig override is key=value (e.g. train.max_iter=1000)"
            )
        if "[" in key:
            raise ConfigError(
                f"{override}: detectron2's key=value overrides cannot name a list item; change "
                "it in the config file"
            )
        if not key.startswith("+"):
            _check_override_key(cfg, key)
        plain.append(f"{key.lstrip('+')}={value}")
    try:
        LazyConfig.apply_overrides(cfg, plain)
    except Exception as error:  # hydra's parser and OmegaConf raise their own types
        reason = " ".join(str(error).split())
        raise ConfigError(f"cannot apply the overrides {list(overrides)}: {reason}") from None


def _check_override_key(cfg: DictConfig, key: str) -> None:
    try:
        if OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False) is not _ABSENT:
            return
    except Exception:  # a path through a value that is not a config node: reported below
        pass
    parent_key, _, name = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    if isinstance(parent, DictConfig) and _accepts(parent.get("_target_"), name):
        return
    raise no_such_key(key, [*flatten_lazy_cfg(cfg), *_section_keys(cfg)], "")


def _accepts(target: Any, name: str) -> bool:
    """Whether the callable ``target`` of a LazyCall takes an argument ``name`` (True when it
    cannot be inspected)."""
    if target is None:
        return False
    if not callable(target):
        return True  # a name; detectron2 locates it only when instantiating
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind is p.VAR_KEYWORD or p.name == name for p in parameters)


def no_such_key(key: str, known: list[str], where: str) -> ConfigError:
    """``where`` + ``key: no such config key``, with the closest of ``known`` when one is close."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    return ConfigError(f"{where}{key}: no such config key{hint}")


def flatten_lazy_cfg(cfg: DictConfig) -> dict[str, Any]:
    """``{"optimizer.lr": 0.02, "train.max_iter": 90000, ...}``: every leaf by its dotted key
    (list items as ``key[i]``, lists of plain values as tuples, callables by their import path,
    interpolations unresolved as written)."""
    return _flatten(OmegaConf.to_container(cfg, resolve=False))


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
    elif isinstance(node, list) and any(isinstance(v, dict | list) for v in node):
        for index, value in enumerate(node):
            flat.update(_flatten(value, f"{prefix[:-1]}[{index}]."))
    else:
        flat[prefix[:-1]] = _plain(node)
    return flat


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', value)}"
    return value


def _section_keys(cfg: DictConfig) -> list[str]:
    sections = set()
    for key in flatten_lazy_cfg(cfg):
        parts = key.split(".")
        sections.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return sorted(sections)

"""Which file sets a config key: the file of a YAML config's ``_BASE_`` chain, or the LazyConfig
file (the config or one of the files it imports) that assigns it.

Used to explain a changed value ("set in configs/Base-RCNN.yaml"). YAML follows fvcore's
``load_yaml_with_base``: a file's own keys win over its bases', a later base over an earlier one.
A LazyConfig is Python, so its files are read, not run: a key is set by the file with the most
specific assignment to it (``optimizer.lr = ...`` over ``optimizer = ...``), following relative
imports (``from ..common.optim import SGD as optimizer``) into the file they name.
"""

from __future__ import annotations

import ast
import functools
import os
import warnings
from collections.abc import Iterable
from typing import Any

import yaml
from detectron2.config import LazyConfig

from det_scaling.config.lazy import flatten_lazy_cfg, is_lazy_config_file

__all__ = ["key_sources"]

_BASE_KEY = "_BASE_"
# Deeper than any real chain of bases or imports: a guard against a file that names itself.
_MAX_DEPTH = 32


def key_sources(config_file: str, keys: Iterable[str]) -> dict[str, str | None]:
    """For each key, the path of the file that sets it (joined onto ``config_file``'s folder as
    written there, normalized), or None when no file does: the value is a default (detectron2's
    or the toolkit's). A file that cannot be read counts as setting nothing."""
    keys = list(keys)
    if is_lazy_config_file(config_file):
        return _lazy_sources(config_file, keys)
    return {key: _yaml_source(os.path.normpath(config_file), key, 0) for key in keys}


# ---- YAML: the _BASE_ chain ----


def _yaml_source(path: str, key: str, depth: int) -> str | None:
    data = _read_yaml(path)
    if data is None or depth > _MAX_DEPTH:
        return None
    if _sets(data, key.split(".")):
        return path
    bases = data.get(_BASE_KEY) or []
    for base in reversed(bases if isinstance(bases, list) else [bases]):
        found = _yaml_source(_base_path(path, str(base)), key, depth + 1)
        if found:
            return found
    return None


def _base_path(path: str, base: str) -> str:
    """Where fvcore looks for ``base``: relative to the file naming it, unless absolute."""
    base = os.path.expanduser(base)
    if base.startswith(("/", "https://", "http://")):
        return base
    return os.path.normpath(os.path.join(os.path.dirname(path), base))


def _sets(data: dict, parts: list[str]) -> bool:
    node: Any = data
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@functools.lru_cache(maxsize=64)
def _read_yaml_cached(path: str, mtime: float) -> dict | None:
    try:
        with open(path) as file:
            data = yaml.safe_load(file)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _read_yaml(path: str) -> dict | None:
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return None
    return _read_yaml_cached(path, mtime)  # the file's time in the key: an edit is read again


# ---- LazyConfig: assignments and relative imports ----


def _lazy_sources(config_file: str, keys: list[str]) -> dict[str, str | None]:
    # The keys the files themselves write; the others are the toolkit's, added at their defaults.
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
            written = set(flatten_lazy_cfg(LazyConfig.load(config_file)))
    except Exception:  # a LazyConfig is Python: it can raise anything; load_cfg reports it
        written = set(keys)
    path = os.path.normpath(config_file)
    return {key: _lazy_source(path, key, 0) if key in written else None for key in keys}


def _lazy_source(path: str, key: str, depth: int) -> str:
    """The file whose assignment sets ``key``: the one with the longest assigned prefix of it in
    ``path``, or, when that prefix is a name imported from another config file, the file there
    that sets the key under its name in that file."""
    assigned, imported = _read_python(path)
    best = max((t for t in assigned if _covers(t, key)), key=len, default="")
    names = [name for name in imported if _covers(name, key) and len(name) > len(best)]
    if not names or depth > _MAX_DEPTH:
        return path
    name = names[0]
    other, other_name = imported[name]
    return _lazy_source(other, other_name + key[len(name) :], depth + 1)


def _covers(prefix: str, key: str) -> bool:
    return key == prefix or key.startswith((f"{prefix}.", f"{prefix}["))


def _read_python(path: str) -> tuple[frozenset[str], dict[str, tuple[str, str]]]:
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return frozenset(), {}
    return _read_python_cached(path, mtime)


@functools.lru_cache(maxsize=64)
def _read_python_cached(
    path: str, mtime: float
) -> tuple[frozenset[str], dict[str, tuple[str, str]]]:
    """The dotted keys ``path`` assigns at module level, and the names it imports from other
    config files: name -> (file, name there)."""
    try:
        with open(path) as file:
            tree = ast.parse(file.read(), path)
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return frozenset(), {}
    assigned: set[str] = set()
    imported: dict[str, tuple[str, str]] = {}
    for node in _module_level(tree.body):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        elif isinstance(node, ast.ImportFrom) and node.level and node.module:
            other = _relative_file(path, node.module, node.level)
            for alias in node.names:
                if alias.name != "*":
                    imported[alias.asname or alias.name] = (other, alias.name)
            continue
        else:
            continue
        for target in targets:
            elements = target.elts if isinstance(target, ast.Tuple | ast.List) else [target]
            assigned.update(key for key in map(_dotted, elements) if key)
    # A name assigned after its import is the file's own: its assignment wins (see _lazy_source).
    return frozenset(assigned), imported


def _module_level(body: list[ast.stmt]) -> Iterable[ast.stmt]:
    """The statements run when the module runs: into if / for / with / try, not into functions
    or classes (their assignments are to local names)."""
    for node in body:
        yield node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        for field in ("body", "orelse", "finalbody"):
            yield from _module_level(getattr(node, field, []) or [])
        for handler in getattr(node, "handlers", []) or []:
            yield from _module_level(handler.body)


def _dotted(node: ast.expr) -> str | None:
    """``a.b["c"][0]`` as the flattened key ``a.b.c[0]``; None for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    if isinstance(node, ast.Subscript):
        base = _dotted(node.value)
        index = node.slice
        if base and isinstance(index, ast.Constant):
            if isinstance(index.value, str):
                return f"{base}.{index.value}"
            if isinstance(index.value, int):
                return f"{base}[{index.value}]"
    return None  # an item named at run time: unknown, so the next most specific key decides


def _relative_file(path: str, module: str, level: int) -> str:
    """The file detectron2's LazyConfig loads for ``from <level dots><module> import ...``."""
    folder = os.path.dirname(path)
    for _ in range(level - 1):
        folder = os.path.dirname(folder)
    other = os.path.join(folder, *module.split("."))
    return os.path.normpath(other if other.endswith(".py") else f"{other}.py")

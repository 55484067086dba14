"""docs/config-keys.md is what tools/config_keys_doc.py writes from det_scaling/config/defaults.py,
and it lists every key the toolkit adds."""

from __future__ import annotations

import functools
import importlib.util
import sys

from detectron2.config import get_cfg as detectron2_get_cfg
from helpers import REPO

import det_scaling
from det_scaling.config import flatten_cfg


@functools.cache
def generator():
    """tools/config_keys_doc.py as a module."""
    path = REPO / "tools" / "config_keys_doc.py"
    spec = importlib.util.spec_from_file_location("config_keys_doc", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_committed_page_is_what_the_generator_writes_from_the_defaults() -> None:
    docs = generator()
    assert docs.PAGE.read_text() == docs.render(), "docs/config-keys.md is stale: run make docs"


def test_the_page_is_written_from_the_comments_above_each_key() -> None:
    docs = generator()
    source = docs.DEFAULTS.read_text()
    comment = "# How BASE_LR and BASE_LR_END follow the total batch"
    assert comment in source
    page = docs.render(
        source.replace(comment, "# HOW BASE_LR and BASE_LR_END follow the total batch")
    )
    assert "(LazyConfig `train.scaling.rule`): HOW BASE_LR and BASE_LR_END follow" in page


def test_the_page_lists_every_key_the_toolkit_adds_and_only_keys_that_exist() -> None:
    documented = set(generator().documented_keys(generator().PAGE.read_text()))
    keys = set(flatten_cfg(det_scaling.get_cfg()))
    added = keys - set(flatten_cfg(detectron2_get_cfg()))
    assert added, "the toolkit adds keys"
    assert sorted(added - documented) == []
    assert sorted(documented - keys) == []

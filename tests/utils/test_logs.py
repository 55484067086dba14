"""The logging helpers: third-party warnings with nothing for the user to do are ignored only
where det_scaling asks, and detectron2's config dump has no colour codes."""

from __future__ import annotations

import argparse
import warnings

import pytest
from detectron2.engine import default_setup

import det_scaling
from det_scaling.utils.logs import plain_config_dump, unactionable_warnings_ignored

# The messages as torch words them (each is raised once per process, so they are replayed here;
# the training runs of tests/docs/test_markdown_blocks.py check that none reaches the console).
TORCH_MESSAGES = (
    "TypedStorage is deprecated. It will be removed in the future and UntypedStorage will be the "
    "only storage class.",
    "torch.meshgrid: in an upcoming release, it will be required to pass the indexing argument. "
    "(Triggered internally at aten/src/ATen/native/TensorShape.cpp:4221.)",
)


def _warn_all() -> None:
    for message in (*TORCH_MESSAGES, "a warning the user can act on"):
        warnings.warn(message, UserWarning, stacklevel=1)


def _shown(work) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        work()
    return [str(w.message) for w in caught]


def test_typed_storage_and_meshgrid_warnings_are_ignored_inside_only() -> None:
    def inside() -> None:
        with unactionable_warnings_ignored():
            _warn_all()

    assert _shown(inside) == ["a warning the user can act on"]
    assert _shown(_warn_all) == [*TORCH_MESSAGES, "a warning the user can act on"]


def test_as_a_decorator_it_ignores_them_in_the_function_it_wraps() -> None:
    assert _shown(unactionable_warnings_ignored()(_warn_all)) == ["a warning the user can act on"]


def test_default_setup_logs_the_config_without_colour_codes(tmp_path) -> None:
    pytest.importorskip("pygments")  # detectron2 colours the dump only with it
    cfg = det_scaling.get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    config = tmp_path / "given.yaml"
    config.write_text(cfg.dump())
    args = argparse.Namespace(config_file=str(config), eval_only=True)
    with plain_config_dump():
        default_setup(cfg, args)
    log = (tmp_path / "log.txt").read_text()
    assert "Running with full config" in log and "SCALING:" in log
    assert "\x1b[" not in log

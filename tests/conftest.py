"""Shared fixtures. det_scaling is imported first: it installs the detectron2 compatibility
layer."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from helpers.stacks_plugin import (  # noqa: F401  (the plugin's hooks)
    pytest_configure,
    pytest_runtest_call,
    pytest_runtest_makereport,
    pytest_unconfigure,
)
from hypothesis import settings

import det_scaling

# The config_diff fixture, for a checkout whose installed det-scaling predates its entry point
# (pytest skips a plugin registered under this name already).
pytest_plugins = ["det_scaling.testing.plugin"]

# Property tests draw the same examples on every run: a failure in CI is a failure here.
settings.register_profile("det_scaling", derandomize=True, print_blob=True)
settings.load_profile("det_scaling")

REPO = Path(__file__).resolve().parents[1]
VOC07_CONFIG = REPO / "configs" / "VOC07-Detection" / "faster_rcnn_R_50_FPN.yaml"


@pytest.fixture(autouse=True, scope="session")
def _temporary_files_under_basetemp(tmp_path_factory: pytest.TempPathFactory):
    """Temporary files of the processes tests start (torch's error files, torchelastic's logs) go
    under pytest's base folder, which pytest prunes, instead of piling up in /tmp."""
    folder = str(tmp_path_factory.mktemp("tmp"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", folder)
        patch.setattr(tempfile, "tempdir", folder)
        yield


@pytest.fixture
def voc07_cfg():
    """The VOC07 Faster R-CNN config, written for 1 GPU x 2 images (the tutorial's reference)."""
    return det_scaling.load_cfg(str(VOC07_CONFIG))


@pytest.fixture
def data(tmp_path) -> Path:
    """A folder with test_engine's 8 images, the data of its tiny box regressor."""
    from det_scaling.testing.tiny import write_images

    root = tmp_path / "data"
    root.mkdir()
    write_images(root)
    return root


# Slow tests run processes (training, launches, torchrun): each gets a hard timeout well under
# CI's budget, failing with the stacks of the stuck processes, unless it is marked tighter.
SLOW_TEST_TIMEOUT = 450


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests get their hard timeout; tests marked ``cuda`` are skipped without CUDA."""
    no_cuda = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TEST_TIMEOUT))
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)

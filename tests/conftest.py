"""Shared fixtures. det_scaling is imported first: it applies the detectron2 compatibility layer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import det_scaling

REPO = Path(__file__).resolve().parents[1]
VOC07_CONFIG = REPO / "configs" / "VOC07-Detection" / "faster_rcnn_R_50_FPN.yaml"


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``cuda`` are skipped where CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def voc07_cfg():
    """The VOC07 Faster R-CNN config, written for 1 GPU x 2 images (the tutorial's reference)."""
    return det_scaling.load_cfg(str(VOC07_CONFIG))


@pytest.fixture
def data(tmp_path) -> Path:
    """A folder with test_engine's 8 images, the data of its tiny box regressor."""
    from helpers.tiny import write_images

    root = tmp_path / "data"
    root.mkdir()
    write_images(root)
    return root

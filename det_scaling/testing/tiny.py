"""A detectron2 model small enough for tests of the training plumbing that run in seconds: a box
regressor (``TinyBoxRegressor``) on 8 generated 16-pixel images, and its config. Real data
loading, real checkpoints and real process groups, at a cost of milliseconds a step."""

from __future__ import annotations

import det_scaling  # noqa: F401  (before detectron2: the compatibility layer)

# isort: split
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import BoxMode
from PIL import Image
from torch import nn

from det_scaling.config.defaults import get_cfg

__all__ = [
    "DATASET",
    "IMAGE_SIZE",
    "NUM_IMAGES",
    "TinyBoxRegressor",
    "register_images",
    "tiny_cfg",
    "write_images",
    "write_tiny_run",
]

DATASET = "det_scaling_test_tiny_boxes"
NUM_IMAGES = 8
IMAGE_SIZE = 16


@META_ARCH_REGISTRY.register()
class TinyBoxRegressor(nn.Module):
    """Predicts the (normalised) box of each image; loss: mean squared error over the batch."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)
        self.head = nn.Linear(4, 4)
        self.to(torch.device(cfg.MODEL.DEVICE))

    def forward(self, batched_inputs: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = torch.stack([x["image"] for x in batched_inputs]).float() / 255.0
        boxes = self.head(F.relu(self.conv(images)).mean(dim=(2, 3)))
        targets = torch.stack([x["instances"].gt_boxes.tensor[0] for x in batched_inputs])
        return {"loss_box": F.mse_loss(boxes, targets / IMAGE_SIZE)}


def _image(index: int) -> tuple[np.ndarray, list[float]]:
    """Image ``index``: dark noise with one bright rectangle, and that rectangle (XYXY)."""
    rng = np.random.default_rng(index)
    x0, y0 = rng.integers(0, IMAGE_SIZE // 2, size=2)
    width, height = rng.integers(3, IMAGE_SIZE // 2, size=2)
    x1, y1 = x0 + width, y0 + height
    pixels = rng.integers(0, 60, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    pixels[y0:y1, x0:x1] = 230
    return pixels, [float(x0), float(y0), float(x1), float(y1)]


def write_images(root: Path) -> None:
    """Writes the 8 images as PNG files into the folder ``root``."""
    for index in range(NUM_IMAGES):
        Image.fromarray(_image(index)[0]).save(root / f"{index}.png")


def register_images(root: Path) -> None:
    """Registers the images under ``root`` as :data:`DATASET` (called in every process, like
    any detectron2 set)."""
    records = [
        {
            "file_name": str(root / f"{index}.png"),
            "image_id": index,
            "height": IMAGE_SIZE,
            "width": IMAGE_SIZE,
            "annotations": [
                {"bbox": _image(index)[1], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}
            ],
        }
        for index in range(NUM_IMAGES)
    ]
    if DATASET in DatasetCatalog.list():
        DatasetCatalog.remove(DATASET)
        MetadataCatalog.remove(DATASET)
    DatasetCatalog.register(DATASET, lambda: records)
    MetadataCatalog.get(DATASET).set(thing_classes=["box"])


def tiny_cfg(output_dir: Path, *, ims_per_batch: int, accum: int = 1, max_iter: int = 3) -> CfgNode:
    """The tiny model's config on the CPU, used as written at any GPU count (reference 0): a
    constant LR of 0.5, no evaluation, seed 7."""
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "TinyBoxRegressor"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.DATASETS.TRAIN = (DATASET,)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN = (IMAGE_SIZE,)
    cfg.INPUT.MAX_SIZE_TRAIN = IMAGE_SIZE
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 0
    cfg.SOLVER.IMS_PER_BATCH = ims_per_batch
    cfg.SOLVER.BASE_LR = 0.5
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    cfg.SCALING.GRAD_ACCUM_STEPS = accum
    cfg.SCALING.DATASET_SIZE = NUM_IMAGES
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.SEED = 7
    return cfg


def write_tiny_run(
    folder: Path,
    *,
    max_iter: int = 12,
    meta_architecture: str = "TinyBoxRegressor",
    **solver: Any,
) -> tuple[Path, Path]:
    """A run of the tiny model in ``folder``: its images in ``folder/data`` and its config,
    written for 1 GPU x 2 images (LR 0.01, 2 warmup steps, one LR step halfway, a checkpoint
    every 4 steps, output in ``folder/out``; ``solver``: other ``SOLVER`` keys), as
    ``folder/tiny.yaml``. Returns the config file and the images' folder, which every process
    of the run registers with :func:`register_images`."""
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    write_images(data)
    cfg = tiny_cfg(folder / "out", ims_per_batch=2, max_iter=max_iter)
    cfg.MODEL.META_ARCHITECTURE = meta_architecture
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 1
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.STEPS = (max_iter // 2,)
    cfg.SOLVER.WARMUP_ITERS = 2
    cfg.SOLVER.CHECKPOINT_PERIOD = 4
    cfg.SCALING.DATASET_SIZE = 0
    for key, value in solver.items():
        cfg.SOLVER[key] = value
    config = folder / "tiny.yaml"
    config.write_text(cfg.dump())
    return config, data

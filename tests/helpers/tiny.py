"""The tests' tiny detector: a box regressor on 8 generated 16-pixel images, its configs and
the runs the tests build from them (fast, real detectron2 data loading, real checkpoints)."""

from __future__ import annotations

import det_scaling  # noqa: F401  (before detectron2: the compatibility layer)

# isort: split
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data import transforms as T
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import OmegaConf
from PIL import Image
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from det_scaling import get_cfg, plan_scaling
from det_scaling.config import config_format
from det_scaling.config.lazy import add_lazy_scaling_keys, is_lazy_config
from det_scaling.engine import (
    ScalingTrainer,
)
from det_scaling.tasks import trainer_class

DATASET = "det_scaling_test_tiny_boxes"


NUM_IMAGES = 8


IMAGE_SIZE = 16


@META_ARCH_REGISTRY.register()
class TinyBoxRegressor(nn.Module):
    """Predicts the (normalised) box of each image; loss: mean squared error over the batch."""

    def __init__(self, cfg):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)
        self.head = nn.Linear(4, 4)
        self.to(torch.device(cfg.MODEL.DEVICE))

    def forward(self, batched_inputs):
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
    for index in range(NUM_IMAGES):
        Image.fromarray(_image(index)[0]).save(root / f"{index}.png")


def register_images(root: Path) -> None:
    """Registers the images under ``root`` (called in every process, like any detectron2 set)."""
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


def tiny_cfg(output_dir: Path, *, ims_per_batch: int, accum: int = 1, max_iter: int = 3):
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


def build_trainer(cfg, data_root: Path, resume: bool = False) -> ScalingTrainer:
    """What a tool's main does in each process: data, seeds (as default_setup), the trainer (a
    LazyConfig's for a LazyConfig)."""
    torch.set_num_threads(1)
    register_images(data_root)
    # default_setup's seeding: rank 0's seed decides the initial weights (DDP broadcasts them)
    # and the data order (TrainingSampler's shared seed), so runs at any world size match.
    seed = cfg.train.seed if is_lazy_config(cfg) else cfg.SEED
    seed_all_rng(seed + comm.get_rank())
    trainer = trainer_class(config_format(cfg))(cfg)
    trainer.resume_or_load(resume=resume)
    return trainer


def parameters(trainer: ScalingTrainer) -> dict[str, torch.Tensor]:
    model = trainer.model
    if isinstance(model, DistributedDataParallel):
        model = model.module
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def lr_history(trainer: ScalingTrainer) -> dict[int, float]:
    return {iteration: lr for lr, iteration in trainer.storage.history("lr").values()}


def assert_same_parameters(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def _resume_worker(cfg, data_root: str, out: str) -> None:
    trainer = build_trainer(cfg, Path(data_root), resume=True)
    summary = trainer.train()
    if comm.is_main_process():
        torch.save({"lr": lr_history(trainer), "summary": summary}, Path(out) / "result.pt")


def resume_cfg(output_dir: Path, world_size: int):
    """A schedule written for 1 GPU x 2 images (12 steps = 3 epochs), scaled to ``world_size``."""
    cfg = tiny_cfg(output_dir, ims_per_batch=2, max_iter=12)
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 1
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.STEPS = (6, 10)
    cfg.SOLVER.WARMUP_ITERS = 2
    cfg.SOLVER.CHECKPOINT_PERIOD = 4
    return plan_scaling(cfg, world_size).cfg


def continue_from(checkpoint: Path, output_dir: Path) -> None:
    """Puts ``checkpoint`` in ``output_dir`` as detectron2's last checkpoint (what --resume
    loads)."""
    output_dir.mkdir(parents=True)
    shutil.copy(checkpoint, output_dir / checkpoint.name)
    (output_dir / "last_checkpoint").write_text(checkpoint.name)


class LazyBoxRegressor(TinyBoxRegressor):
    """test_engine's model, built from keyword arguments as a LazyConfig builds models."""

    def __init__(self, device: str = "cpu") -> None:
        super().__init__(SimpleNamespace(MODEL=SimpleNamespace(DEVICE=device)))


def lazy_resume_cfg(output_dir: Path, world_size: int):
    """test_engine.resume_cfg as a LazyConfig: written for 1 GPU x 2 images, 12 steps (3
    epochs), LR steps at 6 and 10, 2 warmup steps, a checkpoint every 4; scaled to
    ``world_size``."""
    max_iter = 12
    cfg = OmegaConf.create(flags={"allow_objects": True})
    cfg.model = L(LazyBoxRegressor)(device="cpu")
    cfg.dataloader = {}
    cfg.dataloader.train = L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names=DATASET),
        mapper=L(DatasetMapper)(
            is_train=True,
            # The yacs config's INPUT.MIN_SIZE_TRAIN (16,), MAX_SIZE_TRAIN 16, no flip.
            augmentations=[
                L(T.ResizeShortestEdge)(
                    short_edge_length=(IMAGE_SIZE,), max_size=IMAGE_SIZE, sample_style="choice"
                )
            ],
            image_format="BGR",
        ),
        total_batch_size=2,
        num_workers=0,
    )
    cfg.optimizer = L(torch.optim.SGD)(
        params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
        lr=0.01,
        momentum=0.9,
        weight_decay=1e-4,
    )
    cfg.lr_multiplier = L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[1.0, 0.1, 0.01], milestones=[6, 10], num_updates=max_iter
        ),
        warmup_length=2 / max_iter,
        warmup_factor=0.001,
    )
    cfg.train = {
        "output_dir": str(output_dir),
        "init_checkpoint": "",
        "max_iter": max_iter,
        "amp": {"enabled": False},
        "ddp": {"broadcast_buffers": False},
        "checkpointer": {"period": 4, "max_to_keep": 100},
        "eval_period": 0,
        "log_period": 20,
        "device": "cpu",
        "seed": 7,
        "reference_world_size": 1,
        "scaling": {"dataset_size": NUM_IMAGES},
    }
    add_lazy_scaling_keys(cfg)
    return plan_scaling(cfg, world_size).cfg

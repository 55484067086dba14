"""The runs the tests build from det-scaling's tiny model (:mod:`det_scaling.testing.tiny`): its
trainers, resumed runs and the same model as a LazyConfig."""

from __future__ import annotations

import det_scaling  # noqa: F401  (before detectron2: the compatibility layer)

# isort: split
import shutil
from pathlib import Path
from types import SimpleNamespace

import torch
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data import transforms as T
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from detectron2.utils import comm
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel

from det_scaling import plan_scaling
from det_scaling.config.lazy import add_lazy_scaling_keys
from det_scaling.engine import Run, ScalingTrainer
from det_scaling.tasks import build_trainer as build_run_trainer
from det_scaling.testing.tiny import (
    DATASET,
    IMAGE_SIZE,
    NUM_IMAGES,
    TinyBoxRegressor,
    register_images,
    tiny_cfg,
)


def build_trainer(cfg, data_root: Path, resume: bool = False) -> ScalingTrainer:
    """What a tool's main does in each process: data, seeds (as default_setup), the trainer (a
    LazyConfig's for a LazyConfig)."""
    torch.set_num_threads(1)
    register_images(data_root)
    return build_run_trainer(Run.of_scaled(cfg, comm.get_world_size()), resume=resume)


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


def resume_written_cfg(output_dir: Path):
    """A schedule written for 1 GPU x 2 images: 12 steps (3 epochs), LR steps at 6 and 10, 2
    warmup steps, a checkpoint every 4."""
    cfg = tiny_cfg(output_dir, ims_per_batch=2, max_iter=12)
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 1
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.STEPS = (6, 10)
    cfg.SOLVER.WARMUP_ITERS = 2
    cfg.SOLVER.CHECKPOINT_PERIOD = 4
    return cfg


def resume_cfg(output_dir: Path, world_size: int):
    """:func:`resume_written_cfg` scaled to ``world_size``."""
    return plan_scaling(resume_written_cfg(output_dir), world_size).cfg


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

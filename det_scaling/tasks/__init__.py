"""What differs between detection and classification, in one place: the data sets a config names,
its trainer, the check of its starting weights, and the :class:`~det_scaling.engine.run.Run`
resolved from it. Above the engine and the tasks' packages, below the commands."""

from det_scaling.tasks.datasets import (
    SYNTHETIC_VOC_SPLITS,
    check_task,
    generate_synthetic_voc_for,
    register_datasets,
    synthetic_voc_dir_for,
    training_set_size,
)
from det_scaling.tasks.run import prepare_run, resolve_run
from det_scaling.tasks.trainers import build_run_step, build_trainer, seed_process, trainer_class
from det_scaling.tasks.weights import check_weights

__all__ = [
    "SYNTHETIC_VOC_SPLITS",
    "build_run_step",
    "build_trainer",
    "check_task",
    "check_weights",
    "generate_synthetic_voc_for",
    "prepare_run",
    "register_datasets",
    "resolve_run",
    "seed_process",
    "synthetic_voc_dir_for",
    "trainer_class",
    "training_set_size",
]

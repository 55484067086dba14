"""What a config's task needs before training: its data sets registered, and its trainer class.

Detection and classification differ only in model, data and metric; this module is the one place
that tells them apart (``tools/train.py`` and ``lr-find`` both use it).
"""

from __future__ import annotations

import os
from pathlib import Path

from detectron2.config import CfgNode
from detectron2.utils import comm

from det_scaling.classification import ClassificationTrainer, register_classification_datasets
from det_scaling.data import (
    datasets_root,
    generate_synthetic_voc,
    register_synthetic_voc,
    register_voc2007,
)
from det_scaling.engine import ScalingTrainer

__all__ = ["generate_synthetic_voc_for", "register_datasets", "trainer_class"]


def trainer_class(cfg: CfgNode) -> type[ScalingTrainer]:
    """The trainer for the config's task: classification for the ``ImageClassifier``
    meta-architecture, detection otherwise."""
    if cfg.MODEL.META_ARCHITECTURE == "ImageClassifier":
        return ClassificationTrainer
    return ScalingTrainer


def register_datasets(cfg: CfgNode) -> None:
    """Registers the data sets the config names, under ``$DETECTRON2_DATASETS`` (``./datasets``):
    ``voc_2007_*`` from ``VOC2007/``; ``synthetic_voc_*``, generated on first use from
    ``DATASETS.SYNTHETIC_VOC`` into ``synthetic_voc/``; ``digits_*`` (exported on first use) and
    ``imagenet_*`` for classification. In a process group, one process per machine writes
    generated data while the others wait."""
    names = (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST)
    register_voc2007()
    if any(name.startswith("synthetic_voc_") for name in names):
        root = datasets_root() / "synthetic_voc"
        if comm.get_local_rank() == 0:
            generate_synthetic_voc_for(cfg, root)
        comm.synchronize()
        register_synthetic_voc(root)
    register_classification_datasets(names)


def generate_synthetic_voc_for(cfg: CfgNode, root: str | os.PathLike) -> Path:
    """Generates (or finds already made) the synthetic VOC-layout set that
    ``DATASETS.SYNTHETIC_VOC`` describes, under ``root``; returns ``root`` as a Path."""
    spec = cfg.DATASETS.SYNTHETIC_VOC
    return generate_synthetic_voc(
        root,
        spec.NUM_TRAINVAL,
        spec.NUM_TEST,
        spec.IMAGE_SIZE,
        spec.SEED,
        objects_per_image=tuple(spec.OBJECTS_PER_IMAGE),
        object_size=tuple(spec.OBJECT_SIZE),
    )

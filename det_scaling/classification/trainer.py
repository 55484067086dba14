"""``ClassificationTrainer``: the engine's ``ScalingTrainer`` with a classifier, folders, accuracy.

Only the model, data and metric change (the project's rule: detection and classification differ
in nothing else). The loop, gradient accumulation, AMP, det_scaling's optimizers and schedules,
checkpoints with resume at another GPU count, hooks, writers and the summary are the engine's.
"""

from __future__ import annotations

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from det_scaling.classification import model as _model  # noqa: F401  (registers ImageClassifier)
from det_scaling.classification.data import (
    build_classification_test_loader,
    build_classification_train_loader,
)
from det_scaling.classification.evaluation import ClassificationEvaluator
from det_scaling.data.classes import check_class_count
from det_scaling.engine import ScalingTrainer

__all__ = ["ClassificationTrainer", "check_num_classes"]


def check_num_classes(cfg: CfgNode) -> None:
    """:func:`~det_scaling.data.classes.check_class_count` of ``MODEL.CLASSIFIER.NUM_CLASSES``
    against each registered data set of ``DATASETS.TRAIN`` (unregistered ones, e.g. evaluation
    only, are not checked)."""
    for name in cfg.DATASETS.TRAIN:
        if name not in DatasetCatalog.list():
            continue
        classes = getattr(MetadataCatalog.get(name), "thing_classes", None)
        if classes is not None:
            check_class_count(
                "MODEL.CLASSIFIER.NUM_CLASSES", cfg.MODEL.CLASSIFIER.NUM_CLASSES, name, classes
            )


class ClassificationTrainer(ScalingTrainer):
    """``ScalingTrainer`` for image classification: ``ImageClassifier`` (when the config names it
    in ``MODEL.META_ARCHITECTURE``), ImageNet-style folder loaders and top-1 / top-5 accuracy.
    Used exactly as ``ScalingTrainer``, on a config scaled for the world size."""

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        """detectron2's ``build_model`` (the meta-architecture registry), after checking the
        number of classes against the training data."""
        check_num_classes(cfg)
        return super().build_model(cfg)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> torch.utils.data.DataLoader:
        """See :func:`~det_scaling.classification.data.build_classification_train_loader`."""
        return build_classification_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str) -> torch.utils.data.DataLoader:
        """See :func:`~det_scaling.classification.data.build_classification_test_loader`."""
        return build_classification_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str) -> ClassificationEvaluator:
        """Top-1 / top-5 accuracy on ``dataset_name``."""
        return ClassificationEvaluator(dataset_name)

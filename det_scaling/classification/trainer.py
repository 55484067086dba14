"""``ClassificationTrainer``: the engine's ``ScalingTrainer`` with a classifier, folders, accuracy.

Only the model, data and metric change (the project's rule: detection and classification differ
in nothing else). The loop, gradient accumulation, AMP, det_scaling's optimizers and schedules,
checkpoints with resume at another GPU count, hooks, writers and the summary are the engine's.
"""

from __future__ import annotations

import logging

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from det_scaling.classification import model as _model  # noqa: F401  (registers ImageClassifier)
from det_scaling.classification.data import (
    build_classification_test_loader,
    build_classification_train_loader,
)
from det_scaling.classification.evaluation import ClassificationEvaluator
from det_scaling.engine import ScalingTrainer

__all__ = ["ClassificationTrainer", "check_num_classes"]

logger = logging.getLogger(__name__)


def check_num_classes(cfg: CfgNode) -> None:
    """Raises ``ValueError`` when the registered ``DATASETS.TRAIN`` have more classes than
    ``MODEL.CLASSIFIER.NUM_CLASSES`` (labels past the last output would fail in the loss); warns
    when they have fewer. Unregistered data sets (e.g. evaluation only) are not checked."""
    num_outputs = cfg.MODEL.CLASSIFIER.NUM_CLASSES
    for name in cfg.DATASETS.TRAIN:
        if name not in DatasetCatalog.list():
            continue
        classes = getattr(MetadataCatalog.get(name), "thing_classes", None)
        if classes is None:
            continue
        if len(classes) > num_outputs:
            raise ValueError(
                f"MODEL.CLASSIFIER.NUM_CLASSES is {num_outputs} but data set {name!r} has "
                f"{len(classes)} classes: set MODEL.CLASSIFIER.NUM_CLASSES {len(classes)}"
            )
        if len(classes) < num_outputs:
            logger.warning(
                "Data set %r has %d classes; the model has %d outputs (MODEL.CLASSIFIER."
                "NUM_CLASSES), the others are never trained",
                name,
                len(classes),
                num_outputs,
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

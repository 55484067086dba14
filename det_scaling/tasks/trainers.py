"""The trainer of a config's task."""

from __future__ import annotations

from det_scaling.classification import ClassificationTrainer
from det_scaling.config import ConfigFormat
from det_scaling.engine import LazyScalingTrainer, ScalingTrainer

__all__ = ["trainer_class"]


def trainer_class(adapter: ConfigFormat) -> type[ScalingTrainer]:
    """The trainer for the config's task: a LazyConfig's, classification for the
    ``ImageClassifier`` meta-architecture, detection otherwise."""
    if adapter.is_lazy:
        return LazyScalingTrainer
    if adapter.cfg.MODEL.META_ARCHITECTURE == "ImageClassifier":
        return ClassificationTrainer
    return ScalingTrainer

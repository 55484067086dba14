"""The one check of a model's class outputs against a data set's classes, for every task."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from det_scaling.errors import ConfigError

__all__ = ["check_class_count"]

logger = logging.getLogger(__name__)


def check_class_count(key: str, outputs: int, dataset: str, classes: Sequence[str]) -> None:
    """Raises ``ConfigError`` when data set ``dataset`` has more ``classes`` than the model's
    ``outputs`` (config key ``key``): labels past the last output fail in the loss or are never
    learnt. Warns when it has fewer: the other outputs are never trained."""
    if len(classes) > outputs:
        raise ConfigError(
            f"{key} is {outputs} but data set {dataset!r} has {len(classes)} classes: set {key} "
            f"{len(classes)}"
        )
    if len(classes) < outputs:
        logger.warning(
            "Data set %r has %d classes; the model has %d outputs (%s), the others are never "
            "trained",
            dataset,
            len(classes),
            outputs,
            key,
        )

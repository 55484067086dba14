"""Top-1 / top-5 accuracy as a detectron2 ``DatasetEvaluator``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

__all__ = ["ClassificationEvaluator", "topk_correct"]

logger = logging.getLogger(__name__)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> list[int]:
    """For each k of ``ks``: how many rows of ``logits`` (N x classes) have their ``labels``
    among their k highest scores. k larger than the number of classes counts every row."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels.view(-1, 1)
    return [int(hits[:, :k].any(dim=1).sum()) for k in ks]


class ClassificationEvaluator(DatasetEvaluator):
    """Counts the images whose label is the top-1 prediction, or among the top 5, over all
    processes; returns ``{"classification": {"top1": %, "top5": %}}`` (percentages, as
    detectron2 reports AP) on every process, so any hook may read it.

    Reads ``"label"`` from the inputs and ``"logits"`` from the outputs of ``ImageClassifier``.
    """

    def __init__(self, dataset_name: str | None = None, topk: Sequence[int] = (1, 5)) -> None:
        self.dataset_name = dataset_name
        self.topk = tuple(topk)
        self.reset()

    def reset(self) -> None:
        self._correct = [0] * len(self.topk)
        self._count = 0

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        logits = torch.stack([output["logits"] for output in outputs]).float().cpu()
        labels = torch.as_tensor([x["label"] for x in inputs])
        for i, hits in enumerate(topk_correct(logits, labels, self.topk)):
            self._correct[i] += hits
        self._count += len(inputs)

    def evaluate(self) -> dict[str, dict[str, float]]:
        gathered = comm.all_gather((self._correct, self._count))
        count = sum(n for _, n in gathered)
        if count == 0:
            logger.warning("ClassificationEvaluator on %s saw no images", self.dataset_name)
            return {}
        correct = [sum(c[i] for c, _ in gathered) for i in range(len(self.topk))]
        logger.info(
            "Classification on %s: %d images, %s",
            self.dataset_name,
            count,
            ", ".join(f"top-{k} {c}" for k, c in zip(self.topk, correct, strict=True)),
        )
        return {
            "classification": {
                f"top{k}": 100.0 * c / count for k, c in zip(self.topk, correct, strict=True)
            }
        }

"""``LazyScalingTrainer``: :class:`ScalingTrainer` for detectron2's LazyConfig (``.py``) configs.

Model, training data and evaluation are instantiated from the config as detectron2's
``tools/lazyconfig_train_net.py`` does (``instantiate(cfg.model)`` on ``train.device``,
``instantiate(cfg.dataloader.train)``, ``inference_on_dataset`` with ``cfg.dataloader.test`` and
``cfg.dataloader.evaluator``); the optimizer and LR schedule come from ``cfg.optimizer`` (with
``optimizer.params.model`` set) and ``cfg.lr_multiplier`` through det_scaling's builders. The
rest is :class:`ScalingTrainer`'s: the batch schedule (micro-batches, accumulation, the LR over
images seen), periods in images, checkpoints with the geometry and resume at another GPU count,
the NaN advice and the summary. The run settings are ``train.*`` (output_dir, init_checkpoint,
checkpointer, eval_period, log_period, amp, ddp).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from detectron2.config import instantiate
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from omegaconf import DictConfig

from det_scaling.engine.trainer import ScalingTrainer

__all__ = ["LazyScalingTrainer"]

logger = logging.getLogger(__name__)


class LazyScalingTrainer(ScalingTrainer):
    """:class:`ScalingTrainer` for a LazyConfig scaled by ``plan_scaling`` (see the module)."""

    @classmethod
    def build_model(cls, cfg: DictConfig) -> torch.nn.Module:
        """``instantiate(cfg.model)`` on ``train.device``."""
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        logger.info("Model:\n%s", model)
        return model

    @classmethod
    def build_train_loader(cls, cfg: DictConfig):
        """``instantiate(cfg.dataloader.train)``; called with ``total_batch_size`` set to one
        micro-batch over all processes."""
        return instantiate(cfg.dataloader.train)

    def run_loop(self) -> None:
        """The steps from ``start_iter`` to ``max_iter`` (a LazyConfig has no expected
        results)."""
        self.train_steps()

    @classmethod
    def test(cls, cfg: DictConfig, model: torch.nn.Module, evaluators: Any = None) -> dict:
        """``inference_on_dataset`` on ``cfg.dataloader.test`` with ``cfg.dataloader.evaluator``
        (nothing without an evaluator), as detectron2's ``lazyconfig_train_net``."""
        if "evaluator" not in cfg.dataloader:
            return {}
        results = inference_on_dataset(
            model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
        )
        if comm.is_main_process():
            print_csv_format(results)
        return results

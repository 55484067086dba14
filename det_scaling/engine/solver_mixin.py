"""detectron2's ``DefaultTrainer`` with det_scaling's optimizers and schedules, in one line::

class Trainer(SolverMixin, DefaultTrainer):
    pass
"""

from __future__ import annotations

from typing import Any

import torch
from detectron2.config import CfgNode

from det_scaling.engine.hooks import add_plateau_hook
from det_scaling.errors import ConfigError
from det_scaling.scaling.batch_schedule import BatchSchedule
from det_scaling.scaling.rules import RULES
from det_scaling.solver import ProgressLRScheduler, build_lr_scheduler, build_optimizer

__all__ = ["SolverMixin"]


class SolverMixin:
    """Put before ``DefaultTrainer`` (or a subclass) in the bases: the optimizer comes from
    ``OPTIMIZER_REGISTRY`` (``SOLVER.OPTIMIZER``), the scheduler from ``LR_SCHEDULER_REGISTRY``
    (``SOLVER.LR_SCHEDULER_NAME``), and with ``SOLVER.PLATEAU.ENABLED`` a ``PlateauHook`` follows
    the ``EvalHook``. A config asking for what only ``ScalingTrainer``'s step does (gradient
    accumulation, AdaScale, AdaBatch, automatic micro-batches) is refused: ``DefaultTrainer``
    would train one micro-batch per step at the LR of the whole batch."""

    runs_scaling_step = False  # ScalingTrainer: True
    cfg: Any  # set by DefaultTrainer's __init__

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        """:func:`det_scaling.solver.build_optimizer` (``SOLVER.OPTIMIZER``)."""
        if not cls.runs_scaling_step:
            _refuse_scaling_step(cfg, cls.__name__)
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(
        cls,
        cfg: CfgNode,
        optimizer: torch.optim.Optimizer,
        schedule: BatchSchedule | None = None,
    ) -> ProgressLRScheduler:
        """:func:`det_scaling.solver.build_lr_scheduler` (``SOLVER.LR_SCHEDULER_NAME``) over
        ``schedule``, the run's batch schedule (``ScalingTrainer`` passes it; without it, the
        config's)."""
        return build_lr_scheduler(cfg, optimizer, schedule)

    def build_hooks(self) -> list[Any]:
        """The base class's hooks, with a ``PlateauHook`` after the ``EvalHook`` if enabled."""
        return add_plateau_hook(self.cfg, super().build_hooks())  # type: ignore[misc]


def _refuse_scaling_step(cfg: CfgNode, trainer: str) -> None:
    scaling = cfg.get("SCALING")
    if scaling is None:
        return
    asked = []
    if scaling.get("GRAD_ACCUM_STEPS", 1) > 1:
        asked.append(f"SCALING.GRAD_ACCUM_STEPS {scaling.GRAD_ACCUM_STEPS}")
    rule = RULES.get(scaling.get("RULE"))
    if rule is not None and rule.adascale:
        asked.append("SCALING.RULE adascale")
    if scaling.get("ADABATCH") is not None and scaling.ADABATCH.get("ENABLED", False):
        asked.append("SCALING.ADABATCH.ENABLED")
    if scaling.get("AUTO_MICRO_BATCH", False):
        asked.append("SCALING.AUTO_MICRO_BATCH")
    if asked:
        raise ConfigError(
            f"{trainer} trains one micro-batch per step (DefaultTrainer's step); "
            f"{', '.join(asked)} need(s) det_scaling.engine.ScalingTrainer as the trainer's base "
            "(docs/own-code.md)"
        )

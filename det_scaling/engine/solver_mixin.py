"""detectron2's ``DefaultTrainer`` with det_scaling's optimizers and schedules, in one line::

class Trainer(SolverMixin, DefaultTrainer):
    pass
"""

from __future__ import annotations

from typing import Any

import torch
from detectron2.config import CfgNode

from det_scaling.engine.hooks import add_plateau_hook
from det_scaling.solver import ProgressLRScheduler, build_lr_scheduler, build_optimizer

__all__ = ["SolverMixin"]


class SolverMixin:
    """Put before ``DefaultTrainer`` (or a subclass) in the bases: the optimizer comes from
    ``OPTIMIZER_REGISTRY`` (``SOLVER.OPTIMIZER``), the scheduler from ``LR_SCHEDULER_REGISTRY``
    (``SOLVER.LR_SCHEDULER_NAME``), and with ``SOLVER.PLATEAU.ENABLED`` a ``PlateauHook`` follows
    the ``EvalHook``."""

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        """:func:`det_scaling.solver.build_optimizer` (``SOLVER.OPTIMIZER``)."""
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(
        cls, cfg: CfgNode, optimizer: torch.optim.Optimizer
    ) -> ProgressLRScheduler:
        """:func:`det_scaling.solver.build_lr_scheduler` (``SOLVER.LR_SCHEDULER_NAME``)."""
        return build_lr_scheduler(cfg, optimizer)

    def build_hooks(self) -> list[Any]:
        """The base class's hooks, with a ``PlateauHook`` after the ``EvalHook`` if enabled."""
        return add_plateau_hook(self.cfg, super().build_hooks())  # type: ignore[misc]

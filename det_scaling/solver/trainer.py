"""detectron2's ``DefaultTrainer`` with det_scaling's optimizers and schedules, in one line::

class Trainer(SolverMixin, DefaultTrainer):
    pass
"""

from __future__ import annotations

from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.engine import hooks

from det_scaling.solver.build import build_lr_scheduler, build_optimizer
from det_scaling.solver.lr_scheduler import ProgressLRScheduler
from det_scaling.solver.plateau import PlateauHook

__all__ = ["SolverMixin", "add_plateau_hook"]


class SolverMixin:
    """Put before ``DefaultTrainer`` (or a subclass) in the bases: builds the optimizer from
    ``OPTIMIZER_REGISTRY`` (``SOLVER.OPTIMIZER``), the scheduler from ``LR_SCHEDULER_REGISTRY``
    (``SOLVER.LR_SCHEDULER_NAME``), and, when ``SOLVER.PLATEAU.ENABLED``, adds a
    :class:`PlateauHook` right after the ``EvalHook``."""

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
        """The base class's hooks, with :class:`PlateauHook` after ``EvalHook`` if enabled."""
        return add_plateau_hook(self.cfg, super().build_hooks())  # type: ignore[misc]


def add_plateau_hook(cfg: CfgNode, hook_list: list[Any]) -> list[Any]:
    """``hook_list`` with a :class:`PlateauHook` after its last ``EvalHook`` (at the end when it
    has none) when ``SOLVER.PLATEAU.ENABLED``; the list unchanged otherwise."""
    if not cfg.SOLVER.PLATEAU.ENABLED:
        return hook_list
    plateau_hook = PlateauHook(cfg.TEST.EVAL_PERIOD, cfg.SOLVER.PLATEAU.METRIC)
    eval_positions = [i for i, h in enumerate(hook_list) if isinstance(h, hooks.EvalHook)]
    position = eval_positions[-1] + 1 if eval_positions else len(hook_list)
    return [*hook_list[:position], plateau_hook, *hook_list[position:]]

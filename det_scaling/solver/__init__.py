"""Optimizers (SGD, LARS, LARC, AdamW) and LR schedules chosen by name from the config.

:func:`build_optimizer` and :func:`build_lr_scheduler` replace detectron2's builders of the same
name (:class:`det_scaling.engine.SolverMixin` plugs them into a ``DefaultTrainer``). See
:mod:`.build` for the registries, :mod:`.lars` for the optimizer, :mod:`.schedules` and
:mod:`.plateau` for the schedules. Nothing here depends on a trainer.
"""

from det_scaling.solver.build import (
    LR_SCHEDULER_REGISTRY,
    OPTIMIZER_REGISTRY,
    bias_and_norm_parameters,
    build_lr_multiplier,
    build_lr_scheduler,
    build_optimizer,
    lars_param_groups,
    lars_params,
    scheduled_lrs,
)
from det_scaling.solver.lars import LARS
from det_scaling.solver.lr_scheduler import ProgressLRScheduler
from det_scaling.solver.plateau import Plateau

__all__ = [
    "LARS",
    "LR_SCHEDULER_REGISTRY",
    "OPTIMIZER_REGISTRY",
    "Plateau",
    "ProgressLRScheduler",
    "bias_and_norm_parameters",
    "build_lr_multiplier",
    "build_lr_scheduler",
    "build_optimizer",
    "lars_param_groups",
    "lars_params",
    "scheduled_lrs",
]

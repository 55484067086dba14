"""det-scaling: scale detectron2 training across GPU counts without hand-editing configs.

Importing the package applies the documented detectron2 compatibility layer
(:mod:`det_scaling.compat`) and nothing else.
"""

import warnings

from det_scaling import compat

# fvcore and detectron2 call torch.jit.script on import, which recent torch answers with a
# FutureWarning per call: noise on every command's stderr about code the user cannot change.
# Silenced only while this package imports them; the user's own torch.jit.script still warns.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)
    compat.apply()

    from det_scaling.config import add_scaling_config, get_cfg, load_cfg
    from det_scaling.engine import PlateauHook, SolverMixin
    from det_scaling.scaling.batch_schedule import BatchSchedule
    from det_scaling.scaling.critical_batch import CriticalBatchFit, fit_critical_batch
    from det_scaling.scaling.plan import Change, ScalingPlan, plan_scaling, scale_cfg
    from det_scaling.solver import (
        LARS,
        LR_SCHEDULER_REGISTRY,
        OPTIMIZER_REGISTRY,
        ProgressLRScheduler,
        build_lr_scheduler,
        build_optimizer,
    )

__version__ = "0.1.0"

__all__ = [
    "LARS",
    "LR_SCHEDULER_REGISTRY",
    "OPTIMIZER_REGISTRY",
    "BatchSchedule",
    "Change",
    "CriticalBatchFit",
    "PlateauHook",
    "ProgressLRScheduler",
    "ScalingPlan",
    "SolverMixin",
    "add_scaling_config",
    "build_lr_scheduler",
    "build_optimizer",
    "fit_critical_batch",
    "get_cfg",
    "load_cfg",
    "plan_scaling",
    "scale_cfg",
]

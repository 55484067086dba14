"""det-scaling: scale detectron2 training across GPU counts without hand-editing configs.

Importing the package applies the documented detectron2 compatibility layer
(:mod:`det_scaling.compat`) and nothing else.
"""

from det_scaling import compat

compat.apply()

from det_scaling.batch_schedule import BatchSchedule  # noqa: E402
from det_scaling.config import add_scaling_config, get_cfg, load_cfg  # noqa: E402
from det_scaling.engine import PlateauHook, SolverMixin  # noqa: E402
from det_scaling.scaling import Change, ScalingPlan, plan_scaling, scale_cfg  # noqa: E402
from det_scaling.solver import (  # noqa: E402
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
    "PlateauHook",
    "ProgressLRScheduler",
    "ScalingPlan",
    "SolverMixin",
    "add_scaling_config",
    "build_lr_scheduler",
    "build_optimizer",
    "get_cfg",
    "load_cfg",
    "plan_scaling",
    "scale_cfg",
]

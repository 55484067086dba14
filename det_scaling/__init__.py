"""det-scaling: scale detectron2 training across GPU counts without hand-editing configs.

Importing the package installs the documented detectron2 compatibility layer
(:mod:`det_scaling.compat`) and nothing else: torch and detectron2 load when a name that needs
them is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from det_scaling import compat

compat.install()

__version__ = "0.1.0"

# Each public name, and the module that holds it.
_PUBLIC = {
    "LARS": "det_scaling.solver",
    "LR_SCHEDULER_REGISTRY": "det_scaling.solver",
    "OPTIMIZER_REGISTRY": "det_scaling.solver",
    "BatchSchedule": "det_scaling.scaling.batch_schedule",
    "Change": "det_scaling.scaling.plan",
    "CriticalBatchFit": "det_scaling.scaling.critical_batch",
    "PlateauHook": "det_scaling.engine",
    "ProgressLRScheduler": "det_scaling.solver",
    "ScalingPlan": "det_scaling.scaling.plan",
    "SolverMixin": "det_scaling.engine",
    "add_scaling_config": "det_scaling.config",
    "build_lr_scheduler": "det_scaling.solver",
    "build_optimizer": "det_scaling.solver",
    "fit_critical_batch": "det_scaling.scaling.critical_batch",
    "get_cfg": "det_scaling.config",
    "load_cfg": "det_scaling.config",
    "plan_scaling": "det_scaling.scaling.plan",
    "scale_cfg": "det_scaling.scaling.plan",
}

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


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'det_scaling' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from det_scaling.config import (
        add_scaling_config,
        get_cfg,
        load_cfg,
    )
    from det_scaling.engine import PlateauHook, SolverMixin
    from det_scaling.scaling.batch_schedule import BatchSchedule
    from det_scaling.scaling.critical_batch import (
        CriticalBatchFit,
        fit_critical_batch,
    )
    from det_scaling.scaling.plan import (
        Change,
        ScalingPlan,
        plan_scaling,
        scale_cfg,
    )
    from det_scaling.solver import (
        LARS,
        LR_SCHEDULER_REGISTRY,
        OPTIMIZER_REGISTRY,
        ProgressLRScheduler,
        build_lr_scheduler,
        build_optimizer,
    )

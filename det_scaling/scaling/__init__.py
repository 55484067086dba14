"""The scaling math, free of processes and formats: rules and plans, the batch schedule in images
seen, and the gradient-noise statistics that say where a rule holds."""

from det_scaling.scaling.batch_schedule import BatchSchedule
from det_scaling.scaling.critical_batch import CriticalBatchFit, epochs_factor, fit_critical_batch
from det_scaling.scaling.plan import Change, ScalingPlan, adascale_scale, plan_scaling, scale_cfg
from det_scaling.scaling.rules import (
    ADASCALE_RULE,
    AUTO_RULE,
    IMAGES_SCHEDULE,
    NOISE_SCHEDULE,
    RULES,
    ScalingRule,
    choose_rule,
    is_adam_like,
    rule_of,
)

__all__ = [
    "ADASCALE_RULE",
    "AUTO_RULE",
    "IMAGES_SCHEDULE",
    "NOISE_SCHEDULE",
    "RULES",
    "BatchSchedule",
    "Change",
    "CriticalBatchFit",
    "ScalingPlan",
    "ScalingRule",
    "adascale_scale",
    "choose_rule",
    "epochs_factor",
    "fit_critical_batch",
    "is_adam_like",
    "plan_scaling",
    "rule_of",
    "scale_cfg",
]

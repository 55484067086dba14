"""The trainer engine shared by tasks: detectron2's trainer, hooks and writers, scaled.

* :class:`ScalingTrainer`: ``DefaultTrainer`` for scaled configs (CPU/gloo or CUDA/NCCL, gradient
  accumulation, det_scaling's optimizer and schedules, resume at another GPU count, NaN advice,
  a final summary);
* :class:`AccumulatingTrainer`: the step with gradient accumulation;
* :class:`ScalingProgress`: the hook that counts images seen and checkpoints the run's scale.
"""

from det_scaling.engine.accumulation import (
    AccumulatingTrainer,
    micro_batch_cfg,
    micro_batch_per_process,
)
from det_scaling.engine.resume import ScalingProgress, move_schedule
from det_scaling.engine.trainer import ScalingTrainer, check_scaled, format_summary, nan_advice

__all__ = [
    "AccumulatingTrainer",
    "ScalingProgress",
    "ScalingTrainer",
    "check_scaled",
    "format_summary",
    "micro_batch_cfg",
    "micro_batch_per_process",
    "move_schedule",
    "nan_advice",
]

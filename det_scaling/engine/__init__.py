"""The trainer engine shared by tasks: detectron2's trainer, hooks and writers, scaled.

* :class:`Run`: a config resolved once for the world size; :func:`build_step`: its step;
* :class:`ScalingTrainer`: ``DefaultTrainer``'s interface for scaled configs (CPU/gloo or
  CUDA/NCCL, the batch schedule, det_scaling's optimizers and schedules, resume at another GPU
  count, NaN advice, a final summary);
* :class:`LazyScalingTrainer`: the same for detectron2's LazyConfig (``.py``) configs;
* :class:`AccumulatingTrainer`: the step with gradient accumulation, read by observers;
* :class:`GradientNoiseMeter`, :class:`NoiseScaleHook`: the gradient noise scale in training;
* :mod:`.hooks`: progress in images, periods in images, reduce-on-plateau;
* :mod:`.resume`: the one conversion from a checkpoint to this run's step;
* :class:`SafeCheckpointer`: atomic checkpoints, resume from the newest readable one;
* :class:`SolverMixin`: det_scaling's optimizers and schedules in any ``DefaultTrainer``.
"""

from det_scaling.engine.accumulation import AccumulatingTrainer, GradientObserver, micro_batch_cfg
from det_scaling.engine.checkpoint import SafeCheckpointer, UnreadableCheckpointError
from det_scaling.engine.gradient_noise import GradientNoiseMeter, NoiseScaleHook, StepNorms
from det_scaling.engine.hooks import (
    ImagePeriodHook,
    PlateauHook,
    ScalingProgress,
    add_plateau_hook,
)
from det_scaling.engine.lazy_trainer import LazyScalingTrainer
from det_scaling.engine.resume import ResumePoint, place_scheduler, resume_point
from det_scaling.engine.run import Run, check_scaled
from det_scaling.engine.solver_mixin import SolverMixin
from det_scaling.engine.step import Step, build_step
from det_scaling.engine.summary import format_summary
from det_scaling.engine.trainer import ScalingTrainer, nan_advice

__all__ = [
    "AccumulatingTrainer",
    "GradientNoiseMeter",
    "GradientObserver",
    "ImagePeriodHook",
    "LazyScalingTrainer",
    "NoiseScaleHook",
    "PlateauHook",
    "ResumePoint",
    "Run",
    "SafeCheckpointer",
    "ScalingProgress",
    "ScalingTrainer",
    "SolverMixin",
    "Step",
    "StepNorms",
    "UnreadableCheckpointError",
    "add_plateau_hook",
    "build_step",
    "check_scaled",
    "format_summary",
    "micro_batch_cfg",
    "nan_advice",
    "place_scheduler",
    "resume_point",
]

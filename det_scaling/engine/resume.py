"""Resuming: the one conversion from a checkpoint to this run's step, and the LR schedule there.

A checkpoint records the images seen and the geometry of the run that wrote it
(:class:`~det_scaling.engine.hooks.ScalingProgress`). :func:`resume_point` turns that into the step
this run continues at: the step of *this* run's batch schedule nearest to the same images seen.
What follows from it, and nothing else, is the trainer's iteration, the LR schedule's position
(:func:`place_scheduler`, with this run's base LRs) and the images counted.

What a changed config means on resume:

* same batch at every step (same GPU count and accumulation), MAX_ITER or STEPS changed: the run
  continues at the same iteration on the new schedule, as detectron2 does;
* another total batch (another GPU count, rescaled by ``plan_scaling``), with or without a
  changed schedule: it continues at the same images seen, hence the same epoch, on this run's
  schedule and base LR. With the linear rule the LR per image is what is continuous;
* another total batch under ``SCALING.SCHEDULE noise``, whose length depends on the batch: it
  continues at the same fraction of the schedule, the progress the critical-batch law counts
  (a run at batch B needs its own epochs factor times the images for the same progress). The
  images seen are then counted as this run's schedule would have seen them up to there.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from det_scaling.errors import ConfigError
from det_scaling.scaling.batch_schedule import BatchSchedule

__all__ = ["ResumePoint", "place_scheduler", "resume_point"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run continues: after ``iteration`` steps that saw ``images_seen`` images
    (kept exactly, not rounded to whole steps). ``converted_from`` is the checkpoint's state when
    its batch differed from this run's at some step, else None."""

    iteration: int
    images_seen: int
    converted_from: dict[str, Any] | None


def resume_point(
    saved: dict[str, Any] | None,
    schedule: BatchSchedule,
    checkpoint_steps: int,
    *,
    same_fraction: bool = False,
) -> ResumePoint:
    """The step this run continues at, from a checkpoint's ``ScalingProgress`` state ``saved``
    written after ``checkpoint_steps`` steps. A checkpoint without that state (a plain detectron2
    trainer) is taken as written at this run's batch. With ``same_fraction`` (the ``noise``
    schedule), a checkpoint of another batch continues at the same fraction of the schedule."""
    if saved is None:
        logger.warning(
            "The checkpoint has no ScalingProgress state (not written by det_scaling's trainer): "
            "assuming it was written at this run's batch (%d images/step)",
            schedule.ims_per_batch,
        )
        return ResumePoint(checkpoint_steps, schedule.images_at_iteration(checkpoint_steps), None)
    images = int(saved["images_seen"])
    converted = not schedule.same_steps_as(saved)
    saved_length = saved["max_iter"] * saved["ims_per_batch"]
    if same_fraction and converted and saved_length != schedule.total_images:
        fraction = images / saved_length
        logger.info(
            "The noise schedule: the checkpoint is %.4g of its schedule (%d of %d images); "
            "continuing at the same fraction of this run's %d images",
            fraction,
            images,
            saved_length,
            schedule.total_images,
        )
        images = round(fraction * schedule.total_images)
    iteration = schedule.iteration_for_images(images)
    if converted:
        logger.info(
            "Resuming a run of %d process(es), total batch %d, after %d steps and %d images%s; "
            "here the total batch is %d (%d process(es) x %d accumulated): continuing at step %d "
            "of %d on this run's schedule and base LR (the checkpoint's base LR: %g)",
            saved["world_size"],
            saved["ims_per_batch"],
            checkpoint_steps,
            images,
            _epochs(schedule, images),
            schedule.ims_per_batch,
            schedule.world_size,
            schedule.grad_accum_steps,
            iteration,
            schedule.total_iterations,
            saved.get("base_lr", float("nan")),
        )
    if saved_length != schedule.total_images:
        logger.info(
            "The schedule was %d images (%d steps x %d) and is %d images (%d x %d) now: "
            "continuing at step %d on the new schedule",
            saved_length,
            saved["max_iter"],
            saved["ims_per_batch"],
            schedule.total_images,
            schedule.schedule_iters,
            schedule.ims_per_batch,
            iteration,
        )
    return ResumePoint(iteration, images, dict(saved) if converted else None)


def place_scheduler(
    scheduler: Any,
    optimizer: torch.optim.Optimizer,
    base_lrs: Sequence[float],
    iteration: int,
) -> None:
    """Puts ``scheduler`` and ``optimizer`` at step ``iteration`` of this run's schedule, with
    ``base_lrs`` (one per param group, this run's) instead of any a checkpoint restored.

    For schedulers whose LR is a function of the step (detectron2's ``LRMultiplier`` and
    det_scaling's ``ProgressLRScheduler``) and for fvcore ``ParamScheduler`` objects, from which
    detectron2's ``LRScheduler`` hook builds one at ``trainer.iter`` and ``initial_lr``.
    """
    if len(base_lrs) != len(optimizer.param_groups):
        raise ConfigError(
            f"{len(base_lrs)} base LRs for {len(optimizer.param_groups)} optimizer param groups"
        )
    for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
        group["initial_lr"] = base_lr
    if not isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
        return
    scheduler.base_lrs = list(base_lrs)
    # step() advances last_epoch by one and writes the LR of that step into every param group.
    scheduler.last_epoch = iteration - 1
    with warnings.catch_warnings():
        # "lr_scheduler.step() before optimizer.step()": intended, no optimizer step is skipped.
        warnings.simplefilter("ignore", UserWarning)
        scheduler.step()


def _epochs(schedule: BatchSchedule, images: int) -> str:
    epochs = schedule.epochs(images)
    return "" if epochs is None else f" ({epochs:.4g} epochs)"

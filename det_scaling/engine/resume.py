"""What a checkpoint records about the run's scale, and resuming at another GPU count.

:class:`ScalingProgress` is a hook whose state goes into every checkpoint (detectron2 saves each
hook's ``state_dict`` with the trainer's): the images seen, the world size, the total batch
(``SOLVER.IMS_PER_BATCH``), ``SCALING.GRAD_ACCUM_STEPS`` and the schedule (``SOLVER.MAX_ITER``).

Resuming with another total batch (another GPU count, scaled by ``plan_scaling``) converts the
iteration with :func:`det_scaling.progress.iterations_for_images`: training continues after the
same number of images, hence at the same epoch, on the new schedule. :func:`move_schedule` then
puts the LR schedule at that iteration with the *new* base LRs. What is continuous:

* the schedule's multiplier (warmup, steps, cosine... relative to the base LR): schedules are
  functions of ``iteration / MAX_ITER`` and the scaled ``MAX_ITER`` covers the same images, so at
  the same images seen the multiplier is the same (up to rounding images to whole iterations);
* the base LR is the new config's, i.e. the reference LR scaled by ``SCALING.RULE`` for the new
  total batch; the old run's base LR, which the checkpoint's optimizer and scheduler states carry,
  is never used again. With the linear rule the LR *per image of the batch* is what is continuous:
  twice the GPUs, twice the batch, twice the LR, at the same point of the schedule.

With AdaBatch (``SCALING.ADABATCH.ENABLED``, :mod:`det_scaling.adabatch`) the batch changes at
fixed images seen: the images of a step are those of its stage, the checkpoint also holds the
stage (its batch, accumulation and LR factor, and the first step of every stage, which identifies
the schedule), and a resume with another starting batch or other stages converts the images seen
to a step of *this* run's stages. The stage, its accumulation and LR factor are then recomputed
from the step; the saved ones are a record (a difference is logged).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.engine import HookBase

from det_scaling.adabatch import AdaBatchStage, adabatch_schedule
from det_scaling.progress import epochs_seen, images_seen, iterations_for_images

__all__ = ["ScalingProgress", "move_schedule"]

logger = logging.getLogger(__name__)


class ScalingProgress(HookBase):
    """Counts the images seen and checkpoints the run's scale; converts the iteration on resume.

    Register it before the checkpointer, so the state a checkpoint saves includes the step just
    done. Its checkpoint key is the class name, ``ScalingProgress``: keep the name.
    """

    def __init__(self, cfg: CfgNode, world_size: int) -> None:
        self.world_size = world_size
        self.ims_per_batch = int(cfg.SOLVER.IMS_PER_BATCH)
        self.grad_accum_steps = int(cfg.SCALING.GRAD_ACCUM_STEPS)
        self.max_iter = int(cfg.SOLVER.MAX_ITER)
        self.base_lr = float(cfg.SOLVER.BASE_LR)
        self.dataset_size = int(cfg.SCALING.DATASET_SIZE)
        # The stages when the batch grows (AdaBatch), else None. ims_per_batch is then the
        # starting batch, and max_iter x ims_per_batch still the images of the schedule.
        self.adabatch = adabatch_schedule(cfg)
        # Steps done and images seen where this process's training (re)started; images are kept
        # exactly, because a converted iteration rounds them to whole steps.
        self.start_iter = 0
        self.images_at_start = 0
        self.iterations_done = 0
        self.loaded_state: dict[str, Any] | None = None  # the checkpoint's, before conversion
        # The checkpoint's state when resume_from converted the iteration (the batch changed).
        self.resumed_from: dict[str, Any] | None = None
        self.train_seconds = 0.0
        self._train_start: float | None = None

    # ---- counting ----
    @property
    def images_seen(self) -> int:
        """Images consumed by all processes together, over the whole run (resumes included)."""
        return self.images_at_start + self._images_between(self.start_iter, self.iterations_done)

    @property
    def epochs_seen(self) -> float | None:
        """Epochs consumed, or None when ``SCALING.DATASET_SIZE`` is unknown (0)."""
        if self.dataset_size <= 0:
            return None
        return epochs_seen(self.images_seen, 1, self.dataset_size)

    @property
    def stage(self) -> AdaBatchStage | None:
        """The AdaBatch stage of the next step (None without AdaBatch)."""
        if self.adabatch is None:
            return None
        return self.adabatch.stage_at_iteration(self.iterations_done)

    def _images_between(self, start: int, end: int) -> int:
        """Images of the steps ``start`` .. ``end - 1`` of this run's schedule."""
        if self.adabatch is None:
            return images_seen(end - start, self.ims_per_batch)
        return self.adabatch.images_at_iteration(end) - self.adabatch.images_at_iteration(start)

    def _iteration_for_images(self, images: int) -> int:
        if self.adabatch is None:
            return iterations_for_images(images, self.ims_per_batch)
        return self.adabatch.iteration_for_images(images)

    def _adabatch_state(self) -> dict[str, Any] | None:
        stage = self.stage
        if stage is None:
            return None
        return {
            "stage": stage.index,
            "ims_per_batch": stage.ims_per_batch,
            "grad_accum_steps": stage.grad_accum_steps,
            "lr_factor": stage.lr_factor,
            "stage_starts": list(self.adabatch.stage_starts),
            "max_iter": self.adabatch.total_iterations,
        }

    def start_at(self, iterations_done: int, images_seen: int) -> None:
        """Training (re)starts after ``iterations_done`` steps that saw ``images_seen`` images."""
        self.start_iter = self.iterations_done = iterations_done
        self.images_at_start = images_seen

    def before_train(self) -> None:
        self._train_start = time.perf_counter()

    def after_step(self) -> None:
        self.iterations_done = self.trainer.iter + 1
        self.trainer.storage.put_scalar("images_seen", self.images_seen, smoothing_hint=False)
        if self.epochs_seen is not None:
            self.trainer.storage.put_scalar("epoch", self.epochs_seen, smoothing_hint=False)
        # Measured up to the last step, so the final evaluation is not counted as training time.
        self.train_seconds = time.perf_counter() - self._train_start

    # ---- checkpointing ----
    def state_dict(self) -> dict[str, Any]:
        """The run's scale after the last step. With AdaBatch, also ``"adabatch"``: the stage of
        the next step (``stage``, ``ims_per_batch``, ``grad_accum_steps``, ``lr_factor``), the
        first step of every stage (``stage_starts``) and the steps of the run (``max_iter``);
        the top-level ``ims_per_batch`` and ``max_iter`` keep their meaning: the starting batch
        and the schedule's length in steps of it."""
        state = {
            "images_seen": self.images_seen,
            "iteration": self.iterations_done,  # steps done (detectron2 stores the last index)
            "world_size": self.world_size,
            "ims_per_batch": self.ims_per_batch,
            "grad_accum_steps": self.grad_accum_steps,
            "max_iter": self.max_iter,
            "base_lr": self.base_lr,
            "dataset_size": self.dataset_size,
        }
        if self.adabatch is not None:
            state["adabatch"] = self._adabatch_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Only kept here: the trainer converts once everything else is loaded (resume_from).
        self.loaded_state = dict(state_dict)

    def resume_from(self, iterations_done: int) -> int:
        """After detectron2 loaded a checkpoint whose trainer had done ``iterations_done`` steps:
        the steps this run has done at the same images seen (the iteration to start at). Records
        the conversion in :attr:`resumed_from`."""
        saved, self.loaded_state = self.loaded_state, None
        self.resumed_from = None
        if saved is None:
            logger.warning(
                "The checkpoint has no ScalingProgress state (not written by det_scaling's "
                "trainer): assuming it was written with this run's total batch (%d)",
                self.ims_per_batch,
            )
            self.start_at(iterations_done, self._images_between(0, iterations_done))
            return iterations_done
        images = int(saved["images_seen"])
        saved_stages = (saved.get("adabatch") or {}).get("stage_starts")
        our_stages = None if self.adabatch is None else list(self.adabatch.stage_starts)
        if saved["ims_per_batch"] == self.ims_per_batch and saved_stages == our_stages:
            converted = iterations_done
        else:
            converted = self._iteration_for_images(images)
            self.resumed_from = saved
            epochs = (
                f" ({epochs_seen(images, 1, self.dataset_size):.4g} epochs)"
                if self.dataset_size > 0
                else ""
            )
            logger.info(
                "Resuming a run of %d process(es) x %d accumulated, total batch %d, at step %d "
                "of %d after %d images%s; here the total batch is %d (%d process(es) x %d "
                "accumulated): continuing at step %d of %d, same images seen, LR on this run's "
                "schedule and base LR (%g, was %g)",
                saved["world_size"],
                saved["grad_accum_steps"],
                saved["ims_per_batch"],
                iterations_done,
                (saved.get("adabatch") or {}).get("max_iter", saved["max_iter"]),
                images,
                epochs,
                self.ims_per_batch,
                self.world_size,
                self.grad_accum_steps,
                converted,
                self.max_iter if self.adabatch is None else self.adabatch.total_iterations,
                self.base_lr,
                saved["base_lr"],
            )
            if saved_stages != our_stages:
                logger.info(
                    "AdaBatch stages (first steps) were %s, here %s: the step is converted by "
                    "images seen",
                    saved_stages,
                    our_stages,
                )
            at_step = self._images_between(0, converted)
            if at_step != images:
                logger.info(
                    "%d images are not a whole number of steps: %d images are counted seen at "
                    "step %d",
                    images,
                    at_step,
                    converted,
                )
        schedule_images = saved["max_iter"] * saved["ims_per_batch"]
        if schedule_images != self.max_iter * self.ims_per_batch:
            logger.warning(
                "The checkpoint's schedule was %d images (%d steps x %d); this run's is %d "
                "(%d x %d): was the config changed between the runs?",
                schedule_images,
                saved["max_iter"],
                saved["ims_per_batch"],
                self.max_iter * self.ims_per_batch,
                self.max_iter,
                self.ims_per_batch,
            )
        self.start_at(converted, images)
        self._log_stage(saved.get("adabatch"))
        return converted

    def _log_stage(self, saved: dict[str, Any] | None) -> None:
        """Logs the AdaBatch stage a resumed run continues in, and whether it differs from the
        checkpoint's (another GPU count has another starting batch, so other batches; the stage
        index and LR factor differ only near a boundary, or when the config changed)."""
        stage = self.stage
        if stage is None:
            return
        logger.info(
            "AdaBatch: resuming in stage %d of %d at step %d: total batch %d (%d micro-batch(es) "
            "per step), LR x%g",
            stage.index,
            len(self.adabatch.stages),
            self.iterations_done,
            stage.ims_per_batch,
            stage.grad_accum_steps,
            stage.lr_factor,
        )
        if saved is not None and (saved["stage"], saved["lr_factor"]) != (
            stage.index,
            stage.lr_factor,
        ):
            logger.info(
                "The checkpoint was in AdaBatch stage %d (LR x%g); this run's stages put the same "
                "images in stage %d (LR x%g): stage boundaries round to whole steps of each run's "
                "batch, or SCALING.ADABATCH changed between the runs",
                saved["stage"],
                saved["lr_factor"],
                stage.index,
                stage.lr_factor,
            )


def move_schedule(
    scheduler: Any,
    optimizer: torch.optim.Optimizer,
    base_lrs: Sequence[float],
    iterations_done: int,
) -> None:
    """Puts ``scheduler`` and ``optimizer`` at step ``iterations_done`` of this run's schedule,
    with ``base_lrs`` (one per param group: this run's, as built from its config) instead of the
    base LRs a checkpoint restored.

    Works for the schedules detectron2 and det_scaling build: torch LR schedulers whose LR is a
    function of the step (``get_lr`` in closed form, such as detectron2's ``LRMultiplier``), and
    fvcore ``ParamScheduler`` objects, from which detectron2's ``LRScheduler`` hook builds an
    ``LRMultiplier`` at ``trainer.iter`` and ``initial_lr``. Schedules that compute each LR from
    the previous one (torch's ``StepLR``) would continue from a wrong value.
    """
    if len(base_lrs) != len(optimizer.param_groups):
        raise ValueError(
            f"{len(base_lrs)} base LRs for {len(optimizer.param_groups)} optimizer param groups"
        )
    for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
        group["initial_lr"] = base_lr
    if not isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
        return
    scheduler.base_lrs = list(base_lrs)
    # step() advances last_epoch by one and writes the LR of that step into every param group.
    scheduler.last_epoch = iterations_done - 1
    with warnings.catch_warnings():
        # "lr_scheduler.step() before optimizer.step()": intended, no optimizer step is skipped.
        warnings.simplefilter("ignore", UserWarning)
        scheduler.step()

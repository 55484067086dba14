"""AdaBatch: the total batch grows at fixed image counts while the LR takes its own factor.

Devarakonda, Naumov and Garland (2017) multiply the batch by 2 and the LR by 0.75 every 20 of 100
epochs (batch 128 -> 2048) instead of decaying the LR alone. Here the growth is written in epochs
(``SCALING.ADABATCH.*``), so it is a change of batch at fixed images seen, the one measure of
progress the toolkit uses (:mod:`det_scaling.progress`), and it composes with ``scale_cfg``: the
stages multiply whatever batch, accumulation and LR the scaled config starts with.

The batch grows by gradient accumulation: each GPU's micro-batch stays the same (memory does not
grow), and stage ``k`` accumulates ``GRAD_ACCUM_STEPS x BATCH_FACTOR ** k`` micro-batches per
optimizer step. The run covers the images of the config's schedule, ``SOLVER.MAX_ITER x
IMS_PER_BATCH``, in fewer optimizer steps: :attr:`AdaBatchSchedule.total_iterations`.

Everything here is arithmetic on integers (images, steps): no torch, no detectron2 engine. The
engine (:mod:`det_scaling.engine.adabatch`) applies it; ``plan`` and ``lr-plot`` print and draw it.
"""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass

from detectron2.config import CfgNode

from det_scaling.progress import images_seen, iterations_for_images

__all__ = ["AdaBatchSchedule", "AdaBatchStage", "adabatch_schedule"]


@dataclass(frozen=True)
class AdaBatchStage:
    """One stage of constant batch: optimizer steps ``start_iter`` .. ``end_iter - 1``."""

    index: int  # 0 for the starting batch; the batch has grown ``index`` times
    start_iter: int  # optimizer steps done before the stage
    num_iters: int
    start_images: int  # images seen before the stage (by the run's actual steps)
    ims_per_batch: int  # total images per optimizer step in this stage
    grad_accum_steps: int  # micro-batches per optimizer step in this stage
    lr_factor: float  # multiplies the scheduled LR in this stage

    @property
    def end_iter(self) -> int:
        return self.start_iter + self.num_iters

    @property
    def end_images(self) -> int:
        return self.start_images + images_seen(self.num_iters, self.ims_per_batch)


class AdaBatchSchedule:
    """The stages of an AdaBatch run and the maps between its optimizer steps and images seen.

    ``ims_per_batch`` and ``grad_accum_steps`` are the starting batch and accumulation (the
    scaled config's); ``total_images`` the run's length in images; a stage starts every
    ``interval_images`` images, up to ``max_stages`` stages (0: no limit; the last stage lasts to
    the end). Stage ``k`` has ``batch_factor ** k`` times the batch and accumulation and
    ``lr_factor ** k`` times the LR.

    Stage boundaries are whole optimizer steps: stage ``k`` takes the number of its steps that
    ends nearest to its planned boundary ``(k + 1) x interval_images`` (ties to even), counted
    from where stage ``k - 1`` actually ended, so rounding never accumulates. A final remainder
    no longer than half a step of the next batch goes to the previous stage (no stage of 0
    steps, no images dropped).
    """

    def __init__(
        self,
        *,
        ims_per_batch: int,
        grad_accum_steps: int,
        total_images: int,
        interval_images: int,
        batch_factor: int,
        lr_factor: float,
        max_stages: int = 0,
    ) -> None:
        _check("SOLVER.IMS_PER_BATCH", ims_per_batch >= 1, ims_per_batch, "must be positive")
        _check("SCALING.GRAD_ACCUM_STEPS", grad_accum_steps >= 1, grad_accum_steps, "must be >= 1")
        _check("SOLVER.MAX_ITER", total_images >= 1, total_images, "(in images) must be positive")
        _check(
            "SCALING.ADABATCH.INTERVAL_EPOCHS",
            interval_images >= 1,
            interval_images,
            "(in images) must be positive",
        )
        _check("SCALING.ADABATCH.BATCH_FACTOR", batch_factor >= 1, batch_factor, "must be >= 1")
        _check("SCALING.ADABATCH.LR_FACTOR", lr_factor > 0, lr_factor, "must be > 0")
        _check("SCALING.ADABATCH.MAX_STAGES", max_stages >= 0, max_stages, "must be >= 0")
        self.ims_per_batch = ims_per_batch
        self.grad_accum_steps = grad_accum_steps
        self.total_images = total_images
        self.interval_images = interval_images
        self.batch_factor = batch_factor
        self.lr_factor = lr_factor
        self.max_stages = max_stages
        self.stages = self._build_stages()
        # The first step of each stage: with the starting batch, it identifies the schedule.
        self.stage_starts = tuple(stage.start_iter for stage in self.stages)

    @classmethod
    def from_cfg(cls, cfg: CfgNode) -> AdaBatchSchedule:
        """The schedule of a config (scaled for its run) with ``SCALING.ADABATCH.ENABLED``: it
        starts at ``SOLVER.IMS_PER_BATCH`` with ``SCALING.GRAD_ACCUM_STEPS``, and covers
        ``SOLVER.MAX_ITER x IMS_PER_BATCH`` images. Raises ``ValueError`` naming the key."""
        adabatch = cfg.SCALING.ADABATCH
        dataset_size = cfg.SCALING.DATASET_SIZE
        if dataset_size <= 0:
            raise ValueError(
                "SCALING.ADABATCH.INTERVAL_EPOCHS: AdaBatch grows the batch every so many epochs, "
                "which needs SCALING.DATASET_SIZE (images per epoch); set it, or let the trainer "
                "fill it in from the registered data set"
            )
        batch = cfg.SOLVER.IMS_PER_BATCH
        return cls(
            ims_per_batch=batch,
            grad_accum_steps=cfg.SCALING.GRAD_ACCUM_STEPS,
            total_images=images_seen(cfg.SOLVER.MAX_ITER, batch),
            interval_images=round(adabatch.INTERVAL_EPOCHS * dataset_size),
            batch_factor=adabatch.BATCH_FACTOR,
            lr_factor=adabatch.LR_FACTOR,
            max_stages=adabatch.MAX_STAGES,
        )

    def _build_stages(self) -> tuple[AdaBatchStage, ...]:
        # One stage per interval that starts before the end, MAX_STAGES at most.
        count = -(-self.total_images // self.interval_images)
        if self.max_stages:
            count = min(count, self.max_stages)
        stages: list[AdaBatchStage] = []
        start_iter = start_images = 0
        for index in range(count):
            last = index == count - 1
            planned_end = self.total_images if last else (index + 1) * self.interval_images
            growth = self.batch_factor**index
            batch = self.ims_per_batch * growth
            num_iters = iterations_for_images(planned_end - start_images, batch)
            if num_iters < 1:
                if last and stages:
                    # Half a step of the grown batch or less is left: the previous stage lasts
                    # to the end instead, rather than dropping those images.
                    stages[-1] = _extended(stages[-1], self.total_images)
                    break
                raise ValueError(
                    f"SCALING.ADABATCH.INTERVAL_EPOCHS: stage {index} has "
                    f"{planned_end - start_images} images, less than half a step of its batch of "
                    f"{batch}; lengthen the interval or use a smaller BATCH_FACTOR or MAX_STAGES"
                )
            stage = AdaBatchStage(
                index=index,
                start_iter=start_iter,
                num_iters=num_iters,
                start_images=start_images,
                ims_per_batch=batch,
                grad_accum_steps=self.grad_accum_steps * growth,
                lr_factor=self.lr_factor**index,
            )
            stages.append(stage)
            start_iter, start_images = stage.end_iter, stage.end_images
        return tuple(stages)

    # ---- the whole run ----
    @property
    def total_iterations(self) -> int:
        """Optimizer steps of the whole run: the sum of the stages' (the engine's MAX_ITER)."""
        return self.stages[-1].end_iter

    @property
    def final_images(self) -> int:
        """Images seen after the last step (``total_images`` up to rounding to whole steps)."""
        return self.stages[-1].end_images

    # ---- steps <-> images ----
    def stage_at_iteration(self, iteration: int) -> AdaBatchStage:
        """The stage of the optimizer step of index ``iteration`` (steps before it: ``iteration``);
        the last stage from ``total_iterations`` on."""
        return self.stages[max(bisect.bisect_right(self.stage_starts, iteration) - 1, 0)]

    def stage_at_images(self, images: int) -> AdaBatchStage:
        """The stage that trains after ``images`` images were seen; the last one past the end."""
        for stage in self.stages:
            if images < stage.end_images:
                return stage
        return self.stages[-1]

    def images_at_iteration(self, iteration: int) -> int:
        """Images seen after ``iteration`` optimizer steps (past the end, at the last batch)."""
        stage = self.stage_at_iteration(iteration)
        return stage.start_images + images_seen(iteration - stage.start_iter, stage.ims_per_batch)

    def iteration_for_images(self, images: int) -> int:
        """The optimizer steps that come nearest to ``images`` images seen, at the batch of the
        stage those images fall in (ties to even): where a run resumed from another batch or
        schedule continues."""
        stage = self.stage_at_images(images)
        return stage.start_iter + iterations_for_images(
            images - stage.start_images, stage.ims_per_batch
        )

    def progress_at(self, iteration: int) -> float:
        """Training progress in [0, 1] after ``iteration`` steps: images seen / total images.
        LR schedules take it where they take ``iteration / MAX_ITER`` without AdaBatch (the same
        number when the batch does not change), so warmup, steps and decay keep their epochs."""
        return min(max(self.images_at_iteration(iteration) / self.total_images, 0.0), 1.0)

    def lr_factor_at(self, iteration: int) -> float:
        """AdaBatch's factor on the scheduled LR for the step of index ``iteration``."""
        return self.stage_at_iteration(iteration).lr_factor

    def is_period_end(self, steps_done: int, period_iters: int) -> bool:
        """Whether the step that brings the run to ``steps_done`` steps crosses a multiple of
        ``period_iters`` steps of the starting batch, in images (``period_iters`` <= 0: never).
        Without growth it is ``steps_done % period_iters == 0``: the config's CHECKPOINT_PERIOD
        and EVAL_PERIOD keep their epochs."""
        if period_iters <= 0 or steps_done < 1:
            return False
        period = images_seen(period_iters, self.ims_per_batch)
        before = self.images_at_iteration(steps_done - 1)
        return self.images_at_iteration(steps_done) // period > before // period


def adabatch_schedule(cfg: CfgNode) -> AdaBatchSchedule | None:
    """:meth:`AdaBatchSchedule.from_cfg` when ``SCALING.ADABATCH.ENABLED``, else None."""
    if "SCALING" not in cfg or not cfg.SCALING.ADABATCH.ENABLED:
        return None
    return AdaBatchSchedule.from_cfg(cfg)


def _extended(stage: AdaBatchStage, end_images: int) -> AdaBatchStage:
    """``stage`` with the steps of its batch that end nearest to ``end_images``."""
    num_iters = iterations_for_images(end_images - stage.start_images, stage.ims_per_batch)
    return dataclasses.replace(stage, num_iters=max(num_iters, 1))


def _check(key: str, ok: bool, value: object, requirement: str) -> None:
    if not ok:
        raise ValueError(f"{key} {requirement}, got {value!r}")

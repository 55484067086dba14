"""The batch schedule of a run: its geometry and the one place steps and images convert.

Every schedule point a config writes in iterations means "after this many images" once multiplied
by the total batch it was written for. A :class:`BatchSchedule` holds a run's geometry (processes,
micro-batch per process, accumulation, total batch of each step) and the maps between optimizer
steps and images seen. A fixed batch is a schedule of one stage; AdaBatch (Devarakonda et al.
2017, ``SCALING.ADABATCH``) is several, the batch growing by accumulation at fixed image counts
with its own LR factor. The trainer, resume, the periodic hooks, ``plan`` and ``lr-plot`` all ask
the schedule, so none of them needs to know whether the batch grows.
"""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass
from typing import Any

from det_scaling.config import YACS_KEYS, Recipe, RecipeKeys
from det_scaling.errors import ConfigError

__all__ = [
    "BatchSchedule",
    "Growth",
    "Stage",
    "iterations_for_images",
    "micro_batch",
    "rescale_iterations",
    "schedule_in_epochs",
]


def micro_batch(
    ims_per_batch: int, world_size: int, grad_accum_steps: int, keys: RecipeKeys = YACS_KEYS
) -> int:
    """Images each process loads per micro-batch; raises ``ConfigError`` naming the keys (as
    ``keys`` names them) when that is not a whole number."""
    if grad_accum_steps < 1:
        raise ConfigError(f"{keys.grad_accum_steps} must be >= 1, got {grad_accum_steps}")
    if ims_per_batch < 1 or ims_per_batch % (world_size * grad_accum_steps):
        raise ConfigError(
            f"{keys.ims_per_batch} ({ims_per_batch}) must be divisible by {world_size} "
            f"process(es) x {keys.grad_accum_steps} ({grad_accum_steps}): each process loads a "
            "whole number of images per micro-batch"
        )
    return ims_per_batch // (world_size * grad_accum_steps)


def rescale_iterations(iterations: int, old_batch: int, new_batch: int) -> int:
    """The steps of ``new_batch`` that see the images of ``iterations`` steps of ``old_batch``.

    Written as detectron2's ``auto_scale_workers`` writes it, so both round alike (ties to even).
    """
    return round(iterations / (new_batch / old_batch))


def schedule_in_epochs(recipe: Recipe) -> tuple[float, tuple[float, ...], float]:
    """The length, LR steps and warmup of the recipe's schedule in epochs of its data set: as
    written when written in epochs, else its iterations at its own total batch. ``ConfigError``
    naming the data set's size key when that is unknown (0)."""
    epochs = recipe.epochs
    if epochs.max > 0:
        return epochs.max, tuple(epochs.steps), epochs.warmup
    if recipe.dataset_size <= 0:
        raise ConfigError(
            f"{recipe.keys.dataset_size} is 0: set it to the training set's images to read "
            "the schedule in epochs"
        )
    per_step = recipe.ims_per_batch / recipe.dataset_size
    steps = tuple(step * per_step for step in recipe.steps)
    return recipe.max_iter * per_step, steps, recipe.warmup_iters * per_step


def iterations_for_images(images: int, ims_per_batch: int) -> int:
    """The steps of ``ims_per_batch`` images that come nearest to ``images`` (ties to even)."""
    if ims_per_batch <= 0:
        raise ConfigError(f"ims_per_batch must be positive, got {ims_per_batch}")
    return round(images / ims_per_batch)


@dataclass(frozen=True)
class Stage:
    """Optimizer steps ``start_iter`` .. ``end_iter - 1``, all of the same total batch."""

    index: int  # 0 for the starting batch; the batch has grown ``index`` times
    start_iter: int
    num_iters: int
    start_images: int  # images seen before the stage
    ims_per_batch: int  # total images per optimizer step
    grad_accum_steps: int  # micro-batches per optimizer step and process
    lr_factor: float  # multiplies the scheduled LR

    @property
    def end_iter(self) -> int:
        return self.start_iter + self.num_iters

    @property
    def end_images(self) -> int:
        return self.start_images + self.num_iters * self.ims_per_batch


@dataclass(frozen=True)
class Growth:
    """How the batch grows: every ``interval_images`` images, batch x ``batch_factor`` and LR x
    ``lr_factor``, for ``max_stages`` stages at most (0: to the end)."""

    interval_images: int
    batch_factor: int
    lr_factor: float
    max_stages: int = 0
    keys: RecipeKeys = YACS_KEYS  # how the config names the settings, for errors

    def __post_init__(self) -> None:
        def key(name: str) -> str:
            return self.keys.child(self.keys.adabatch, name)

        interval = self.interval_images
        _check(key("interval_epochs"), interval >= 1, interval, "(in images) must be positive")
        _check(key("batch_factor"), self.batch_factor >= 1, self.batch_factor, "must be >= 1")
        _check(key("lr_factor"), self.lr_factor > 0, self.lr_factor, "must be > 0")
        _check(key("max_stages"), self.max_stages >= 0, self.max_stages, "must be >= 0")


class BatchSchedule:
    """A run's geometry and its steps <-> images maps.

    ``ims_per_batch`` and ``grad_accum_steps`` are the starting total batch and accumulation;
    the run covers ``total_images`` images (a config's ``SOLVER.MAX_ITER x IMS_PER_BATCH``).
    Without ``growth`` the run is one stage of the steps that come nearest to them.

    With growth, stage ``k`` has ``batch_factor ** k`` times the batch and accumulation and
    ``lr_factor ** k`` times the LR; it takes the whole steps that end nearest to its planned
    boundary, counted from where the previous stage really ended, so rounding never accumulates.
    A final remainder of half a step of the next batch or less goes to the previous stage.
    """

    def __init__(
        self,
        *,
        ims_per_batch: int,
        grad_accum_steps: int,
        total_images: int,
        world_size: int = 1,
        growth: Growth | None = None,
        dataset_size: int = 0,
        keys: RecipeKeys = YACS_KEYS,
        micro_batch_limit: int = 0,
    ) -> None:
        _check(keys.max_iter, total_images >= 1, total_images, "(in images) must be positive")
        if world_size < 1:
            raise ConfigError(f"world size must be positive, got {world_size}")
        self.keys = keys
        self.world_size = world_size
        self.micro_batch = micro_batch(ims_per_batch, world_size, grad_accum_steps, keys)
        self.ims_per_batch = ims_per_batch
        self.grad_accum_steps = grad_accum_steps
        self.total_images = total_images
        self.dataset_size = dataset_size
        self.growth = growth
        # The most images per micro-batch a process held without running out of memory
        # (SCALING.AUTO_MICRO_BATCH; 0: no limit found).
        self.micro_batch_limit = micro_batch_limit
        self.stages = self._build_stages()
        self.stage_starts = tuple(stage.start_iter for stage in self.stages)

    @classmethod
    def from_recipe(cls, recipe: Recipe, world_size: int) -> BatchSchedule:
        """The schedule of a config's recipe (as scaled for ``world_size`` processes). Raises
        ``ConfigError`` naming the key when the config does not describe a runnable schedule."""
        keys, adabatch, dataset_size = recipe.keys, recipe.adabatch, recipe.dataset_size
        growth = None
        if adabatch.enabled:
            if dataset_size <= 0:
                raise ConfigError(
                    f"{keys.child(keys.adabatch, 'interval_epochs')}: growing the batch every so "
                    f"many epochs needs {keys.dataset_size} (images per epoch); set it, or let "
                    "the trainer fill it in from the registered data set"
                )
            growth = Growth(
                interval_images=round(adabatch.interval_epochs * dataset_size),
                batch_factor=adabatch.batch_factor,
                lr_factor=adabatch.lr_factor,
                max_stages=adabatch.max_stages,
                keys=keys,
            )
        return cls(
            ims_per_batch=int(recipe.ims_per_batch),
            grad_accum_steps=int(recipe.grad_accum_steps),
            total_images=int(recipe.max_iter) * int(recipe.ims_per_batch),
            world_size=world_size,
            growth=growth,
            dataset_size=dataset_size,
            keys=keys,
        )

    def _build_stages(self) -> tuple[Stage, ...]:
        growth = self.growth or Growth(self.total_images, 1, 1.0, 1)
        count = -(-self.total_images // growth.interval_images)
        if growth.max_stages:
            count = min(count, growth.max_stages)
        stages: list[Stage] = []
        start_iter = start_images = 0
        for index in range(count):
            last = index == count - 1
            planned_end = self.total_images if last else (index + 1) * growth.interval_images
            scale = growth.batch_factor**index
            batch = self.ims_per_batch * scale
            num_iters = iterations_for_images(planned_end - start_images, batch)
            if num_iters < 1:
                if last and stages:
                    stages[-1] = _extended(stages[-1], self.total_images)
                    break
                raise ConfigError(
                    f"{self.keys.child(self.keys.adabatch, 'interval_epochs')}: stage {index} has "
                    f"{planned_end - start_images} images, less than half a step of its batch of "
                    f"{batch}; lengthen the interval or use a smaller BATCH_FACTOR or MAX_STAGES"
                )
            stage = Stage(
                index=index,
                start_iter=start_iter,
                num_iters=num_iters,
                start_images=start_images,
                ims_per_batch=batch,
                grad_accum_steps=self.grad_accum_steps * scale,
                lr_factor=growth.lr_factor**index,
            )
            stages.append(stage)
            start_iter, start_images = stage.end_iter, stage.end_images
        return tuple(stages)

    def with_micro_batch_limit(self, limit: int) -> BatchSchedule:
        """This schedule with each process's micro-batch at most ``limit`` images: the largest
        that divides the current one (half of an even one; 3 -> 1), the accumulation multiplied
        by the same factor. The total batch of every step, hence every steps <-> images map and
        the LR, stay. Raises ``ConfigError`` when ``limit`` is below 1."""
        if limit < 1:
            raise ConfigError(f"a micro-batch limit must be at least 1 image, got {limit}")
        size = max(
            d for d in range(1, min(limit, self.micro_batch) + 1) if self.micro_batch % d == 0
        )
        return BatchSchedule(
            ims_per_batch=self.ims_per_batch,
            grad_accum_steps=self.grad_accum_steps * (self.micro_batch // size),
            total_images=self.total_images,
            world_size=self.world_size,
            growth=self.growth,
            dataset_size=self.dataset_size,
            keys=self.keys,
            micro_batch_limit=limit,
        )

    # ---- the whole run ----
    @property
    def schedule_iters(self) -> int:
        """The run's length in steps of the starting batch (a config's ``SOLVER.MAX_ITER``)."""
        return iterations_for_images(self.total_images, self.ims_per_batch)

    @property
    def grows(self) -> bool:
        """Whether the batch changes during the run (more than one stage)."""
        return len(self.stages) > 1

    @property
    def total_iterations(self) -> int:
        """Optimizer steps of the whole run (the trainer's ``max_iter``)."""
        return self.stages[-1].end_iter

    @property
    def final_images(self) -> int:
        """Images seen after the last step (``total_images`` up to whole steps)."""
        return self.stages[-1].end_images

    @property
    def max_grad_accum_steps(self) -> int:
        return self.stages[-1].grad_accum_steps

    # ---- steps <-> images ----
    def stage_at_iteration(self, iteration: int) -> Stage:
        """The stage of the step of index ``iteration``; the last one from the end on."""
        return self.stages[max(bisect.bisect_right(self.stage_starts, iteration) - 1, 0)]

    def stage_at_images(self, images: int) -> Stage:
        """The stage that trains after ``images`` images were seen; the last one past the end."""
        for stage in self.stages:
            if images < stage.end_images:
                return stage
        return self.stages[-1]

    def images_at_iteration(self, iteration: int) -> int:
        """Images seen after ``iteration`` steps (past the end, at the last batch)."""
        stage = self.stage_at_iteration(iteration)
        return stage.start_images + (iteration - stage.start_iter) * stage.ims_per_batch

    def iteration_for_images(self, images: int) -> int:
        """The steps that come nearest to ``images`` images seen, at the batch of the stage those
        images fall in (ties to even): where a run resumed at ``images`` continues."""
        stage = self.stage_at_images(images)
        return stage.start_iter + iterations_for_images(
            images - stage.start_images, stage.ims_per_batch
        )

    def iteration_for_schedule_step(self, step: int) -> int:
        """The run's step at a schedule point written in steps of the starting batch (a warmup
        length, a period): the same images seen."""
        return self.iteration_for_images(step * self.ims_per_batch)

    def progress_at(self, iteration: int) -> float:
        """Images seen after ``iteration`` steps over the run's images, in [0, 1]: what the LR
        schedule takes, so warmup, steps and decay keep their epochs whatever the batch."""
        return min(max(self.images_at_iteration(iteration) / self.total_images, 0.0), 1.0)

    def lr_factor_at(self, iteration: int) -> float:
        """The stage's factor on the scheduled LR for the step of index ``iteration``."""
        return self.stage_at_iteration(iteration).lr_factor

    def is_period_end(self, steps_done: int, period_iters: int) -> bool:
        """Whether the step that brings the run to ``steps_done`` steps crosses a multiple of
        ``period_iters`` steps of the starting batch, in images (``period_iters`` <= 0: never).
        With one stage it is ``steps_done % period_iters == 0``."""
        if period_iters <= 0 or steps_done < 1:
            return False
        period = period_iters * self.ims_per_batch
        before = self.images_at_iteration(steps_done - 1)
        return self.images_at_iteration(steps_done) // period > before // period

    def epochs(self, images: int) -> float | None:
        """``images`` in epochs, or None when the data set size is unknown (0)."""
        return images / self.dataset_size if self.dataset_size > 0 else None

    # ---- what a checkpoint records ----
    def state_at(self, iteration: int) -> dict[str, Any]:
        """The geometry a checkpoint written after ``iteration`` steps records: world size,
        starting batch and accumulation, the schedule's length in steps of the starting batch,
        the micro-batch limit out-of-memory errors set (``"micro_batch_limit"``), and, when the
        batch grows, the stage of the next step and the first step of each stage
        (``"adabatch"``)."""
        state: dict[str, Any] = {
            "world_size": self.world_size,
            "ims_per_batch": self.ims_per_batch,
            "grad_accum_steps": self.grad_accum_steps,
            "max_iter": self.schedule_iters,
        }
        if self.micro_batch_limit:
            state["micro_batch_limit"] = self.micro_batch_limit
        if self.growth is not None:
            stage = self.stage_at_iteration(iteration)
            state["adabatch"] = {
                "stage": stage.index,
                "ims_per_batch": stage.ims_per_batch,
                "grad_accum_steps": stage.grad_accum_steps,
                "lr_factor": stage.lr_factor,
                "stage_starts": list(self.stage_starts),
                "max_iter": self.total_iterations,
            }
        return state

    def same_steps_as(self, state: dict[str, Any]) -> bool:
        """Whether a checkpoint's geometry (:meth:`state_at`) has this schedule's batch at every
        step: then its iteration is this run's iteration, whatever the schedule's length."""
        stage_starts = (state.get("adabatch") or {}).get("stage_starts", [0])
        return state["ims_per_batch"] == self.ims_per_batch and list(stage_starts) == list(
            self.stage_starts
        )


def _extended(stage: Stage, end_images: int) -> Stage:
    """``stage`` with the steps of its batch that end nearest to ``end_images``."""
    num_iters = iterations_for_images(end_images - stage.start_images, stage.ims_per_batch)
    return dataclasses.replace(stage, num_iters=max(num_iters, 1))


def _check(key: str, ok: bool, value: object, requirement: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {requirement}, got {value!r}")

"""``SCALING.AUTO_MICRO_BATCH`` (``train.scaling.auto_micro_batch``): each process's micro-batch
halved when a step runs out of memory, the total batch, LR and schedule unchanged (more
micro-batches accumulated per step), until one image is left.

The trainer (:class:`~det_scaling.engine.trainer.ScalingTrainer`) retries the step after
:func:`halve_micro_batch`, and a resumed run takes up the checkpoint's limit with
:func:`limit_micro_batch`.
"""

from __future__ import annotations

import logging
from typing import Any

from detectron2.utils import comm

from det_scaling.config import RecipeKeys, RunSettings
from det_scaling.engine.accumulation import MicroBatchOutOfMemory, micro_batch_cfg
from det_scaling.engine.failures import ConsequenceOfAnotherRank
from det_scaling.errors import ConfigError

__all__ = [
    "OutOfMemoryAtOneImage",
    "OutOfMemoryAtOneImageOnAnotherRank",
    "check_auto_micro_batch",
    "halve_micro_batch",
    "limit_micro_batch",
]

logger = logging.getLogger(__name__)


class OutOfMemoryAtOneImage(RuntimeError):
    """``SCALING.AUTO_MICRO_BATCH`` ran out of memory with one image per micro-batch."""


class OutOfMemoryAtOneImageOnAnotherRank(OutOfMemoryAtOneImage, ConsequenceOfAnotherRank):
    """The same, raised by a process that did not run out of memory itself."""


def check_auto_micro_batch(keys: RecipeKeys, settings: RunSettings, adascale: bool) -> None:
    """Refuses ``AUTO_MICRO_BATCH`` with what reads the gradient statistics from DDP's
    all-reduce, which it replaces: the noise scale measurement, or AdaScale (``adascale``: at
    S > 1)."""
    if not settings.auto_micro_batch:
        return
    section = keys.auto_micro_batch.rsplit(".", 1)[0]
    other = None
    if settings.noise_scale is not None:
        other = keys.child(keys.child(section, "noise_scale"), "enabled")
    elif adascale:
        other = f"{keys.rule} adascale"
    if other:
        raise ConfigError(
            f"{keys.auto_micro_batch} and {other} cannot be combined: the gradient statistics "
            f"read DDP's all-reduce, which {keys.auto_micro_batch} replaces; turn one off"
        )


def halve_micro_batch(trainer: Any, error: MicroBatchOutOfMemory) -> None:
    """Halves ``trainer``'s micro-batch after ``error`` (every process); at one image, stops with
    an error naming the ranks. ``trainer``: a ``ScalingTrainer`` in its step."""
    micro_batch = trainer.batch_schedule.micro_batch
    if micro_batch == 1:
        key = trainer.recipe.keys.auto_micro_batch
        message = (
            f"{key}: {error} at iteration {trainer.iter}; nothing is left to halve: use a "
            "device with more memory, smaller inputs or a smaller model"
        )
        if comm.get_rank() in error.ranks:
            raise OutOfMemoryAtOneImage(message)
        raise OutOfMemoryAtOneImageOnAnotherRank(message)
    limit_micro_batch(trainer, micro_batch // 2, f"after {error} at iteration {trainer.iter}")


def limit_micro_batch(trainer: Any, limit: int, why: str) -> None:
    """Makes each process's micro-batch of ``trainer`` (a ``ScalingTrainer``) at most ``limit``
    images (accumulating more of them, the total batch, LR and schedule unchanged), with a new
    training loader; ``why`` ends the log line."""
    step = trainer._trainer  # its AccumulatingTrainer (DefaultTrainer's name for the step)
    old = trainer.batch_schedule
    schedule = old.with_micro_batch_limit(limit)
    if schedule.micro_batch != old.micro_batch:
        loader = trainer.build_train_loader(micro_batch_cfg(trainer.run.adapter, schedule))
        step.replace_data_loader(loader)
        step.micro_batch = schedule.micro_batch
        logger.info(
            "Micro-batch %d -> %d image(s) per process %s: %d micro-batch(es) per step, total "
            "batch %d, LR and schedule unchanged",
            old.micro_batch,
            schedule.micro_batch,
            why,
            schedule.grad_accum_steps,
            schedule.ims_per_batch,
        )
    # The steps <-> images maps are the same: the hooks and the LR schedule may keep the
    # old schedule; the checkpoint's geometry and the accumulation read this one.
    trainer.batch_schedule = trainer.progress.schedule = schedule
    step.accumulation_steps = schedule.stage_at_iteration(trainer.iter).grad_accum_steps

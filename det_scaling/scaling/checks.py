"""The checks of a recipe before it is scaled: what the planner (:mod:`.plan`) refuses with a
``ConfigError`` naming the key, and what to do."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from det_scaling.config import LENGTH, PERIOD, POINT, STEPS, ConfigFormat, Recipe, ScheduleField
from det_scaling.errors import ConfigError
from det_scaling.scaling.rules import NOISE_SCHEDULE, SCHEDULES, ScalingRule, is_adam_like

__all__ = [
    "check_adam_sde",
    "check_inputs",
    "check_periods",
    "check_schedule",
    "check_schedule_setting",
]


def check_inputs(recipe: Recipe) -> None:
    """Refuses a recipe the planner cannot scale: a negative reference GPU count, no
    accumulation, no batch, LR or length, or a batch that the reference GPUs and accumulation do
    not split into whole micro-batches."""
    keys = recipe.keys
    reference = recipe.reference_world_size
    accumulation = recipe.grad_accum_steps
    batch = recipe.ims_per_batch
    if reference < 0:
        raise ConfigError(f"{keys.reference_world_size} must be >= 0, got {reference}")
    if accumulation < 1:
        raise ConfigError(f"{keys.grad_accum_steps} must be >= 1, got {accumulation}")
    if batch < 1:
        raise ConfigError(f"{keys.ims_per_batch} must be positive, got {batch}")
    if not recipe.base_lr > 0:
        raise ConfigError(f"{keys.base_lr} must be positive, got {recipe.base_lr}")
    if recipe.max_iter < 1:
        raise ConfigError(f"{keys.max_iter} must be positive, got {recipe.max_iter}")
    if reference and batch % (reference * accumulation):
        raise ConfigError(
            f"{keys.ims_per_batch} ({batch}) must be divisible by "
            f"{keys.reference_world_size} ({reference}) x {keys.grad_accum_steps} "
            f"({accumulation}): each GPU's micro-batch must be a whole number of images"
        )


def check_adam_sde(recipe: Recipe, rule: ScalingRule) -> None:
    """Refuses ADAM_SDE where it has no meaning: an optimizer without Adam's betas and eps, or a
    rule other than the square root, which the adjustment belongs to."""
    if not recipe.adam_sde:
        return
    keys = recipe.keys
    if not is_adam_like(recipe.optimizer) or recipe.betas is None or recipe.eps is None:
        raise ConfigError(
            f"{keys.adam_sde}: adjusts the betas and eps of an Adam-like optimizer, but "
            f"{keys.optimizer} is {recipe.optimizer or 'unnamed'} (det_scaling reads betas and "
            "eps of SOLVER.OPTIMIZER AdamW, or of a LazyConfig optimizer that takes them); set "
            "it False"
        )
    if not rule.adam_sde:
        raise ConfigError(
            f"{keys.adam_sde}: is the square-root rule's adjustment, but {keys.rule} applies "
            f"the {rule.name} rule; set {keys.rule} sqrt or auto, or {keys.adam_sde} False"
        )


def check_schedule_setting(recipe: Recipe, rule: ScalingRule) -> None:
    """Refuses a ``SCALING.SCHEDULE`` that is unknown, or ``noise`` where it has no meaning."""
    keys = recipe.keys
    if recipe.schedule not in SCHEDULES:
        raise ConfigError(
            f"{keys.schedule}: unknown schedule {recipe.schedule!r}; choose one of "
            f"{list(SCHEDULES)}"
        )
    if recipe.schedule != NOISE_SCHEDULE:
        return
    if rule.adascale:
        raise ConfigError(
            f"{keys.schedule} noise and {keys.rule} adascale both set the run's length (AdaScale "
            f"measures it in training); set {keys.schedule} images, or another {keys.rule}"
        )
    if recipe.adabatch.enabled:
        raise ConfigError(
            f"{keys.schedule} noise lengthens the run for one batch, but "
            f"{keys.child(keys.adabatch, 'enabled')} grows the batch during the run; use one"
        )
    if not (recipe.b_crit > 0 and math.isfinite(recipe.b_crit)):
        raise ConfigError(
            f"{keys.schedule} noise needs {keys.b_crit}, the critical batch in images (> 0), got "
            f"{recipe.b_crit:g}: measure it with `det-scaling advise CONFIG`, or set "
            f"{keys.schedule} images"
        )


def check_schedule(out: ConfigFormat, recipe: Recipe) -> None:
    """Refuses a schedule, as written, whose steps or warmup cannot take effect: steps not
    increasing, a step at or past the end of the run, a warmup longer than the run (in the
    epochs section when the schedule is written in epochs)."""
    keys = recipe.keys
    in_epochs = recipe.epochs.max > 0
    fields = out.epoch_fields(recipe.epochs) if in_epochs else out.schedule_fields()
    epoch_names = {LENGTH: "max", STEPS: "steps", POINT: "warmup"}

    def name(f: ScheduleField) -> str:
        return keys.child(keys.epochs, epoch_names[f.kind]) if in_epochs else f.key

    run = next(f for f in fields if f.kind == LENGTH)
    for f in fields:
        if f.kind == STEPS:
            steps: Sequence[Any] = tuple(f.written)
            length, length_key = f.length_written, f.length
            if f.length is None:  # the last value is the length
                *steps, length = steps
                length_key = f"{name(f)}'s last value"
            elif in_epochs:
                length_key = name(run)
            for earlier, later in itertools.pairwise(steps):
                if later <= earlier:
                    raise ConfigError(
                        f"{name(f)} {_format_steps(steps)}: steps must increase "
                        f"({later:g} comes after {earlier:g}); write them in order"
                    )
            for step in steps:
                if step <= 0 or step >= length:
                    raise ConfigError(
                        f"{name(f)}: step {step:g} is not inside the run ({length_key} "
                        f"{length:g}), so it never applies; remove it or make the run longer"
                    )
        elif f.kind == POINT and f.written > run.written:
            raise ConfigError(
                f"{name(f)} {f.written:g} is longer than the run ({name(run)} {run.written:g}): "
                f"the LR would never reach {keys.base_lr}; shorten the warmup"
            )


def check_periods(out: ConfigFormat, recipe: Recipe) -> None:
    """Refuses a period detectron2 would misread: a negative one (its checkpoint hook takes it as
    its absolute value, its evaluation hook as "never") and a checkpoint period of 0 (fvcore's
    hook divides by it). An evaluation period of 0 keeps detectron2's meaning: no periodic
    evaluation. In epochs, 0 means a checkpoint at the end only, or no periodic evaluation."""
    keys = recipe.keys
    if recipe.epochs.max > 0:  # the iteration keys are computed from these
        for name, value in (
            ("checkpoint_period", recipe.epochs.checkpoint_period),
            ("eval_period", recipe.epochs.eval_period),
        ):
            if value < 0:
                raise ConfigError(
                    f"{keys.child(keys.epochs, name)} is {value:g}: a period cannot be "
                    "negative; use a positive number of epochs, or 0 for none before the end"
                )
        return
    for f in out.schedule_fields():
        if f.kind != PERIOD:
            continue
        checkpoint = "checkpoint" in f.key.lower()
        if f.written < 0 or (checkpoint and f.written == 0):
            use = (
                f"a positive number of iterations ({keys.max_iter} or more: a checkpoint at the "
                "end only)"
                if checkpoint
                else "a positive number of iterations, or 0 for no periodic evaluation"
            )
            raise ConfigError(f"{f.key} is {f.written:g}: detectron2 would misread it; use {use}")


def _format_steps(steps: Sequence[Any]) -> str:
    """Steps as the plan prints config values: floats to 6 significant digits, in parentheses."""
    return "(" + ", ".join(f"{s:.6g}" if isinstance(s, float) else str(s) for s in steps) + ")"

"""Rescale a detectron2 config written for one GPU count to another, and say what changed.

The reference setup is ``SOLVER.REFERENCE_WORLD_SIZE`` GPUs (R) at ``SOLVER.IMS_PER_BATCH`` images
per optimizer step, accumulated over ``SCALING.GRAD_ACCUM_STEPS`` micro-batches (A). Each GPU's
micro-batch, ``IMS_PER_BATCH / (R * A)``, is what fits in its memory, so it is kept. On N GPUs:

* the total batch becomes ``per_gpu * N * A`` and the LR follows ``SCALING.RULE``;
* or, with ``SCALING.KEEP_REFERENCE_BATCH``, the total batch and LR stay and each GPU accumulates
  ``R * A / N`` micro-batches;
* every iteration-valued key keeps the number of images seen (:mod:`det_scaling.batch_schedule`).

With the linear rule the numbers are those of detectron2's ``auto_scale_workers``. The result is
written for N GPUs (``REFERENCE_WORLD_SIZE = N``), so scaling it again to N, or handing it to
``DefaultTrainer`` (which calls ``auto_scale_workers``), changes nothing.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from detectron2.config import CfgNode

from det_scaling.batch_schedule import micro_batch, rescale_iterations
from det_scaling.config import add_scaling_config

__all__ = ["SCALING_RULES", "Change", "ScalingPlan", "plan_scaling", "scale_cfg"]

SCALING_RULES = {
    "linear": lambda batch_ratio: batch_ratio,
    "sqrt": math.sqrt,
    "none": lambda batch_ratio: 1.0,
}

# Iteration-valued keys: rescaled to keep the images seen, or computed from SCALING.EPOCHS.
_PERIOD_KEYS = ("SOLVER.CHECKPOINT_PERIOD", "TEST.EVAL_PERIOD")
_SCHEDULE_KEYS = ("SOLVER.MAX_ITER", "SOLVER.STEPS", "SOLVER.WARMUP_ITERS", *_PERIOD_KEYS)


@dataclass(frozen=True)
class Change:
    """One config value that scaling changed."""

    key: str
    old: Any
    new: Any
    reason: str

    def format(self) -> str:
        return (
            f"{self.key}: {_format_value(self.old)} -> {_format_value(self.new)}  ({self.reason})"
        )


@dataclass
class ScalingPlan:
    """The scaled config and the record of how it was made."""

    cfg: CfgNode
    num_gpus: int
    reference_world_size: int
    rule: str
    batch_ratio: float  # new total batch / reference total batch
    lr_factor: float
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Change]:
        return iter(self.changes)

    def format(self) -> str:
        """One line per change, then any notes."""
        lines = [change.format() for change in self.changes]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON/YAML-friendly record (saved beside a run's config)."""
        return {
            "num_gpus": self.num_gpus,
            "reference_world_size": self.reference_world_size,
            "rule": self.rule,
            "batch_ratio": self.batch_ratio,
            "lr_factor": self.lr_factor,
            "changes": [
                {"key": c.key, "old": _plain(c.old), "new": _plain(c.new), "reason": c.reason}
                for c in self.changes
            ],
            "notes": list(self.notes),
        }


def scale_cfg(
    cfg: CfgNode,
    num_gpus: int,
    *,
    rule: str | None = None,
    keep_reference_batch: bool | None = None,
) -> CfgNode:
    """Returns a copy of ``cfg`` rescaled for ``num_gpus`` workers (the input is not changed).

    ``rule`` and ``keep_reference_batch`` override ``SCALING.RULE`` and
    ``SCALING.KEEP_REFERENCE_BATCH``. Raises ``ValueError`` naming the key when the config cannot
    be scaled. :func:`plan_scaling` returns the same config with the record of every change.
    """
    return plan_scaling(cfg, num_gpus, rule=rule, keep_reference_batch=keep_reference_batch).cfg


def plan_scaling(
    cfg: CfgNode,
    num_gpus: int,
    *,
    rule: str | None = None,
    keep_reference_batch: bool | None = None,
) -> ScalingPlan:
    """Like :func:`scale_cfg`, returning a :class:`ScalingPlan` (scaled config + changes)."""
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 1:
        raise ValueError(f"num_gpus must be a positive integer, got {num_gpus!r}")
    frozen = cfg.is_frozen()
    out = cfg.clone()
    out.defrost()
    add_scaling_config(out)
    rule = out.SCALING.RULE if rule is None else rule
    if rule not in SCALING_RULES:
        raise ValueError(
            f"SCALING.RULE: unknown scaling rule {rule!r}; choose one of {sorted(SCALING_RULES)}"
        )
    if keep_reference_batch is None:
        keep_reference_batch = bool(out.SCALING.KEEP_REFERENCE_BATCH)
    out.SCALING.RULE = rule
    out.SCALING.KEEP_REFERENCE_BATCH = keep_reference_batch
    _check_inputs(out)
    _check_schedule(out)

    reference = out.SOLVER.REFERENCE_WORLD_SIZE
    plan = ScalingPlan(out, num_gpus, reference, rule, batch_ratio=1.0, lr_factor=1.0)
    if reference == 0:
        plan.notes.append(
            "SOLVER.REFERENCE_WORLD_SIZE is 0: the config is written for the GPUs it runs on; "
            "nothing is rescaled"
        )
    elif reference == num_gpus:
        plan.notes.append(f"the config is already written for {_gpus(num_gpus)}")
    else:
        _rescale_batch_and_lr(plan, keep_reference_batch)
    if out.SCALING.EPOCHS.MAX > 0:
        _schedule_from_epochs(plan)
    elif out.SOLVER.IMS_PER_BATCH != cfg.SOLVER.IMS_PER_BATCH:
        _rescale_schedule(plan, cfg.SOLVER.IMS_PER_BATCH)
    _note_long_periods(plan)
    if frozen:
        out.freeze()
    return plan


def _check_inputs(cfg: CfgNode) -> None:
    reference = cfg.SOLVER.REFERENCE_WORLD_SIZE
    accumulation = cfg.SCALING.GRAD_ACCUM_STEPS
    if reference < 0:
        raise ValueError(f"SOLVER.REFERENCE_WORLD_SIZE must be >= 0, got {reference}")
    if accumulation < 1:
        raise ValueError(f"SCALING.GRAD_ACCUM_STEPS must be >= 1, got {accumulation}")
    if cfg.SOLVER.IMS_PER_BATCH < 1:
        raise ValueError(f"SOLVER.IMS_PER_BATCH must be positive, got {cfg.SOLVER.IMS_PER_BATCH}")
    if not cfg.SOLVER.BASE_LR > 0:
        raise ValueError(f"SOLVER.BASE_LR must be positive, got {cfg.SOLVER.BASE_LR}")
    if cfg.SOLVER.MAX_ITER < 1:
        raise ValueError(f"SOLVER.MAX_ITER must be positive, got {cfg.SOLVER.MAX_ITER}")
    if reference and cfg.SOLVER.IMS_PER_BATCH % (reference * accumulation):
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) must be divisible by "
            f"SOLVER.REFERENCE_WORLD_SIZE ({reference}) x SCALING.GRAD_ACCUM_STEPS "
            f"({accumulation}): each GPU's micro-batch must be a whole number of images"
        )


def _check_schedule(cfg: CfgNode) -> None:
    """Refuses a schedule, as written, whose steps or warmup cannot take effect: STEPS not
    increasing, a step at or past the end of the run, a warmup longer than the run (in
    ``SCALING.EPOCHS`` when the schedule is written in epochs)."""
    if cfg.SCALING.EPOCHS.MAX > 0:
        prefix, epochs = "SCALING.EPOCHS.", cfg.SCALING.EPOCHS
        length, steps, warmup = epochs.MAX, tuple(epochs.STEPS), epochs.WARMUP
        length_key, steps_key, warmup_key = prefix + "MAX", prefix + "STEPS", prefix + "WARMUP"
    else:
        solver = cfg.SOLVER
        length, steps, warmup = solver.MAX_ITER, tuple(solver.STEPS), solver.WARMUP_ITERS
        length_key, steps_key, warmup_key = "SOLVER.MAX_ITER", "SOLVER.STEPS", "SOLVER.WARMUP_ITERS"
    for earlier, later in itertools.pairwise(steps):
        if later <= earlier:
            raise ValueError(
                f"{steps_key} {_format_value(steps)}: steps must increase ({later:g} comes after "
                f"{earlier:g}); write them in order"
            )
    for step in steps:
        if step <= 0 or step >= length:
            raise ValueError(
                f"{steps_key}: step {step:g} is not inside the run ({length_key} {length:g}), so "
                f"it never applies; remove it or make {length_key} longer"
            )
    if warmup > length:
        raise ValueError(
            f"{warmup_key} {warmup:g} is longer than the run ({length_key} {length:g}): the LR "
            f"would never reach SOLVER.BASE_LR; shorten the warmup"
        )


def _note_long_periods(plan: ScalingPlan) -> None:
    """Notes each period that the run never reaches: harmless (detectron2 checkpoints and
    evaluates at the end anyway), but a crash then loses the whole run, or nothing is evaluated
    on the way."""
    cfg = plan.cfg
    max_iter = cfg.SOLVER.MAX_ITER
    consequences = {
        "SOLVER.CHECKPOINT_PERIOD": "the only checkpoint is the final one",
        "TEST.EVAL_PERIOD": "the only evaluation is at the end",
    }
    for key, consequence in consequences.items():
        period = _lookup_value(cfg, key)
        if period >= max_iter:
            plan.notes.append(
                f"{key} {period} is not shorter than the run (SOLVER.MAX_ITER {max_iter}): "
                f"{consequence}"
            )


def _recorder(plan: ScalingPlan) -> Callable[[str, Any, str], None]:
    """Returns ``record(key, new, reason)``: sets a key of the plan's config, noting a change."""

    def record(key: str, new: Any, reason: str) -> None:
        node, name = _lookup(plan.cfg, key)
        old = node[name]
        node[name] = new
        if old != new:
            plan.changes.append(Change(key, old, new, reason))

    return record


def _rescale_batch_and_lr(plan: ScalingPlan, keep_reference_batch: bool) -> None:
    cfg, num_gpus, reference = plan.cfg, plan.num_gpus, plan.reference_world_size
    record = _recorder(plan)
    solver = cfg.SOLVER
    old_batch = solver.IMS_PER_BATCH
    accumulation = cfg.SCALING.GRAD_ACCUM_STEPS
    per_gpu = micro_batch(old_batch, reference, accumulation)
    micro_batches = reference * accumulation  # per optimizer step, all GPUs together

    if keep_reference_batch:
        if micro_batches % num_gpus:
            raise ValueError(
                f"SCALING.KEEP_REFERENCE_BATCH: the reference batch of {old_batch} images is "
                f"{micro_batches} micro-batches of {per_gpu}, which do not divide evenly among "
                f"{num_gpus} GPUs; use a GPU count that divides {micro_batches}, or set "
                "SCALING.KEEP_REFERENCE_BATCH False to scale the batch and LR instead"
            )
        new_accumulation = micro_batches // num_gpus
        record(
            "SCALING.GRAD_ACCUM_STEPS",
            new_accumulation,
            f"KEEP_REFERENCE_BATCH: {_gpus(num_gpus)} x {new_accumulation} micro-batches x "
            f"{per_gpu} images keep the reference batch of {old_batch}",
        )
        plan.notes.append(
            f"total batch, LR and schedule kept as written for {_gpus(reference)}, by gradient "
            "accumulation"
        )
    else:
        new_batch = per_gpu * num_gpus * accumulation
        plan.batch_ratio = new_batch / old_batch
        plan.lr_factor = SCALING_RULES[plan.rule](plan.batch_ratio)
        record(
            "SOLVER.IMS_PER_BATCH",
            new_batch,
            f"{per_gpu} images/GPU x {_gpus(num_gpus)}"
            + (f" x {accumulation} accumulated" if accumulation > 1 else "")
            + f"; reference {_gpus(reference)}",
        )
        lr_reason = f"{plan.rule} rule: batch x{plan.batch_ratio:.6g}, LR x{plan.lr_factor:.6g}"
        record("SOLVER.BASE_LR", solver.BASE_LR * plan.lr_factor, lr_reason)
        record("SOLVER.BASE_LR_END", solver.BASE_LR_END * plan.lr_factor, lr_reason)
        record("SOLVER.PLATEAU.MIN_LR", solver.PLATEAU.MIN_LR * plan.lr_factor, lr_reason)
    record(
        "SOLVER.REFERENCE_WORLD_SIZE",
        num_gpus,
        f"now written for {_gpus(num_gpus)}, scaled from {reference}",
    )


def _rescale_schedule(plan: ScalingPlan, old_batch: int) -> None:
    """Rescales the iteration-valued keys written for ``old_batch`` to the same images seen."""
    new_batch = plan.cfg.SOLVER.IMS_PER_BATCH
    written = {key: _lookup_value(plan.cfg, key) for key in _SCHEDULE_KEYS}

    def convert(iterations: int) -> int:
        return rescale_iterations(iterations, old_batch, new_batch)

    def why(iterations: int) -> str:
        return (
            f"same images seen: {iterations} steps x {old_batch} = {iterations * old_batch} images"
        )

    _set_schedule(plan, written, convert, why, f"at {old_batch} images/step")


def _schedule_from_epochs(plan: ScalingPlan) -> None:
    """Sets the iteration-valued keys from ``SCALING.EPOCHS`` at the config's total batch."""
    cfg = plan.cfg
    epochs = cfg.SCALING.EPOCHS
    dataset_size = cfg.SCALING.DATASET_SIZE
    batch = cfg.SOLVER.IMS_PER_BATCH
    if dataset_size <= 0:
        raise ValueError(
            "SCALING.EPOCHS.MAX: a schedule written in epochs needs SCALING.DATASET_SIZE (images "
            "per epoch); set it, or let the trainer fill it in from the registered data set"
        )
    written = {
        "SOLVER.MAX_ITER": epochs.MAX,
        "SOLVER.STEPS": tuple(epochs.STEPS),
        "SOLVER.WARMUP_ITERS": epochs.WARMUP,
        # A period of 0 epochs: checkpoint at the end only; evaluate at the end only.
        "SOLVER.CHECKPOINT_PERIOD": epochs.CHECKPOINT_PERIOD or epochs.MAX,
        "TEST.EVAL_PERIOD": epochs.EVAL_PERIOD,
    }

    def convert(epoch_count: float) -> int:
        return round(epoch_count * dataset_size / batch)

    def why(epoch_count: float) -> str:
        return f"{epoch_count:g} epochs x {dataset_size} images / {batch} per step"

    _set_schedule(plan, written, convert, why, "in SCALING.EPOCHS")


def _set_schedule(
    plan: ScalingPlan,
    written: dict[str, Any],
    convert: Callable[[Any], int],
    why: Callable[[Any], str],
    written_as: str,
) -> None:
    """Sets every schedule key to ``convert`` of its ``written`` value, refusing what rounding
    breaks: a length, step or period that becomes 0, steps that collide or reach MAX_ITER."""
    record = _recorder(plan)
    batch = plan.cfg.SOLVER.IMS_PER_BATCH

    def fail(key: str, message: str) -> ValueError:
        return ValueError(
            f"{key}: {message} at {_gpus(plan.num_gpus)} ({batch} images/step; schedule written "
            f"{written_as}); lengthen the schedule or use fewer GPUs"
        )

    written_max = written["SOLVER.MAX_ITER"]
    max_iter = convert(written_max)
    if max_iter < 1:
        raise fail("SOLVER.MAX_ITER", f"{written_max:g} rounds to 0 iterations")
    record("SOLVER.MAX_ITER", max_iter, why(written_max))

    written_steps = written["SOLVER.STEPS"]
    steps = tuple(convert(step) for step in written_steps)
    for old, new in zip(written_steps, steps, strict=True):
        if old > 0 and new == 0:
            raise fail("SOLVER.STEPS", f"step {old:g} rounds to 0")
        if old < written_max and new >= max_iter:
            raise fail(
                "SOLVER.STEPS", f"step {old:g} rounds to {new}, not before MAX_ITER {max_iter}"
            )
    for (old_a, old_b), new_b in zip(itertools.pairwise(written_steps), steps[1:], strict=True):
        if old_a < old_b and convert(old_a) >= new_b:
            raise fail("SOLVER.STEPS", f"steps {old_a:g} and {old_b:g} collide (both {new_b})")
    record("SOLVER.STEPS", steps, f"same images seen as {list(written_steps)} {written_as}")

    for key in ("SOLVER.WARMUP_ITERS", *_PERIOD_KEYS):
        old = written[key]
        new = convert(old)
        if key in _PERIOD_KEYS and old > 0 and new == 0:
            raise fail(key, f"period {old:g} rounds to 0")
        record(key, new, why(old))


def _lookup(cfg: CfgNode, dotted_key: str) -> tuple[CfgNode, str]:
    *parents, name = dotted_key.split(".")
    node = cfg
    for parent in parents:
        node = node[parent]
    return node, name


def _lookup_value(cfg: CfgNode, dotted_key: str) -> Any:
    node, name = _lookup(cfg, dotted_key)
    return node[name]


def _gpus(count: int) -> str:
    return f"{count} GPU" if count == 1 else f"{count} GPUs"


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple | list):
        return "(" + ", ".join(_format_value(v) for v in value) + ")"
    return str(value)

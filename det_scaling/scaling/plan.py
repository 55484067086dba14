"""Rescale a detectron2 config written for one GPU count to another, and say what changed.

The math knows no config format: it works on the config's recipe (:mod:`det_scaling.config`:
reference GPU count, total batch, accumulation, LRs, iteration-valued fields), read from a yacs
CfgNode or a LazyConfig and written back under the config's own keys.

The reference setup is R GPUs (``SOLVER.REFERENCE_WORLD_SIZE``; ``train.reference_world_size``)
at a total batch per optimizer step (``SOLVER.IMS_PER_BATCH``;
``dataloader.train.total_batch_size``), accumulated over A micro-batches
(``SCALING.GRAD_ACCUM_STEPS``; ``train.scaling.grad_accum_steps``). Each GPU's micro-batch,
``batch / (R * A)``, is what fits in its memory, so it is kept. On N GPUs:

* the total batch becomes ``per_gpu * N * A`` and every absolute LR follows the rule;
* or, with keep-reference-batch, the total batch and LR stay and each GPU accumulates
  ``R * A / N`` micro-batches;
* every iteration-valued field keeps the number of images seen
  (:mod:`det_scaling.scaling.batch_schedule`); under AdaScale (``adascale``), the periods only:
  the LR and schedule stay the reference batch's, and the run follows the gain ratio it
  measures (:mod:`det_scaling.engine.adascale`);
* or, with the ``noise`` schedule (``SCALING.SCHEDULE``), the run's length, its LR steps and its
  periods also grow by the epochs factor of the new batch
  (:func:`~det_scaling.scaling.critical_batch.epochs_factor`); the warmup keeps its images.

With the linear rule the numbers are those of detectron2's ``auto_scale_workers``. The result is
written for N GPUs (reference N), so scaling it again to N, or handing a yacs config to
``DefaultTrainer`` (which calls ``auto_scale_workers``), changes nothing.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from det_scaling.config import (
    FRACTION,
    LENGTH,
    PERIOD,
    POINT,
    STEPS,
    ConfigFormat,
    EpochSchedule,
    Recipe,
    ScheduleField,
    config_format,
)
from det_scaling.errors import ConfigError
from det_scaling.scaling.batch_schedule import micro_batch, rescale_iterations
from det_scaling.scaling.checks import (
    check_adam_sde,
    check_inputs,
    check_periods,
    check_schedule,
    check_schedule_setting,
)
from det_scaling.scaling.critical_batch import epochs_factor
from det_scaling.scaling.rules import NOISE_SCHEDULE, ScalingRule, rule_of

__all__ = [
    "Change",
    "ScalingPlan",
    "adascale_scale",
    "format_value",
    "plan_scaling",
    "scale_cfg",
]


@dataclass(frozen=True)
class Change:
    """One config value that scaling changed."""

    key: str
    old: Any
    new: Any
    reason: str

    def format(self) -> str:
        return f"{self.key}: {format_value(self.old)} -> {format_value(self.new)}  ({self.reason})"


@dataclass
class ScalingPlan:
    """The scaled config (a CfgNode or a LazyConfig, as given) and the record of how it was
    made. ``warnings`` name fields left as written because scaling cannot tell what they
    measure."""

    cfg: Any
    num_gpus: int
    reference_world_size: int
    rule: str
    batch_ratio: float  # new total batch / reference total batch
    lr_factor: float
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    epochs_factor: float = 1.0  # the schedule's length against the reference's, in epochs
    # The scaled config in its format's adapter, through which the plan's config is read, and
    # the recipe as written (with the rule and keep-reference-batch the plan applied).
    adapter: ConfigFormat | None = field(default=None, repr=False, compare=False)
    written: Recipe | None = field(default=None, repr=False, compare=False)

    @property
    def scaling_rule(self) -> ScalingRule:
        """The rule the plan applied (:mod:`det_scaling.scaling.rules`)."""
        return rule_of(self.rule)

    @property
    def recipe(self) -> Recipe:
        """The scaled config's recipe."""
        if self.adapter is None:
            raise AttributeError("recipe: this plan has no adapter (plan_scaling gives it one)")
        return self.adapter.recipe()

    def __iter__(self) -> Iterator[Change]:
        return iter(self.changes)

    def format(self) -> str:
        """One line per change, then any notes and warnings."""
        lines = [change.format() for change in self.changes]
        lines += [f"note: {note}" for note in self.notes]
        lines += [f"warning: {warning}" for warning in self.warnings]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON/YAML-friendly record (saved beside a run's config)."""
        record = {
            "num_gpus": self.num_gpus,
            "reference_world_size": self.reference_world_size,
            "rule": self.rule,
            "batch_ratio": self.batch_ratio,
            "lr_factor": self.lr_factor,
            "epochs_factor": self.epochs_factor,
            "changes": [
                {"key": c.key, "old": _plain(c.old), "new": _plain(c.new), "reason": c.reason}
                for c in self.changes
            ],
            "notes": list(self.notes),
        }
        if self.warnings:
            record["warnings"] = list(self.warnings)
        return record


def scale_cfg(
    cfg: Any,
    num_gpus: int,
    *,
    rule: str | None = None,
    keep_reference_batch: bool | None = None,
) -> Any:
    """Returns a copy of ``cfg`` (a CfgNode or a LazyConfig) rescaled for ``num_gpus`` workers
    (the input is not changed).

    ``rule`` and ``keep_reference_batch`` override the config's (``SCALING.RULE``,
    ``SCALING.KEEP_REFERENCE_BATCH``; ``train.scaling.*``). Raises ``ConfigError`` naming the key
    when the config cannot be scaled. :func:`plan_scaling` returns the same config with the
    record of every change.
    """
    return plan_scaling(cfg, num_gpus, rule=rule, keep_reference_batch=keep_reference_batch).cfg


def plan_scaling(
    cfg: Any,
    num_gpus: int,
    *,
    rule: str | None = None,
    keep_reference_batch: bool | None = None,
) -> ScalingPlan:
    """Like :func:`scale_cfg`, returning a :class:`ScalingPlan` (scaled config + changes)."""
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 1:
        raise ConfigError(f"num_gpus must be a positive integer, got {num_gpus!r}")
    written = config_format(cfg)
    out = written.writable_copy()
    keys = out.keys
    rule = out.get(keys.rule) if rule is None else rule
    written_rule = rule_of(rule, keys.rule)
    if keep_reference_batch is None:
        keep_reference_batch = bool(out.get(keys.keep_reference_batch))
    out.set(keys.rule, rule)
    out.set(keys.keep_reference_batch, keep_reference_batch)
    recipe = out.recipe()
    check_inputs(recipe)
    check_schedule(out, recipe)
    check_periods(out, recipe)

    applied_rule, why = written_rule.applied_to(recipe)
    check_adam_sde(recipe, applied_rule)
    check_schedule_setting(recipe, applied_rule)

    reference = recipe.reference_world_size
    plan = ScalingPlan(
        out.cfg,
        num_gpus,
        reference,
        applied_rule.name,
        batch_ratio=1.0,
        lr_factor=1.0,
        adapter=out,
        written=recipe,
    )
    plan.warnings += _other_lengths(out)
    if why:  # the rule was chosen (auto)
        plan.notes.append(f"{keys.rule} {written_rule.name}: the {applied_rule.name} rule; {why}")
    if reference == 0:
        plan.notes.append(
            f"{keys.reference_world_size} is 0: the config is written for the GPUs it runs on; "
            "nothing is rescaled"
        )
    elif reference == num_gpus:
        plan.notes.append(f"the config is already written for {_gpus(num_gpus)}")
    else:
        _rescale_batch_and_lr(plan, out, recipe)
    adascale = applied_rule.adascale
    if adascale:
        _plan_adascale(plan, out, recipe)
    if recipe.schedule == NOISE_SCHEDULE:
        _plan_epochs_factor(plan, out, recipe)
    schedule_changed = True
    if recipe.epochs.max > 0:
        _schedule_from_epochs(plan, out, recipe)
    elif out.get(keys.ims_per_batch) != recipe.ims_per_batch:
        _rescale_schedule(plan, out, recipe.ims_per_batch, periods_only=adascale)
    else:
        schedule_changed = False
    if schedule_changed:  # fields scaling cannot classify kept their written values
        plan.warnings += out.unclassified()
    _note_long_periods(plan, out)
    if written.is_frozen():
        out.freeze()
    return plan


def _plan_epochs_factor(plan: ScalingPlan, out: ConfigFormat, recipe: Recipe) -> None:
    """Sets the plan's epochs factor for the batch it scaled to, and says why."""
    keys = recipe.keys
    old, new = recipe.ims_per_batch, out.get(keys.ims_per_batch)
    if new == old:
        return
    plan.epochs_factor = epochs_factor(new, old, recipe.b_crit)
    plan.notes.append(
        f"{keys.schedule} noise: epochs x{plan.epochs_factor:.3g} for batch {new} against {old} "
        f"with B_crit {recipe.b_crit:g} ((1 + {new}/{recipe.b_crit:g}) / (1 + "
        f"{old}/{recipe.b_crit:g})); the warmup keeps its images"
    )


def adascale_scale(recipe: Recipe, num_gpus: int) -> float:
    """AdaScale's S: ``recipe``'s total batch over the batch its schedule is written for
    (``SCALING.ADASCALE_REFERENCE_BATCH``; 0: the total batch itself, S = 1). ``ConfigError``
    where AdaScale cannot run on ``num_gpus`` processes: S < 1 (a smaller batch than the
    schedule's), or S > 1 with one batch size per step to measure the gain from."""
    keys = recipe.keys
    reference = recipe.adascale_reference_batch or recipe.ims_per_batch
    if reference < 0 or recipe.ims_per_batch < reference:
        raise ConfigError(
            f"{keys.adascale_reference_batch}: AdaScale scales up from the batch its schedule "
            f"is written for ({reference}), but {keys.ims_per_batch} is {recipe.ims_per_batch}; "
            f"keep that batch ({keys.keep_reference_batch} True) or choose another {keys.rule}"
        )
    scale = recipe.ims_per_batch / reference
    if scale > 1 and num_gpus == 1 and recipe.grad_accum_steps == 1:
        raise ConfigError(
            f"{keys.rule} adascale measures the gain ratio from two batch sizes, which one "
            f"process without accumulation does not have: run on 2+ processes or set "
            f"{keys.grad_accum_steps} >= 2"
        )
    return scale


def _plan_adascale(plan: ScalingPlan, out: ConfigFormat, recipe: Recipe) -> None:
    """Records the batch AdaScale's schedule is written for, checks S, and says what the run
    does with it."""
    keys = recipe.keys
    if recipe.adabatch.enabled:
        raise ConfigError(
            f"{keys.rule} adascale and {keys.child(keys.adabatch, 'enabled')} both change the LR "
            "with the batch during the run; use one"
        )
    reference = recipe.adascale_reference_batch or recipe.ims_per_batch
    _recorder(plan, out)(
        keys.adascale_reference_batch,
        reference,
        f"adascale: the schedule and {keys.base_lr} are written for batch {reference}",
    )
    scale = adascale_scale(out.recipe(), plan.num_gpus)
    plan.notes.append(
        f"adascale (Johnson et al. 2020) at S = {scale:g} (batch {out.get(keys.ims_per_batch)} / "
        f"{reference}): each step multiplies {keys.base_lr} by the gain ratio r in [1, "
        f"{scale:g}] measured in training and advances the schedule by r steps; the run ends "
        f"when it reaches {keys.max_iter}, after {keys.max_iter} / {scale:g} to {keys.max_iter} "
        "steps"
    )


def _other_lengths(out: ConfigFormat) -> list[str]:
    """A length other than the run's (a LazyConfig scheduler's ``num_updates``) that differs from
    it: detectron2 evaluates ``num_updates=train.max_iter`` when the file is loaded, so an
    override of ``train.max_iter`` alone leaves the LR schedule at the old length."""
    run, *others = [f for f in out.schedule_fields() if f.kind == LENGTH]
    return [
        f"{f.key} {f.written} is not the run's length ({run.key} {run.written}): the LR schedule "
        f"ends at {f.written}; set both (a train.max_iter override does not change it)"
        for f in others
        if f.written != run.written
    ]


def _note_long_periods(plan: ScalingPlan, out: ConfigFormat) -> None:
    """Notes each period that the run never reaches: harmless (detectron2 checkpoints and
    evaluates at the end anyway), but a crash then loses the whole run, or nothing is evaluated
    on the way."""
    max_key = out.keys.max_iter
    max_iter = out.get(max_key)
    for f in out.schedule_fields():
        if f.kind == PERIOD and f.written >= max_iter:
            consequence = (
                "the only checkpoint is the final one"
                if "checkpoint" in f.key.lower()
                else "the only evaluation is at the end"
            )
            plan.notes.append(
                f"{f.key} {f.written} is not shorter than the run ({max_key} {max_iter}): "
                f"{consequence}"
            )


_READ = object()


def _recorder(plan: ScalingPlan, out: ConfigFormat) -> Callable[..., None]:
    """Returns ``record(key, new, reason, old=<the config's>)``: sets a key of the plan's config,
    noting a change (``old``: the value in effect where the config leaves the key out)."""

    def record(key: str, new: Any, reason: str, old: Any = _READ) -> None:
        if old is _READ:
            old = out.get(key)
        out.set(key, new)
        if _plain(old) != _plain(new):
            plan.changes.append(Change(key, old, new, reason))

    return record


def _rescale_batch_and_lr(plan: ScalingPlan, out: ConfigFormat, recipe: Recipe) -> None:
    keys = recipe.keys
    num_gpus, reference = plan.num_gpus, plan.reference_world_size
    record = _recorder(plan, out)
    old_batch = recipe.ims_per_batch
    accumulation = recipe.grad_accum_steps
    per_gpu = micro_batch(old_batch, reference, accumulation, keys)
    micro_batches = reference * accumulation  # per optimizer step, all GPUs together

    if recipe.keep_reference_batch:
        setting = keys.keep_reference_batch.rsplit(".", 1)[-1]
        if micro_batches % num_gpus:
            raise ConfigError(
                f"{keys.keep_reference_batch}: the reference batch of {old_batch} images is "
                f"{micro_batches} micro-batches of {per_gpu}, which do not divide evenly among "
                f"{num_gpus} GPUs; use a GPU count that divides {micro_batches}, or set "
                f"{keys.keep_reference_batch} False to scale the batch and LR instead"
            )
        new_accumulation = micro_batches // num_gpus
        record(
            keys.grad_accum_steps,
            new_accumulation,
            f"{setting}: {_gpus(num_gpus)} x {new_accumulation} micro-batches x "
            f"{per_gpu} images keep the reference batch of {old_batch}",
        )
        plan.notes.append(
            f"total batch, LR and schedule kept as written for {_gpus(reference)}, by gradient "
            "accumulation"
        )
    else:
        new_batch = per_gpu * num_gpus * accumulation
        plan.batch_ratio = new_batch / old_batch
        plan.lr_factor = plan.scaling_rule.lr_factor(plan.batch_ratio)
        record(
            keys.ims_per_batch,
            new_batch,
            f"{per_gpu} images/GPU x {_gpus(num_gpus)}"
            + (f" x {accumulation} accumulated" if accumulation > 1 else "")
            + f"; reference {_gpus(reference)}",
        )
        lr_reason = f"{plan.rule} rule: batch x{plan.batch_ratio:.6g}, LR x{plan.lr_factor:.6g}"
        for key, lr in recipe.lrs.items():
            record(key, lr * plan.lr_factor, lr_reason)
        if recipe.adam_sde:
            _adjust_adam(record, recipe, plan.batch_ratio)
    record(
        keys.reference_world_size,
        num_gpus,
        f"now written for {_gpus(num_gpus)}, scaled from {reference}",
    )


def _adjust_adam(record: Callable[..., None], recipe: Recipe, kappa: float) -> None:
    """Malladi et al. 2022 ("On the SDEs and Scaling Rules for Adaptive Gradient Algorithms",
    NeurIPS; arXiv 2205.10287), the square-root scaling rule for Adam: with the batch x kappa,
    LR x sqrt(kappa) (the sqrt rule), beta_i -> 1 - kappa (1 - beta_i), eps -> eps / sqrt(kappa),
    so that the SDE the run approximates stays the same (as the authors' cifar_main.py in
    abhishekpanigrahi1996/Adaptive-SDE does with its noise multiplier l = 1 / sqrt(kappa))."""
    keys = recipe.keys
    setting = keys.adam_sde.rsplit(".", 1)[-1]
    # plan_scaling's _check_adam_sde refused ADAM_SDE without Adam's betas and eps.
    assert recipe.betas is not None and recipe.eps is not None
    betas_key, betas = recipe.betas
    new_betas = tuple(1.0 - kappa * (1.0 - beta) for beta in betas)
    for beta, new in zip(betas, new_betas, strict=True):
        if new < 0:
            raise ConfigError(
                f"{betas_key}: beta {beta:g} cannot follow a batch x{kappa:.6g} "
                f"(1 - {kappa:.6g} x (1 - {beta:g}) = {new:.6g} < 0); write betas closer to 1 "
                f"for the reference batch, or set {keys.adam_sde} False"
            )
    record(
        betas_key,
        new_betas,
        f"{setting} (Malladi et al. 2022): batch x{kappa:.6g}, beta -> 1 - {kappa:.6g} (1 - beta)",
        old=betas,
    )
    eps_key, eps = recipe.eps
    record(
        eps_key,
        eps / math.sqrt(kappa),
        f"{setting} (Malladi et al. 2022): batch x{kappa:.6g}, eps / sqrt({kappa:.6g})",
        old=eps,
    )


def _rescale_schedule(
    plan: ScalingPlan, out: ConfigFormat, old_batch: int, *, periods_only: bool = False
) -> None:
    """Rescales the iteration-valued fields written for ``old_batch`` to the same images seen,
    times the plan's epochs factor (the warmup: the same images). With ``periods_only``, the
    periods only: AdaScale's schedule stays in steps of its batch."""
    new_batch = out.get(out.keys.ims_per_batch)
    factor = plan.epochs_factor

    def same_images(iterations: int) -> int:
        return rescale_iterations(iterations, old_batch, new_batch)

    def images_why(iterations: int) -> str:
        return (
            f"same images seen: {iterations} steps x {old_batch} = {iterations * old_batch} images"
        )

    def convert(iterations: int) -> int:
        if factor == 1:
            return same_images(iterations)
        return round(iterations * factor * old_batch / new_batch)

    def why(iterations: int) -> str:
        if factor == 1:
            return images_why(iterations)
        return f"{iterations} steps x {old_batch} images x{factor:.3g} epochs / {new_batch}"

    fields = out.schedule_fields()
    if periods_only:
        fields = [f for f in fields if f.kind == PERIOD]
    _set_schedule(
        plan,
        out,
        fields,
        convert,
        why,
        f"at {old_batch} images/step",
        point=(same_images, images_why),
    )
    record = _recorder(plan, out)
    for f in out.warmup_fractions() if factor != 1 else ():
        record(f.key, f.written / factor, f"the warmup keeps its images in a run x{factor:.3g}")


def _schedule_from_epochs(plan: ScalingPlan, out: ConfigFormat, recipe: Recipe) -> None:
    """Sets the iteration-valued fields from the schedule written in epochs, at the config's
    total batch."""
    keys = recipe.keys
    epochs = recipe.epochs
    dataset_size = recipe.dataset_size
    period_batch = out.get(keys.ims_per_batch)
    # AdaScale's schedule is in steps of its reference batch; periods follow the images.
    adascale = plan.scaling_rule.adascale
    batch = out.get(keys.adascale_reference_batch) if adascale else period_batch
    if dataset_size <= 0:
        raise ConfigError(
            f"{keys.child(keys.epochs, 'max')}: a schedule written in epochs needs "
            f"{keys.dataset_size} (images per epoch); set it, or let the trainer fill it in from "
            "the registered data set"
        )

    factor = plan.epochs_factor

    def converter(
        per_step: int, factor: float = 1.0
    ) -> tuple[Callable[[float], int], Callable[[float], str]]:
        def convert(epoch_count: float) -> int:
            return round(epoch_count * factor * dataset_size / per_step)

        def why(epoch_count: float) -> str:
            scaled = f" x{factor:.3g}" if factor != 1 else ""
            return f"{epoch_count:g} epochs{scaled} x {dataset_size} images / {per_step} per step"

        return convert, why

    fields = out.epoch_fields(epochs)
    convert, why = converter(batch, factor)
    _set_schedule(
        plan,
        out,
        fields,
        convert,
        why,
        f"in {keys.epochs}",
        epochs.max * factor,
        period=converter(period_batch, factor),
        point=converter(batch),
    )
    if factor != 1:  # the epochs a config scaled again starts from
        _scale_epochs(plan, out, epochs, factor)


def _scale_epochs(
    plan: ScalingPlan, out: ConfigFormat, epochs: EpochSchedule, factor: float
) -> None:
    """Multiplies the schedule written in epochs by ``factor``, the warmup excepted."""
    keys = out.keys
    record = _recorder(plan, out)
    reason = f"{keys.schedule} noise: epochs x{factor:.3g}"
    for name in ("max", "checkpoint_period", "eval_period"):
        key = keys.child(keys.epochs, name)
        record(key, getattr(epochs, name) * factor, reason)
    steps = tuple(step * factor for step in epochs.steps)
    record(keys.child(keys.epochs, "steps"), steps, reason, old=epochs.steps)


def _set_schedule(
    plan: ScalingPlan,
    out: ConfigFormat,
    fields: list[ScheduleField],
    convert: Callable[[Any], int],
    why: Callable[[Any], str],
    written_as: str,
    max_epochs: float = 0.0,
    period: tuple[Callable[[Any], int], Callable[[Any], str]] | None = None,
    point: tuple[Callable[[Any], int], Callable[[Any], str]] | None = None,
) -> None:
    """Sets every field to ``convert`` of its written value, lengths first, refusing what
    rounding breaks: a length, step or period that becomes 0, steps that collide or reach their
    length. A fraction of the run (from epochs) is ``written / max_epochs``. ``period`` and
    ``point``: other ``(convert, why)`` for the periods and the warmup."""
    record = _recorder(plan, out)
    batch = out.get(out.keys.ims_per_batch)

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(
            f"{key}: {message} at {_gpus(plan.num_gpus)} ({batch} images/step; schedule written "
            f"{written_as}); lengthen the schedule or use fewer GPUs"
        )

    def length(key: str, written: Any) -> int:
        new = convert(written)
        if new < 1:
            raise fail(key, f"{written:g} rounds to 0 iterations")
        return new

    new_lengths = {}
    for f in fields:
        if f.kind == LENGTH:
            new_lengths[f.key] = length(f.key, f.written)
            record(f.key, new_lengths[f.key], why(f.written))
    for f in fields:
        if f.kind == STEPS:
            steps: Sequence[Any] = tuple(f.written)
            if f.length is None:  # the last value is the length
                *steps, written_max = steps
                max_iter, name = length(f.key, written_max), "its last value"
            else:
                written_max, name = f.length_written, f.length.rsplit(".", 1)[-1]
                max_iter = new_lengths.get(f.length) or out.get(f.length)
            new_steps = _convert_steps(f.key, steps, written_max, max_iter, name, convert, fail)
            if f.length is None:
                new_steps = (*new_steps, max_iter)
            factor = plan.epochs_factor
            reason = (
                f"same images seen as {list(f.written)} {written_as}"
                if factor == 1
                else f"{list(f.written)} {written_as}, epochs x{factor:.3g}"
            )
            record(f.key, new_steps, reason)
        elif f.kind == FRACTION:
            fraction = f.written / max_epochs
            record(f.key, fraction, f"{f.written:g} of {max_epochs:g} epochs")
        elif f.kind != LENGTH:
            own = {PERIOD: period, POINT: point}.get(f.kind)
            to, because = own or (convert, why)
            new = to(f.written)
            if f.kind == PERIOD and f.written > 0 and new == 0:
                raise fail(f.key, f"period {f.written:g} rounds to 0")
            record(f.key, new, because(f.written))


def _convert_steps(
    key: str,
    written_steps: Sequence[Any],
    written_max: Any,
    max_iter: int,
    length_name: str,
    convert: Callable[[Any], int],
    fail: Callable[[str, str], ConfigError],
) -> tuple[int, ...]:
    steps = tuple(convert(step) for step in written_steps)
    for old, new in zip(written_steps, steps, strict=True):
        if old > 0 and new == 0:
            raise fail(key, f"step {old:g} rounds to 0")
        if old < written_max and new >= max_iter:
            raise fail(key, f"step {old:g} rounds to {new}, not before {length_name} {max_iter}")
    for (old_a, old_b), new_b in zip(itertools.pairwise(written_steps), steps[1:], strict=True):
        if old_a < old_b and convert(old_a) >= new_b:
            raise fail(key, f"steps {old_a:g} and {old_b:g} collide (both {new_b})")
    return steps


def _gpus(count: int) -> str:
    return f"{count} GPU" if count == 1 else f"{count} GPUs"


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def format_value(value: Any) -> str:
    """A config value as changes print it: floats to 6 significant digits, sequences in
    parentheses."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple | list):
        return "(" + ", ".join(format_value(v) for v in value) + ")"
    return str(value)

"""The scaled schedule at several GPU counts, as one table (what ``plan`` prints).

The columns are the config's own keys: ``BASE_LR``, ``MAX_ITER``, ``STEPS``, ``WARMUP_ITERS`` for
a yacs config; ``optimizer.lr``, ``train.max_iter``, the milestones (in iterations of the run) and
the warmup in iterations for a LazyConfig. When the batch grows (AdaBatch) the table gets the
run's optimizer steps over the stages, and a second table lists the stages at each GPU count:
epochs, total batch and accumulation, LR factor and LR, steps.
"""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

from det_scaling.config import Recipe
from det_scaling.scaling.batch_schedule import BatchSchedule
from det_scaling.scaling.critical_batch import epochs_factor
from det_scaling.scaling.plan import ScalingPlan, plan_scaling
from det_scaling.scaling.rules import NOISE_SCHEDULE, applied_rule

__all__ = ["format_plan_table"]


def format_plan_table(cfg: Any, gpu_counts: list[int]) -> str:
    """The plan for each GPU count, as a plain-text table with a header describing the reference;
    then any field scaling left as written because it cannot tell what it measures."""
    rows = []
    stage_rows = []
    plans = [plan_scaling(cfg, num_gpus) for num_gpus in gpu_counts]
    written = plans[0].written
    dataset_size = written.dataset_size
    warnings: list[str] = []
    adam_keys = {pair[0] for pair in (written.betas, written.eps) if written.adam_sde and pair}
    adam_lines = []
    for num_gpus, plan in zip(gpu_counts, plans, strict=True):
        warnings = plan.warnings
        gpus = f"{num_gpus} GPU{'s' if num_gpus > 1 else ''}"
        adam_lines += [f"{gpus}: {change.format()}" for change in plan if change.key in adam_keys]
        scaled = plan.recipe
        schedule = BatchSchedule.from_recipe(scaled, num_gpus)
        per_gpu = schedule.micro_batch
        length = _length_text(schedule, schedule.total_images)
        if plan.scaling_rule.adascale:  # r = S: the reference's images; r = 1: S times them
            fewest = scaled.max_iter * (scaled.adascale_reference_batch or scaled.ims_per_batch)
            if fewest != schedule.total_images:
                length = f"{_length_text(schedule, fewest)} to {length}"
        rows.append(
            [
                num_gpus,
                _batch_text(schedule.ims_per_batch, per_gpu, schedule.grad_accum_steps),
                f"{scaled.base_lr:.6g}",
                scaled.max_iter,
                ", ".join(str(step) for step in scaled.steps),
                scaled.warmup_iters,
                length,
            ]
        )
        if schedule.grows:
            rows[-1].append(schedule.total_iterations)
            for stage in schedule.stages:
                epochs = f"{schedule.epochs(stage.start_images):.2f}-" + (
                    f"{schedule.epochs(stage.end_images):.2f}"
                )
                stage_rows.append(
                    [
                        num_gpus,
                        stage.index,
                        epochs,
                        _batch_text(stage.ims_per_batch, per_gpu, stage.grad_accum_steps),
                        f"{stage.lr_factor:.6g}",
                        f"{scaled.base_lr * stage.lr_factor:.6g}",
                        f"{stage.num_iters} ({stage.start_iter}-{stage.end_iter - 1})",
                    ]
                )
    lr_column = written.keys.plan_columns[0]
    noise = written.schedule == NOISE_SCHEDULE
    reference = written.reference_world_size
    header = (
        f"reference: {reference} GPU{'s' if reference > 1 else ''}, "
        f"{written.ims_per_batch} images/step, "
        f"{lr_column} {written.base_lr:.6g}; rule: {_rule_text(written)}"
        + ("; keep reference batch" if written.keep_reference_batch else "")
        + (f"; schedule: noise, B_crit {written.b_crit:g}" if noise else "")
        if reference
        else f"{written.keys.reference_world_size} is 0: the config is used as written at every "
        f"GPU count (set {written.keys.reference_world_size} to the GPU count it was written for "
        "to scale it: 8 for detectron2's model zoo)"
    )
    columns = ["GPUs", "images/step", *written.keys.plan_columns]
    columns.append("epochs" if dataset_size > 0 else "images seen")
    if stage_rows:
        columns.append("AdaBatch steps")
    table = header + "\n" + tabulate(rows, headers=columns, tablefmt="github")
    if stage_rows:
        table += "\n\n" + _format_stages(written, stage_rows)
    if not plans[0].scaling_rule.adascale and max(gpu_counts) > max(reference, 1):
        table += "\n\n" + _epochs_text(written, gpu_counts, plans)
    if adam_lines:
        table += "\n\n" + "\n".join(adam_lines)
    if plans[0].scaling_rule.adascale:
        lr, max_iter, steps, warmup = written.keys.plan_columns
        table += (
            f"\n\nadascale: {lr}, {max_iter}, {steps} and {warmup} are the reference batch's; "
            f"each step trains at r x the schedule's LR (r measured, 1 to S = batch / reference "
            f"batch) and advances the schedule by r, so a run takes {max_iter} / S to {max_iter} "
            "steps"
        )
    return table + "".join(f"\nwarning: {warning}" for warning in warnings)


def _epochs_text(written: Recipe, gpu_counts: list[int], plans: list[ScalingPlan]) -> str:
    """The epochs each GPU count needs for the reference's progress, by the critical-batch law;
    or, without a critical batch, how to get one."""
    keys = written.keys
    law = (
        "epochs: past the critical batch B_crit, a batch B needs (1 + B / B_crit) / "
        "(1 + B_ref / B_crit)\ntimes the reference's for its progress (McCandlish et al. 2018)"
    )
    if not written.b_crit > 0:
        # advise reads YAML configs; a LazyConfig measures the noise scale in training.
        measure = (
            "in training (docs/scaling.md)"
            if plans[0].adapter.is_lazy
            else "with `det-scaling advise CONFIG`"
        )
        return f"{law}.\nMeasure B_crit {measure}; then set {keys.b_crit} and {keys.schedule} noise"
    reference_epochs = None
    if written.dataset_size > 0:
        reference_epochs = written.max_iter * written.ims_per_batch / written.dataset_size
    lines = [f"{law}, with B_crit {written.b_crit:g}:"]
    for num_gpus, plan in zip(gpu_counts, plans, strict=True):
        batch = plan.recipe.ims_per_batch
        factor = epochs_factor(batch, written.ims_per_batch, written.b_crit)
        line = f"{num_gpus} GPU{'s' if num_gpus > 1 else ''}: {factor:.2f}x the epochs"
        if reference_epochs is not None:
            line += f", {reference_epochs * factor:.1f} of {reference_epochs:.1f}"
        lines.append(line + f" (batch {batch})")
    if written.schedule != NOISE_SCHEDULE:
        lines.append(f"the table keeps the images; {keys.schedule} noise trains these epochs")
    return "\n".join(lines)


def _format_stages(recipe: Recipe, stage_rows: list[list]) -> str:
    """The AdaBatch stages of every GPU count, under a line saying how the batch grows."""
    adabatch = recipe.adabatch
    lr, max_iter, steps, warmup = recipe.keys.plan_columns
    header = (
        f"AdaBatch: every {adabatch.interval_epochs:g} epochs, total batch "
        f"x{adabatch.batch_factor} (by accumulation) and LR x{adabatch.lr_factor:g}"
        + (f", {adabatch.max_stages} stages at most" if adabatch.max_stages else "")
        + f".\n{max_iter}, {steps} and {warmup} above count steps of the starting batch; the run "
        "takes the AdaBatch steps."
    )
    columns = ["GPUs", "stage", "epochs", "images/step", "LR factor", f"{lr} x factor", "steps"]
    return header + "\n" + tabulate(stage_rows, headers=columns, tablefmt="github")


def _length_text(schedule: BatchSchedule, images: int) -> str:
    epochs = schedule.epochs(images)
    return f"{epochs:.2f}" if epochs is not None else f"{images} images"


def _batch_text(total: int, per_gpu: int, accumulation: int) -> str:
    """``total (per_gpu/GPU x accumulation accum)``, the accumulation shown when above 1."""
    return f"{total} ({per_gpu}/GPU" + (f" x{accumulation} accum" if accumulation > 1 else "") + ")"


def _rule_text(recipe: Recipe) -> str:
    """The rule, and for ``auto`` the one it chose and why."""
    rule, why = applied_rule(recipe)
    if not why:  # named in the config
        return recipe.rule
    return f"auto, the {rule.name} rule ({why})" + (
        f"; {recipe.keys.adam_sde}" if recipe.adam_sde else ""
    )

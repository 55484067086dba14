"""The scaled schedule at several GPU counts, as one table (what ``plan`` prints).

When the batch grows (AdaBatch) the table gets the run's optimizer steps over the stages, and a
second table lists the stages at each GPU count: epochs, total batch and accumulation, LR factor
and LR, steps.
"""

from __future__ import annotations

from detectron2.config import CfgNode
from tabulate import tabulate

from det_scaling.batch_schedule import BatchSchedule
from det_scaling.scaling import plan_scaling

__all__ = ["format_plan_table"]


def format_plan_table(cfg: CfgNode, gpu_counts: list[int]) -> str:
    """The plan for each GPU count, as a plain-text table with a header describing the reference."""
    rows = []
    stage_rows = []
    dataset_size = cfg.SCALING.DATASET_SIZE
    for num_gpus in gpu_counts:
        scaled = plan_scaling(cfg, num_gpus).cfg
        solver = scaled.SOLVER
        schedule = BatchSchedule.from_cfg(scaled, num_gpus)
        per_gpu = schedule.micro_batch
        length = (
            f"{schedule.epochs(schedule.total_images):.2f}"
            if dataset_size > 0
            else f"{schedule.total_images} images"
        )
        rows.append(
            [
                num_gpus,
                _batch_text(schedule.ims_per_batch, per_gpu, schedule.grad_accum_steps),
                f"{solver.BASE_LR:.6g}",
                solver.MAX_ITER,
                ", ".join(str(step) for step in solver.STEPS),
                solver.WARMUP_ITERS,
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
                        f"{solver.BASE_LR * stage.lr_factor:.6g}",
                        f"{stage.num_iters} ({stage.start_iter}-{stage.end_iter - 1})",
                    ]
                )
    reference = cfg.SOLVER.REFERENCE_WORLD_SIZE
    header = (
        f"reference: {reference} GPU{'s' if reference > 1 else ''}, "
        f"{cfg.SOLVER.IMS_PER_BATCH} images/step, "
        f"BASE_LR {cfg.SOLVER.BASE_LR:.6g}; rule: {cfg.SCALING.RULE}"
        + ("; keep reference batch" if cfg.SCALING.KEEP_REFERENCE_BATCH else "")
        if reference
        else "SOLVER.REFERENCE_WORLD_SIZE is 0: the config is used as written at every GPU count"
    )
    columns = ["GPUs", "images/step", "BASE_LR", "MAX_ITER", "STEPS", "WARMUP_ITERS"]
    columns.append("epochs" if dataset_size > 0 else "images seen")
    if stage_rows:
        columns.append("AdaBatch steps")
    table = header + "\n" + tabulate(rows, headers=columns, tablefmt="github")
    return table + "\n\n" + _format_stages(cfg, stage_rows) if stage_rows else table


def _format_stages(cfg: CfgNode, stage_rows: list[list]) -> str:
    """The AdaBatch stages of every GPU count, under a line saying how the batch grows."""
    adabatch = cfg.SCALING.ADABATCH
    header = (
        f"AdaBatch: every {adabatch.INTERVAL_EPOCHS:g} epochs, total batch "
        f"x{adabatch.BATCH_FACTOR} (by accumulation) and LR x{adabatch.LR_FACTOR:g}"
        + (f", {adabatch.MAX_STAGES} stages at most" if adabatch.MAX_STAGES else "")
        + ".\nMAX_ITER, STEPS and WARMUP_ITERS above count steps of the starting batch; the run "
        "takes the AdaBatch steps."
    )
    columns = ["GPUs", "stage", "epochs", "images/step", "LR factor", "BASE_LR x factor", "steps"]
    return header + "\n" + tabulate(stage_rows, headers=columns, tablefmt="github")


def _batch_text(total: int, per_gpu: int, accumulation: int) -> str:
    """``total (per_gpu/GPU x accumulation accum)``, the accumulation shown when above 1."""
    return f"{total} ({per_gpu}/GPU" + (f" x{accumulation} accum" if accumulation > 1 else "") + ")"

"""``plan CONFIG --num-gpus 1 2 4 8``: the scaled schedule at each GPU count, as one table.

With ``SCALING.ADABATCH.ENABLED`` the table gets the run's optimizer steps over the stages, and a
second table lists the stages at each GPU count: epochs, total batch and accumulation, LR factor
and LR, steps.
"""

from __future__ import annotations

import argparse

from detectron2.config import CfgNode
from tabulate import tabulate

from det_scaling.adabatch import adabatch_schedule
from det_scaling.cli._common import (
    add_config_argument,
    add_num_gpus_argument,
    add_overrides_argument,
)
from det_scaling.config import load_cfg
from det_scaling.progress import epochs_seen, images_seen
from det_scaling.scaling import plan_scaling


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="table of batch, LR and schedule at several GPU counts",
        description="Scale CONFIG to each GPU count and print batch, LR and schedule side by side "
        "(like the Detectron tutorial's 1/2/4/8-GPU table).",
    )
    add_config_argument(parser)
    add_num_gpus_argument(parser, multiple=True)
    add_overrides_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_cfg(args.config, args.opts)
    print(format_plan_table(cfg, args.num_gpus))
    return 0


def format_plan_table(cfg: CfgNode, gpu_counts: list[int]) -> str:
    """The plan for each GPU count, as a plain-text table with a header describing the reference."""
    rows = []
    stage_rows = []
    dataset_size = cfg.SCALING.DATASET_SIZE
    for num_gpus in gpu_counts:
        scaled = plan_scaling(cfg, num_gpus).cfg
        solver = scaled.SOLVER
        accumulation = scaled.SCALING.GRAD_ACCUM_STEPS
        per_gpu = solver.IMS_PER_BATCH // (num_gpus * accumulation)
        adabatch = adabatch_schedule(scaled)
        seen = images_seen(solver.MAX_ITER, solver.IMS_PER_BATCH)
        length = (
            f"{epochs_seen(solver.MAX_ITER, solver.IMS_PER_BATCH, dataset_size):.2f}"
            if dataset_size > 0
            else f"{seen} images"
        )
        rows.append(
            [
                num_gpus,
                _batch_text(solver.IMS_PER_BATCH, per_gpu, accumulation),
                f"{solver.BASE_LR:.6g}",
                solver.MAX_ITER,
                ", ".join(str(step) for step in solver.STEPS),
                solver.WARMUP_ITERS,
                length,
            ]
        )
        if adabatch is not None:
            rows[-1].append(adabatch.total_iterations)
            for stage in adabatch.stages:
                epochs = (
                    f"{stage.start_images / dataset_size:.2f}-{stage.end_images / dataset_size:.2f}"
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

"""``plan CONFIG --num-gpus 1 2 4 8``: the scaled schedule at each GPU count, as one table."""

from __future__ import annotations

import argparse

from detectron2.config import CfgNode
from tabulate import tabulate

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
    dataset_size = cfg.SCALING.DATASET_SIZE
    for num_gpus in gpu_counts:
        scaled = plan_scaling(cfg, num_gpus).cfg
        solver = scaled.SOLVER
        accumulation = scaled.SCALING.GRAD_ACCUM_STEPS
        per_gpu = solver.IMS_PER_BATCH // (num_gpus * accumulation)
        seen = images_seen(solver.MAX_ITER, solver.IMS_PER_BATCH)
        length = (
            f"{epochs_seen(solver.MAX_ITER, solver.IMS_PER_BATCH, dataset_size):.2f}"
            if dataset_size > 0
            else f"{seen} images"
        )
        rows.append(
            [
                num_gpus,
                f"{solver.IMS_PER_BATCH} ({per_gpu}/GPU"
                + (f" x{accumulation} accum" if accumulation > 1 else "")
                + ")",
                f"{solver.BASE_LR:.6g}",
                solver.MAX_ITER,
                ", ".join(str(step) for step in solver.STEPS),
                solver.WARMUP_ITERS,
                length,
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
    return header + "\n" + tabulate(rows, headers=columns, tablefmt="github")

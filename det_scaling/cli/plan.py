"""``plan CONFIG --num-gpus 1 2 4 8``: batch, LR and schedule at each GPU count, as one table."""

from __future__ import annotations

import argparse

from det_scaling.cli._common import (
    add_config_argument,
    add_golden_arguments,
    add_num_gpus_argument,
    add_overrides_argument,
    run_golden,
)
from det_scaling.commands.plan import format_plan_table
from det_scaling.config import load_cfg
from det_scaling.testing import plan_golden


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="table of batch, LR and schedule at several GPU counts",
        description="Scale CONFIG to each GPU count and print batch, LR and schedule side by side "
        "(like the Detectron tutorial's 1/2/4/8-GPU table). With --check EXPECTED, compare the "
        "table with the golden file EXPECTED instead (exit status 0 equal, 1 not, 2 missing).",
    )
    add_config_argument(parser)
    add_num_gpus_argument(parser, multiple=True)
    add_overrides_argument(parser)
    add_golden_arguments(parser, "the table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.check or args.update:
        line = ["det-scaling", "plan", args.config, "--num-gpus", *map(str, args.num_gpus)]
        return run_golden(
            args,
            [*line, *args.opts],
            lambda title, accept: plan_golden(
                args.config, args.opts, args.num_gpus, title=title, accept=accept
            ),
        )
    cfg = load_cfg(args.config, args.opts)
    print(format_plan_table(cfg, args.num_gpus))
    return 0

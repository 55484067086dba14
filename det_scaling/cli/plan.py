"""``plan CONFIG --num-gpus 1 2 4 8``: batch, LR and schedule at each GPU count, as one table."""

from __future__ import annotations

import argparse

from det_scaling.cli._common import (
    add_config_argument,
    add_num_gpus_argument,
    add_overrides_argument,
)
from det_scaling.commands.plan import format_plan_table
from det_scaling.config import load_cfg


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

"""``diff CONFIG [CONFIG_B] [--num-gpus N] [KEY VALUE ...]``: which keys differ, and why.

The left side is CONFIG as written. The right side is CONFIG_B (or CONFIG), with the overrides
merged, then scaled to --num-gpus when given. Each differing key is printed on one line as
KEY: old -> new  (reason). Exit status 0 when it ran, whether or not anything differs.
"""

from __future__ import annotations

import argparse

from det_scaling.cli._common import (
    add_config_argument,
    add_num_gpus_argument,
    add_overrides_argument,
)
from det_scaling.commands.diff import diff_configs


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "diff",
        help="keys that differ between two configs, or a config and its scaled version",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_argument(parser)
    add_num_gpus_argument(parser, multiple=False)
    parser.add_argument(
        "config_b", metavar="CONFIG_B", nargs="?", help="a second config to compare with"
    )
    add_overrides_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    changes = diff_configs(args.config, args.config_b, args.opts, args.num_gpus)
    for change in changes:
        print(change.format())
    if not changes:
        print("no differences")
    return 0

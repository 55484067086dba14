"""``diff CONFIG [CONFIG_B] [--num-gpus N] [KEY VALUE ...]``: which keys differ, and why.

The left side is CONFIG as written. The right side is CONFIG_B (or CONFIG), with the overrides
merged, then scaled to --num-gpus when given. Each differing key is printed on one line as
KEY: old -> new  (reason). Exit status 0 when it ran, whether or not anything differs.

With --check EXPECTED it prints nothing of the kind: it compares that output with the golden file
EXPECTED (written by --update EXPECTED) and exits 0 when they are equal, 1 with why and a unified
diff when not, 2 when EXPECTED is missing; a config-diff test for CI.
"""

from __future__ import annotations

import argparse

from det_scaling.cli._common import (
    add_config_argument,
    add_golden_arguments,
    add_num_gpus_argument,
    add_overrides_argument,
    run_golden,
)
from det_scaling.commands.diff import diff_configs, format_diff
from det_scaling.config import find_config_file
from det_scaling.testing import diff_golden


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
        "config_b",
        metavar="CONFIG_B",
        nargs="?",
        type=find_config_file,
        help="a second config to compare with (a path or a name, as CONFIG)",
    )
    add_overrides_argument(parser)
    add_golden_arguments(parser, "the keys that differ")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.check or args.update:
        line = ["det-scaling", "diff", args.config, *filter(None, [args.config_b])]
        line += ["--num-gpus", str(args.num_gpus)] if args.num_gpus is not None else []
        return run_golden(
            args,
            [*line, *args.opts],
            lambda title, accept: diff_golden(
                args.config, args.config_b, args.opts, args.num_gpus, title=title, accept=accept
            ),
        )
    changes = diff_configs(args.config, args.config_b, args.opts, args.num_gpus)
    print(format_diff(changes), end="")
    return 0

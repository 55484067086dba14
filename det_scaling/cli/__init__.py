"""``python -m det_scaling COMMAND`` / ``det-scaling COMMAND``: one module per command.

A command module holds its arguments and output only: ``add_parser(subparsers)`` adds its
sub-parser and sets ``func`` (called with the parsed arguments, returning the exit code); the work
is in the library module of the same name (``det_scaling.plan``, ``.diff``, ``.lr_plot``,
``.lr_find``, ``.noise_scale``, ``.train``). A ``ValueError`` is a bad input: one line, exit
status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from det_scaling.cli._common import split_overrides

# Module names under det_scaling.cli, in the order ``--help`` lists them.
COMMANDS = ("plan", "diff", "lr_plot", "lr_find", "noise_scale", "train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="det-scaling",
        description="Scale detectron2 configs across GPU counts, and show what changes.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"det_scaling.cli.{name}").add_parser(subparsers)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line's arguments; ``opts`` holds the ``KEY VALUE`` overrides found anywhere.
    Exits with a usage error (status 2) when they do not parse."""
    parser = build_parser()
    try:
        rest, overrides = split_overrides(argv)
    except ValueError as error:
        parser.error(str(error))
    args = parser.parse_args(rest)
    args.opts = overrides
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except ValueError as error:  # bad config or arguments: one clear line, no traceback
        print(f"det-scaling {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

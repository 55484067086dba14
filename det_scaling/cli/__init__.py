"""``python -m det_scaling COMMAND`` / ``det-scaling COMMAND``: one module per command.

A command module holds its arguments and output only: ``add_parser(subparsers)`` adds its
sub-parser and sets ``func`` (called with the parsed arguments, returning the exit code); the work
is in :mod:`det_scaling.commands`, in the module of the same name. A
:class:`~det_scaling.errors.ConfigError` is a bad input: one line, exit status 2, also when a
process of the run raised it. A process of a run that failed otherwise
(:class:`~det_scaling.engine.failures.RankFailedError`) is one line naming the rank and the cause,
its traceback in the rank's log: exit status 1. Any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from det_scaling import __version__
from det_scaling.errors import ConfigError

# Module names under det_scaling.cli, in the order ``--help`` lists them.
COMMANDS = ("plan", "advise", "diff", "lr_plot", "lr_find", "noise_scale", "train", "data", "env")
VERSION = f"det-scaling {__version__}"


class _OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other bad input (argparse
    prints the usage first); ``--help`` shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(
        prog="det-scaling",
        description="Scale detectron2 configs across GPU counts, and show what changes.",
    )
    parser.add_argument("--version", action="version", version=VERSION)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"det_scaling.cli.{name}").add_parser(subparsers)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line's arguments; ``opts`` holds the ``KEY VALUE`` overrides found anywhere.
    Exits with a usage error (status 2) when they do not parse."""
    if list(argv) == ["--version"]:  # answered before the commands, and torch, are imported
        print(VERSION)
        raise SystemExit(0)
    from det_scaling.cli._common import split_overrides  # detectron2's config, and torch

    parser = build_parser()
    try:
        rest, overrides = split_overrides(argv)
    except ConfigError as error:
        parser.error(str(error))
    args = parser.parse_args(rest)
    args.opts = overrides
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from det_scaling.engine.failures import RankFailedError  # torch, once a command runs

    try:
        return args.func(args)
    except ConfigError as error:  # bad config or arguments: one clear line, no traceback
        print(f"det-scaling {args.command}: error: {error}", file=sys.stderr)
        return 2
    except RankFailedError as error:  # the traceback is in the rank's log, or printed after
        if error.failure.config_error:  # found only in a process of the run: still one line
            print(
                f"det-scaling {args.command}: error: {error.failure.config_error}", file=sys.stderr
            )
            return 2
        print(f"det-scaling {args.command}: error: {error}", file=sys.stderr)
        if error.failure.traceback:
            print(error.failure.traceback, file=sys.stderr, end="")
        return 1


if __name__ == "__main__":
    sys.exit(main())

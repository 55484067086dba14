"""``env [--json]``: the machine a run would be made on, as every run's summary records it."""

from __future__ import annotations

import argparse
import json

from det_scaling.commands.env import environment_report
from det_scaling.utils.environment import collect_environment


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "env",
        help="versions, CPU, GPUs, threads and numerics settings of this machine",
        description="Print detectron2's environment table (collect_env_info), then what "
        "det-scaling adds: its commit and whether the checkout is dirty, the CPU capability, "
        "torch's threads and the environment variables that change CPU numerics. The same record "
        "is the 'environment' block of every run's summary.json.",
    )
    parser.add_argument("--json", action="store_true", help="print the record as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(collect_environment(), indent=2))
    else:
        print(environment_report())
    return 0

"""``lr-plot CONFIG --num-gpus 1 2 4 8 -o lr.png`` (implemented with the solver, issue 3)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    del subparsers  # registered once det_scaling.solver provides the schedules

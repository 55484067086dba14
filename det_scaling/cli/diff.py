"""``diff CONFIG [CONFIG_B] [--num-gpus N] [KEY VALUE ...]``: which keys differ, and why.

The left side is CONFIG as written. The right side is CONFIG_B (or CONFIG), with the overrides
merged, then scaled to ``--num-gpus`` when given. Each differing key is printed on one line as
``KEY: old -> new  (reason)``. Exit status 0 when it ran, whether or not anything differs.
"""

from __future__ import annotations

import argparse
from typing import Any

from detectron2.config import CfgNode

from det_scaling.cli._common import (
    add_config_argument,
    add_num_gpus_argument,
    add_overrides_argument,
)
from det_scaling.config import load_cfg
from det_scaling.scaling import Change, plan_scaling

_ABSENT = "<absent>"


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


def diff_configs(
    config: str, config_b: str | None, opts: list[str], num_gpus: int | None
) -> list[Change]:
    """The changes from ``config`` to ``config_b`` (or ``config``) + ``opts``, scaled to
    ``num_gpus`` when given, sorted by key."""
    left = load_cfg(config)
    right_file = config_b or config
    right = load_cfg(right_file)
    reasons: dict[str, str] = {}
    if config_b:
        flat_b = _flatten(right)
        for key, value in _flatten(left).items():
            if flat_b.get(key, _ABSENT) != value:
                reasons[key] = f"from {config_b}"
    if opts:
        right.merge_from_list(opts)
        for key in opts[::2]:
            reasons[key] = "override"
    if num_gpus is not None:
        plan = plan_scaling(right, num_gpus)
        right = plan.cfg
        for change in plan.changes:
            earlier = reasons.get(change.key)
            reasons[change.key] = f"{earlier}, then {change.reason}" if earlier else change.reason
    flat_left, flat_right = _flatten(left), _flatten(right)
    changes = []
    for key in sorted(flat_left.keys() | flat_right.keys()):
        old, new = flat_left.get(key, _ABSENT), flat_right.get(key, _ABSENT)
        if old != new:
            changes.append(Change(key, old, new, reasons.get(key, f"from {right_file}")))
    return changes


def _flatten(cfg: CfgNode, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, CfgNode):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return flat

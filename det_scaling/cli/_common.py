"""Arguments shared by the commands: a config file, KEY VALUE overrides, GPU counts."""

from __future__ import annotations

import argparse
import functools
import re
from collections.abc import Sequence

# detectron2 config keys are upper-case dotted paths (SOLVER.BASE_LR, MODEL.RPN.NMS_THRESH), or a
# top-level key of the default config (OUTPUT_DIR, SEED).
_DOTTED_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


@functools.cache
def _top_level_keys() -> frozenset[str]:
    from det_scaling.config import get_cfg

    return frozenset(key for key, value in get_cfg().items() if not isinstance(value, dict))


def _is_config_key(token: str) -> bool:
    return bool(_DOTTED_CONFIG_KEY.match(token)) or token in _top_level_keys()


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates ``KEY VALUE`` config overrides from the other arguments, wherever they stand, so
    ``plan CFG --num-gpus 1 2 SOLVER.BASE_LR 0.01`` and ``plan CFG SOLVER.BASE_LR 0.01
    --num-gpus 1 2`` mean the same. Returns (other arguments, overrides)."""
    rest: list[str] = []
    overrides: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        if _is_config_key(token):
            value = next(tokens, None)
            if value is None:
                raise ValueError(f"config override {token} has no value")
            overrides += [token, value]
        else:
            rest.append(token)
    return rest, overrides


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="detectron2 YAML config (_BASE_ allowed)")


def add_overrides_argument(parser: argparse.ArgumentParser) -> None:
    """Documents the overrides in ``--help``; :func:`split_overrides` fills ``args.opts``."""
    parser.add_argument(
        "opts",
        metavar="KEY VALUE",
        nargs="*",
        help="config overrides, anywhere on the line (e.g. SOLVER.BASE_LR 0.01)",
    )


def add_num_gpus_argument(parser: argparse.ArgumentParser, *, multiple: bool) -> None:
    if multiple:
        parser.add_argument(
            "--num-gpus",
            type=_positive_int,
            nargs="+",
            default=[1, 2, 4, 8],
            metavar="N",
            help="GPU counts to scale to (default: 1 2 4 8)",
        )
    else:
        parser.add_argument(
            "--num-gpus", type=_positive_int, default=None, metavar="N", help="GPUs to scale to"
        )


def add_processes_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--num-gpus N`` of a command that runs on the config's reference batch: the processes to
    ``what`` on, gradient accumulation making up the rest of the batch."""
    parser.add_argument(
        "--num-gpus",
        type=_positive_int,
        default=1,
        metavar="N",
        help=f"processes to {what} on (GPUs, or CPU processes without them); gradient "
        "accumulation makes up the rest of the reference batch (default: 1)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value

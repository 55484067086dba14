"""Arguments shared by the commands: a config file, its overrides, GPU counts.

Overrides stand anywhere on the line: ``KEY VALUE`` pairs for a YAML config (detectron2's
``train_net.py``), ``key=value`` tokens for a LazyConfig (its ``lazyconfig_train_net.py``)."""

from __future__ import annotations

import argparse
import functools
import os
import re
import shlex
from collections.abc import Callable, Sequence

from det_scaling.config import find_config_file
from det_scaling.errors import ConfigError
from det_scaling.testing import Golden, compare_golden, write_golden

# detectron2 config keys are upper-case dotted paths (SOLVER.BASE_LR, MODEL.RPN.NMS_THRESH), or a
# top-level key of the default config (OUTPUT_DIR, SEED).
_DOTTED_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")
# A LazyConfig override: a dotted key (list items as key[i]; + to add a key), "=", a value.
_KEY_EQUALS_VALUE = re.compile(r"^\+?[A-Za-z_][\w.\[\]]*=")


@functools.cache
def _top_level_keys() -> frozenset[str]:
    from det_scaling.config import get_cfg

    return frozenset(key for key, value in get_cfg().items() if not isinstance(value, dict))


def _is_config_key(token: str) -> bool:
    return bool(_DOTTED_CONFIG_KEY.match(token)) or token in _top_level_keys()


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates config overrides from the other arguments, wherever they stand, so
    ``plan CFG --num-gpus 1 2 SOLVER.BASE_LR 0.01`` and ``plan CFG SOLVER.BASE_LR 0.01
    --num-gpus 1 2`` mean the same (and ``plan CFG.py optimizer.lr=0.01 --num-gpus 2``).
    Returns (other arguments, overrides): ``KEY VALUE`` pairs and ``key=value`` tokens as given;
    the config loader checks that they suit the config."""
    rest: list[str] = []
    overrides: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        if _KEY_EQUALS_VALUE.match(token):
            overrides.append(token)
        elif _is_config_key(token):
            value = next(tokens, None)
            if value is None:
                raise ConfigError(f"config override {token} has no value")
            overrides += [token, value]
        else:
            rest.append(token)
    return rest, overrides


CONFIG_HELP = (
    "detectron2 config: YAML (_BASE_ allowed) or a LazyConfig .py file; a path, or a name among "
    "det-scaling's configs or detectron2's model zoo (COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml)"
)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config",
        metavar="CONFIG",
        type=find_config_file,
        help=CONFIG_HELP,
    )


def add_overrides_argument(parser: argparse.ArgumentParser) -> None:
    """Documents the overrides in ``--help``; :func:`split_overrides` fills ``args.opts``."""
    parser.add_argument(
        "opts",
        metavar="KEY VALUE",
        nargs="*",
        default=[],  # else argparse names it among the missing arguments of a usage error
        help="config overrides, anywhere on the line: KEY VALUE for YAML (e.g. SOLVER.BASE_LR "
        "0.01), key=value for a LazyConfig (e.g. optimizer.lr=0.01)",
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


def check_image_file(path: str, option: str) -> None:
    """:func:`check_output_file`, and a file type matplotlib can write (.png when none)."""
    check_output_file(path, option)
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = os.path.splitext(path)[1][1:].lower()
    if suffix and suffix not in FigureCanvasBase.get_supported_filetypes():
        raise ConfigError(f"{option} {path}: cannot write .{suffix} images; use .png, .pdf or .svg")


def check_output_file(path: str, option: str) -> None:
    """Raises ``ConfigError`` naming ``option`` when ``path`` cannot be written: its folder is
    missing or not writable, or it is a folder itself. Checked before any work is done."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigError(f"{option} {path}: is a directory; give a file name")
    if not os.path.isdir(folder):
        raise ConfigError(f"{option} {path}: no such directory {folder}; create it first")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"{option} {path}: directory {folder} is not writable")


def add_golden_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--check EXPECTED`` and ``--update EXPECTED``: ``what`` the command prints, compared with
    or written to a golden file (a config-diff test in CI)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--check",
        metavar="EXPECTED",
        help=f"compare {what} with the golden file EXPECTED instead of printing it: exit status 0 "
        "when equal; 1 with why and a unified diff when not; 2 when EXPECTED is missing. Lines "
        "of EXPECTED that start with # are not compared",
    )
    group.add_argument(
        "--update",
        metavar="EXPECTED",
        help=f"write {what} to EXPECTED, with notes on where each value is written (# lines), "
        "for --check",
    )


def run_golden(
    args: argparse.Namespace, command_line: list[str], build: Callable[[str, str], Golden]
) -> int:
    """``--check`` or ``--update`` with the golden text ``build(title, accept)`` returns (see
    :mod:`det_scaling.testing.golden`). ``command_line`` is the command without the option: the
    golden file's title, and with ``--update EXPECTED`` the command that accepts a change."""
    path = args.check or args.update
    accept = shlex.join([*command_line, "--update", path])
    prefix = f"det-scaling {args.command}:"
    if args.update:
        check_output_file(path, "--update")
        written = write_golden(path, build(shlex.join(command_line), accept))
        print(f"{prefix} wrote {path}" if written else f"{prefix} {path} is up to date")
        return 0
    golden = build(shlex.join(command_line), accept)
    report = compare_golden(path, golden)
    if report is None:
        print(f"{prefix} {path} matches")
        return 0
    print(f"{prefix} {path} differs from what the config gives now; accept with: {accept}")
    print("\n".join(report))
    return 1

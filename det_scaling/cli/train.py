"""``train --config-file CONFIG [--num-gpus N] [--resume] [KEY VALUE ...]`` (tools/train.py).

Scales CONFIG to the processes of the run (batch, LR by SCALING.RULE, the schedule in images
seen), prints and saves the plan, and trains with det_scaling's trainer; detectron2's train_net.py
arguments. CONFIG is a YAML config (KEY VALUE overrides) or a LazyConfig .py file (key=value
overrides, as detectron2's lazyconfig_train_net.py). Without GPUs, --num-gpus N runs N processes
on the CPU (gloo). The config is checked in this process first: a bad config exits 2 with one
line, before any process starts. When a process of the run fails, one line names the rank and the
cause (its full traceback is in OUTPUT_DIR/log.txt.rank<N>) and the exit status is 1. Under
torchrun, a restarted worker group resumes from OUTPUT_DIR's last checkpoint by itself, at the
new world size. MODEL.WEIGHTS that is a .pkl file outside detectron2's model-zoo cache is read
only with --allow-pickled-weights: reading one can run code in it.
"""

from __future__ import annotations

import argparse
import re
from datetime import timedelta

from det_scaling.cli._common import CONFIG_HELP, add_overrides_argument
from det_scaling.config import LAZY_KEYS, YACS_KEYS, find_config_file, is_lazy_config_file
from det_scaling.engine.launch import DEFAULT_TIMEOUT
from det_scaling.engine.preemption import DEFAULT_SIGNALS, PREEMPTED_EXIT_STATUS

# --dist-timeout units.
_SECONDS_PER = {"": 1, "s": 1, "m": 60, "h": 3600}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train (or evaluate) a config on N processes, scaled for them",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_training_arguments(parser)
    parser.add_argument(
        "--allow-pickled-weights",
        action="store_true",
        # Absent unless given, so the parsed arguments are training_args'; run turns it into an
        # override (config_overrides).
        default=argparse.SUPPRESS,
        help="read MODEL.WEIGHTS (train.init_checkpoint) that is a .pkl file from anywhere, not "
        "only from detectron2's model-zoo cache: reading one can run code in it, so only for "
        "files you trust (sets MODEL.ALLOW_PICKLED_WEIGHTS, train.allow_pickled_weights)",
    )
    add_overrides_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from det_scaling.commands.train import launch_training  # the engine: only for this command

    launch_training(config_overrides(args))
    return 0


def config_overrides(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the flags that set a config key (``--allow-pickled-weights``) turned into
    overrides at the end of ``args.opts``, in the config's style: every process of the run loads
    the config with them, and the saved plan records them."""
    args = argparse.Namespace(**vars(args))
    if vars(args).pop("allow_pickled_weights", False):
        if is_lazy_config_file(args.config_file):
            args.opts = [*args.opts, f"{LAZY_KEYS.allow_pickled_weights}=True"]
        else:
            args.opts = [*args.opts, YACS_KEYS.allow_pickled_weights, "True"]
    return args


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """detectron2's ``train_net.py`` arguments, and ``--no-scale``."""
    parser.add_argument(
        "--config-file", required=True, metavar="FILE", type=find_config_file, help=CONFIG_HELP
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint in OUTPUT_DIR (also at another GPU count)",
    )
    parser.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS only")
    parser.add_argument(
        "--num-gpus",
        type=int,
        default=1,
        help="processes per machine (GPUs; CPU processes with gloo without them)",
    )
    parser.add_argument("--num-machines", type=int, default=1, help="machines in the run")
    parser.add_argument("--machine-rank", type=int, default=0, help="this machine's rank")
    parser.add_argument(
        "--dist-url",
        default="auto",
        help="process group URL, tcp://HOST0:PORT on several machines (default: a free local "
        "port on one machine)",
    )
    parser.add_argument(
        "--dist-timeout",
        type=_duration,
        default=DEFAULT_TIMEOUT,
        metavar="TIME",
        help="longest wait in a collective, e.g. for a peer that died (seconds, or with s/m/h: "
        "90, 5m; default 30m). With NCCL see docs/failures.md (TORCH_NCCL_ASYNC_ERROR_HANDLING)",
    )
    parser.add_argument(
        "--preempt-on",
        type=_signal_names,
        default=DEFAULT_SIGNALS,
        metavar="SIGNALS",
        help="signals that stop the run at the next step with a checkpoint, exit status "
        f"{PREEMPTED_EXIT_STATUS} (comma-separated; default {','.join(DEFAULT_SIGNALS)}; none: "
        "off)",
    )
    parser.add_argument(
        "--no-scale",
        action="store_true",
        help="use the config as written for whatever GPU count runs it (sets "
        "SOLVER.REFERENCE_WORLD_SIZE, or train.reference_world_size, 0: the batch written is "
        "then the total batch)",
    )


def _signal_names(text: str) -> tuple[str, ...]:
    if text.strip().lower() == "none":
        return ()
    names = tuple(name.strip().upper() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in {"SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT"}]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"not signal names: {text!r} (SIGTERM, SIGUSR1, SIGUSR2, SIGINT, comma-separated, or "
            "none)"
        )
    return names


def _duration(text: str) -> timedelta:
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smh]?)\s*", text)
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(
            f"not a positive duration: {text!r} (seconds, or a number with s, m or h: 90, 5m)"
        )
    return timedelta(seconds=float(match.group(1)) * _SECONDS_PER[match.group(2)])

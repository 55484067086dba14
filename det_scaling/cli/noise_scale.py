"""``noise-scale CONFIG [--num-gpus N] [--num-iter N] [--start-iter N] [KEY VALUE ...]``.

Measures the gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018) of CONFIG's
model on its training data: trains --num-iter steps of the config's schedule from --start-iter
(from MODEL.WEIGHTS if set, e.g. a checkpoint late in training) at the batch the config is
written for, reading the gradient norms at the two batch sizes each step has. Prints B_simple,
how it moved during the measurement, and the GPU count up to which the linear scaling rule is
expected to hold for the config's per-GPU batch (total batch <= B_simple). Nothing is written
unless --csv is given.
"""

from __future__ import annotations

import argparse

from tabulate import tabulate

from det_scaling.cli._common import (
    _positive_int,
    add_config_argument,
    add_overrides_argument,
    add_processes_argument,
    check_output_file,
)
from det_scaling.commands import noise_scale
from det_scaling.config import load_cfg, require_yaml_config

# The GPU counts of the table printed with the limit.
TABLE_GPU_COUNTS = [1, 2, 4, 8, 16]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "noise-scale",
        help="measure the gradient noise scale: up to how many GPUs the linear rule holds",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_argument(parser)
    add_processes_argument(parser, "measure")
    parser.add_argument(
        "--num-iter",
        type=_positive_int,
        default=noise_scale.DEFAULT_NUM_ITER,
        metavar="N",
        help=f"optimizer steps measured (default: {noise_scale.DEFAULT_NUM_ITER})",
    )
    parser.add_argument(
        "--start-iter",
        type=int,
        default=0,
        metavar="N",
        help="step of the config's schedule to start at (default: 0), counted at the batch "
        "the config is written for",
    )
    parser.add_argument(
        "--windows",
        type=_positive_int,
        default=noise_scale.DEFAULT_WINDOWS,
        metavar="K",
        help=f"windows of steps B_simple is shown for (default: {noise_scale.DEFAULT_WINDOWS})",
    )
    parser.add_argument("--csv", metavar="PATH", help="write every step's norms to PATH")
    add_overrides_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require_yaml_config(args.config, "noise-scale")
    if args.csv:
        check_output_file(args.csv, "--csv")
    cfg = load_cfg(args.config, args.opts)
    print(
        f"noise-scale: {args.config}: {args.num_iter} steps from step {args.start_iter} on "
        f"{args.num_gpus} process(es)",
        flush=True,
    )
    result = noise_scale.launch_noise_scale(
        cfg, args.num_gpus, num_iter=args.num_iter, start_iter=args.start_iter
    )
    first = result.norms[0]
    print(
        f"batch: {result.ims_per_batch} images/step ({result.world_size} process(es) x "
        f"{result.grad_accum_steps} micro-batch(es) of {result.micro_batch}); the two batch "
        f"sizes: {first.small_batch} and {first.big_batch} images; LR {result.lrs[0]:.3g} -> "
        f"{result.lrs[-1]:.3g}"
    )
    for note in result.notes:
        print(f"note: {note}")
    rows = [
        {
            "steps": f"{w.first}-{w.last}",
            "loss": round(result.window_loss(w), 4),
            "|G|^2": f"{w.sq_grad_norm:.4g}",
            "tr(Sigma)": f"{w.trace_sigma:.4g}",
            "B_simple": _format(w),
        }
        for w in result.windows(args.windows)
    ]
    print(tabulate(rows, headers="keys", tablefmt="github"))
    overall = result.overall
    print(f"B_simple over the {overall.steps} steps: {_format(overall)} images")
    written = result.cfg.SOLVER
    print(
        f"per-GPU batch as written: {result.per_gpu_batch} image(s) (SOLVER.IMS_PER_BATCH "
        f"{written.IMS_PER_BATCH}, SOLVER.REFERENCE_WORLD_SIZE {written.REFERENCE_WORLD_SIZE})"
    )
    limit = result.gpu_limit()
    if limit is None:
        print("the signal |G|^2 was not resolved: measure longer (--num-iter) or later in training")
    else:
        print(
            f"linear rule expected to hold up to {limit} GPU(s) of {result.per_gpu_batch} "
            f"image(s): total batch <= B_simple"
        )
        table = [
            {
                "GPUs": gpus,
                "total batch": gpus * result.per_gpu_batch,
                "<= B_simple": "yes" if gpus <= limit else "no",
            }
            for gpus in TABLE_GPU_COUNTS
        ]
        print(tabulate(table, headers="keys", tablefmt="github"))
        pointer = past_the_limit(limit)
        if pointer:
            print(pointer)
    if args.csv:
        result.write_csv(args.csv)
        print(f"wrote {args.csv}")
    return 0


def past_the_limit(limit: int) -> str | None:
    """What to use past the linear rule's GPU limit, when the table's counts go past it."""
    if limit >= TABLE_GPU_COUNTS[-1]:
        return None
    return (
        f"past {limit} GPU(s): consider SCALING.RULE adascale, which measures how much of the "
        "larger batch's LR the gradients allow (docs/scaling.md, AdaScale)"
    )


def _format(window: noise_scale.NoiseScaleEstimate) -> str:
    if window.noise_scale is None:
        return "not resolved"
    if window.standard_error is None:
        return f"{window.noise_scale:.3g}"
    return f"{window.noise_scale:.3g} +- {window.standard_error:.2g}"

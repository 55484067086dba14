"""``noise-scale CONFIG [--num-gpus N] [--num-iter N] [--start-iter N] [KEY VALUE ...]``.

Measures the gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018) of CONFIG's
model on its training data: trains --num-iter steps of the config's schedule from --start-iter
(from MODEL.WEIGHTS if set, e.g. a checkpoint late in training) at the batch the config is
written for, reading the gradient norms at the two batch sizes each step has. Prints B_simple,
how it moved during the measurement, and for each GPU count the epochs a run needs against the
reference's with B_crit = B_simple ((1 + B / B_crit) / (1 + B_ref / B_crit), McCandlish et al.
2018). Nothing is written unless --csv is given; `det-scaling advise` turns it into what to run.
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
from det_scaling.scaling.critical_batch import epochs_factor

# The GPU counts of the epochs table.
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
    if overall.noise_scale is None or overall.noise_scale <= 0:
        print("the signal |G|^2 was not resolved: measure longer (--num-iter) or later in training")
    else:
        print(epochs_table(overall.noise_scale, result.per_gpu_batch, written.IMS_PER_BATCH))
    if args.csv:
        result.write_csv(args.csv)
        print(f"wrote {args.csv}")
    return 0


def epochs_table(b_crit: float, per_gpu_batch: int, reference_batch: int) -> str:
    """The epochs factor of each GPU count's total batch against the reference batch, with
    B_crit = ``b_crit``, and what to do with it."""
    rows = []
    for gpus in TABLE_GPU_COUNTS:
        batch = gpus * per_gpu_batch
        factor = epochs_factor(batch, reference_batch, b_crit)
        rows.append({"GPUs": gpus, "total batch": batch, "epochs x": f"{factor:.2f}"})
    return (
        f"epochs for the reference's progress with B_crit = B_simple = {b_crit:.3g}:\n"
        + tabulate(rows, headers="keys", tablefmt="github")
        + "\nB_simple grows as a model trains: measure later in training (--start-iter, "
        "MODEL.WEIGHTS) for the run's B_crit, or let `det-scaling advise CONFIG` probe it and say "
        "what to run"
    )


def _format(window: noise_scale.NoiseScaleEstimate) -> str:
    if window.noise_scale is None:
        return "not resolved"
    if window.standard_error is None:
        return f"{window.noise_scale:.3g}"
    return f"{window.noise_scale:.3g} +- {window.standard_error:.2g}"

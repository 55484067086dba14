"""``lr-find CONFIG [--num-gpus N] [-o lr_find.png] [KEY VALUE ...]``: an LR range test.

Trains CONFIG's model on its training data for a few steps while the LR grows exponentially from
--start-lr to --end-lr, on the batch the config is written for (SOLVER.IMS_PER_BATCH over
SOLVER.REFERENCE_WORLD_SIZE GPUs, made up by gradient accumulation on the processes of this run),
and stops when the loss diverges. Writes the loss against the LR to a PNG (and its points to a
CSV beside it), then prints the suggested SOLVER.BASE_LR for the config as written and what
scale_cfg makes of that at 1, 2, 4 and 8 GPUs.

The suggestion is a tenth of the LR where the smoothed loss is lowest; the LR where it falls
fastest is printed as a cross-check (see det_scaling.commands.lr_find.LRFindResult.suggest). Nothing
else is written: no checkpoint, nothing in OUTPUT_DIR, not the config. Exit status 2 when the
config cannot train (missing data, no finite loss) or the loss never decreases.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from detectron2.config import CfgNode

from det_scaling.cli._common import (
    _positive_int,
    add_config_argument,
    add_overrides_argument,
    add_processes_argument,
    check_image_file,
)
from det_scaling.commands import lr_find
from det_scaling.commands.plan import format_plan_table
from det_scaling.config import load_cfg, require_yaml_config
from det_scaling.errors import ConfigError

# The GPU counts of the table printed with the suggestion.
TABLE_GPU_COUNTS = [1, 2, 4, 8]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lr-find",
        help="LR range test: sweep the LR on the config's model and data, suggest a BASE_LR",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_argument(parser)
    add_processes_argument(parser, "run the sweep")
    parser.add_argument(
        "-o",
        "--output",
        default="lr_find.png",
        metavar="PNG",
        help="image to write; the points go to the same name with .csv (default: lr_find.png)",
    )
    parser.add_argument(
        "--start-lr",
        type=float,
        default=lr_find.DEFAULT_START_LR,
        metavar="LR",
        help=f"first LR (default: {lr_find.DEFAULT_START_LR:g})",
    )
    parser.add_argument(
        "--end-lr",
        type=float,
        default=lr_find.DEFAULT_END_LR,
        metavar="LR",
        help=f"last LR (default: {lr_find.DEFAULT_END_LR:g})",
    )
    parser.add_argument(
        "--num-iter",
        type=_positive_int,
        default=lr_find.DEFAULT_NUM_ITER,
        metavar="N",
        help=f"optimizer steps from the start to the end LR (default: {lr_find.DEFAULT_NUM_ITER})",
    )
    parser.add_argument(
        "--smoothing",
        type=float,
        default=lr_find.DEFAULT_SMOOTHING,
        metavar="BETA",
        help="weight of the past in the moving average of the loss "
        f"(default: {lr_find.DEFAULT_SMOOTHING:g})",
    )
    parser.add_argument(
        "--diverge-factor",
        type=float,
        default=lr_find.DEFAULT_DIVERGE_FACTOR,
        metavar="K",
        help="stop when the smoothed loss exceeds K x its lowest value "
        f"(default: {lr_find.DEFAULT_DIVERGE_FACTOR:g})",
    )
    add_overrides_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_image_file(args.output, "-o")
    require_yaml_config(args.config, "lr-find")
    cfg = load_cfg(args.config, args.opts)
    print(
        f"lr-find: {args.config}: LR {args.start_lr:g} -> {args.end_lr:g} over "
        f"{args.num_iter} steps on {args.num_gpus} process(es)",
        flush=True,
    )
    result = lr_find.launch_lr_range_test(
        cfg,
        args.num_gpus,
        start_lr=args.start_lr,
        end_lr=args.end_lr,
        num_iter=args.num_iter,
        smoothing=args.smoothing,
        diverge_factor=args.diverge_factor,
    )
    written = result.cfg
    print(
        f"batch: {result.ims_per_batch} images/step as written for "
        f"{written.SOLVER.REFERENCE_WORLD_SIZE or result.world_size} GPU(s) "
        f"({result.world_size} process(es) x {result.grad_accum_steps} micro-batch(es)), "
        f"optimizer {written.SOLVER.OPTIMIZER}"
    )
    if result.diverged_at is None:
        print(f"ran {len(result.points)} steps up to LR {args.end_lr:g} without diverging")
    else:
        print(f"stopped at step {result.diverged_at}: {result.divergence}")

    png = Path(args.output)
    png = png if png.suffix else png.with_suffix(".png")  # matplotlib would add it unsaid
    csv_path = png.with_suffix(".csv")
    try:
        suggestions = [result.suggest(rule) for rule in ("best/10", "steepest")]
    except ConfigError as error:
        if result.points:
            lr_find.plot_lr_find(result, png, title=_title(args.config, result))
            result.write_csv(csv_path)
            raise ConfigError(f"{error} (the curve is in {png})") from error
        raise
    lr_find.plot_lr_find(result, png, suggestions=suggestions, title=_title(args.config, result))
    result.write_csv(csv_path)

    best = result.best()
    suggested, steepest = suggestions
    print(
        f"lowest smoothed loss {best.smoothed_loss:.4g} at LR {best.lr:.3g} (step {best.iteration})"
    )
    print(f"suggested SOLVER.BASE_LR: {suggested.lr:.3g}  ({suggested.explanation})")
    print(f"steepest descent at LR {steepest.lr:.3g}  (cross-check: {steepest.explanation})")
    print(f"the config has SOLVER.BASE_LR {written.SOLVER.BASE_LR:g}")
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {png} and {csv_path}")
    print()
    print(f"with SOLVER.BASE_LR {suggested.lr:.3g}:")
    print(format_plan_table(_with_base_lr(written, suggested.lr), TABLE_GPU_COUNTS))
    return 0


def _with_base_lr(cfg: CfgNode, lr: float) -> CfgNode:
    out = cfg.clone()
    out.defrost()
    # Rounded as printed, so the table shows the value a user would write in the config.
    out.SOLVER.BASE_LR = float(f"{lr:.3g}")
    return out


def _title(config: str, result: lr_find.LRFindResult) -> str:
    return (
        f"{Path(config).name}: LR range test, {result.ims_per_batch} images/step, "
        f"{result.cfg.SOLVER.OPTIMIZER}"
    )

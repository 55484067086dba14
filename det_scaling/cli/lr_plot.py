"""``lr-plot CONFIG [--num-gpus 1 2 4 8] [-o lr.png] [KEY VALUE ...]``: the LR at each GPU count.

CONFIG (with the overrides) is scaled to each GPU count as ``plan`` does, and the LR scheduler
training would build for it is stepped through the run (a LazyConfig's lr_multiplier, or the
YAML config's SOLVER schedule). Two panels: the LR against iterations, and against epochs
(images seen / SCALING.DATASET_SIZE or train.scaling.dataset_size; images seen when that is
0). In the second panel the scaled schedules are one curve, times the LR factor of SCALING.RULE;
--relative divides each by its factor so that they overlap. Reduce-on-plateau (SOLVER.PLATEAU)
is not drawn: it depends on evaluation results. When the batch grows (AdaBatch), a third panel
draws the total batch against epochs.
"""

from __future__ import annotations

import argparse

from det_scaling.cli._common import (
    add_config_argument,
    add_num_gpus_argument,
    add_overrides_argument,
    check_image_file,
)
from det_scaling.config import load_cfg
from det_scaling.formats import read_recipe
from det_scaling.lr_plot import lr_curve, plot_lr_curves


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lr-plot",
        help="plot the LR schedule at several GPU counts, against iterations and epochs",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_argument(parser)
    add_num_gpus_argument(parser, multiple=True)
    parser.add_argument(
        "-o", "--output", default="lr.png", metavar="PNG", help="image to write (default: lr.png)"
    )
    parser.add_argument(
        "--relative",
        action="store_true",
        help="divide each GPU count's LR by its scaling factor (the curves then overlap)",
    )
    add_overrides_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_image_file(args.output, "-o")
    cfg = load_cfg(args.config, args.opts)
    recipe = read_recipe(cfg)
    curves = [lr_curve(cfg, num_gpus) for num_gpus in args.num_gpus]
    plot_lr_curves(
        curves,
        args.output,
        dataset_size=recipe.dataset_size,
        title=f"{args.config} ({recipe.lr_schedule}, {recipe.rule} rule)",
        relative=args.relative,
    )
    print(f"wrote {args.output}")
    return 0



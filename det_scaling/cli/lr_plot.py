"""``lr-plot CONFIG [--num-gpus 1 2 4 8] [-o lr.png] [KEY VALUE ...]``: the LR at each GPU count;
``lr-plot --metrics OUTPUT_DIR/metrics.json ... [-o lr.png]``: the LR runs trained with.

CONFIG (with the overrides) is scaled to each GPU count as ``plan`` does, and the LR scheduler
training would build for it is stepped through the run (a LazyConfig's lr_multiplier, or the
YAML config's SOLVER schedule). Two panels: the LR against iterations, and against epochs
(images seen / SCALING.DATASET_SIZE or train.scaling.dataset_size; images seen when that is
0). In the second panel the scaled schedules are one curve, times the LR factor of SCALING.RULE;
--relative divides each by its factor so that they overlap. Reduce-on-plateau (SOLVER.PLATEAU)
is not drawn: it depends on evaluation results. When the batch grows (AdaBatch), a third panel
draws the total batch against epochs.

With --metrics, the LR each run logged in its metrics.json (every 20 iterations by default),
against iterations and against AdaScale's progress (SCALING.RULE adascale) or the images seen,
with AdaScale's gain ratio r: the LR an AdaScale run takes is measured, not planned.
"""

from __future__ import annotations

import argparse
import os

from det_scaling.cli._common import (
    CONFIG_HELP,
    add_num_gpus_argument,
    add_overrides_argument,
    check_image_file,
)
from det_scaling.commands.lr_plot import lr_curve, plot_lr_curves
from det_scaling.commands.run_plot import plot_run_metrics, read_run_metrics
from det_scaling.config import find_config_file, load_cfg
from det_scaling.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lr-plot",
        help="plot the LR schedule at several GPU counts, against iterations and epochs",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "config",
        metavar="CONFIG",
        nargs="?",
        type=find_config_file,
        help=CONFIG_HELP,
    )
    parser.add_argument(
        "--metrics",
        nargs="+",
        metavar="JSON",
        help="draw the LR these runs logged (their metrics.json) instead of a config's schedule",
    )
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
    if (args.config is None) == (args.metrics is None):
        raise ConfigError("give either a CONFIG or --metrics with runs' metrics.json files")
    check_image_file(args.output, "-o")
    if args.metrics:
        if args.opts:
            raise ConfigError(f"--metrics takes no config overrides, got {' '.join(args.opts)}")
        for path in args.metrics:
            if not os.path.isfile(path):
                raise ConfigError(f"--metrics {path}: no such file")
        runs = [read_run_metrics(path, name=path) for path in args.metrics]
        plot_run_metrics(runs, args.output, title="learning rate of " + ", ".join(args.metrics))
        print(f"wrote {args.output}")
        return 0
    cfg = load_cfg(args.config, args.opts)
    curves = [lr_curve(cfg, num_gpus) for num_gpus in args.num_gpus]
    recipe = curves[0].written
    plot_lr_curves(
        curves,
        args.output,
        dataset_size=recipe.dataset_size,
        title=f"{args.config} ({recipe.lr_schedule}, {recipe.rule} rule)",
        relative=args.relative,
    )
    print(f"wrote {args.output}")
    return 0

"""``lr-plot CONFIG [--num-gpus 1 2 4 8] [-o lr.png] [KEY VALUE ...]``: the LR at each GPU count.

CONFIG (with the overrides) is scaled to each GPU count as ``plan`` does, and the LR scheduler
training would build for it (``det_scaling.solver.build_lr_scheduler``, over a one-tensor
optimizer) is stepped through its MAX_ITER iterations. Two panels: the LR against iterations,
and against epochs (images seen / SCALING.DATASET_SIZE; images seen when that is 0). In the
second panel the scaled schedules are one curve, times the LR factor of SCALING.RULE;
``--relative`` divides each by its factor so that they overlap. Reduce-on-plateau
(SOLVER.PLATEAU) is not drawn: it depends on evaluation results.
"""

from __future__ import annotations

import argparse
import itertools
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from detectron2.config import CfgNode

from det_scaling.cli._common import (
    add_config_argument,
    add_num_gpus_argument,
    add_overrides_argument,
)
from det_scaling.config import load_cfg
from det_scaling.progress import images_seen
from det_scaling.scaling import plan_scaling


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
    cfg = load_cfg(args.config, args.opts)
    curves = [lr_curve(cfg, num_gpus) for num_gpus in args.num_gpus]
    plot_lr_curves(
        curves,
        args.output,
        dataset_size=cfg.SCALING.DATASET_SIZE,
        title=f"{args.config} ({cfg.SOLVER.LR_SCHEDULER_NAME}, {cfg.SCALING.RULE} rule)",
        relative=args.relative,
    )
    print(f"wrote {args.output}")
    return 0


@dataclass
class LRCurve:
    """The LR each iteration of a scaled run trains with."""

    num_gpus: int
    ims_per_batch: int
    lr_factor: float
    lrs: list[float]  # lrs[i]: the LR of iteration i, for i in range(MAX_ITER)

    def images(self) -> list[int]:
        """Images seen before each iteration."""
        return [images_seen(i, self.ims_per_batch) for i in range(len(self.lrs))]


def lr_curve(cfg: CfgNode, num_gpus: int) -> LRCurve:
    """Scales ``cfg`` to ``num_gpus`` and steps the scheduler it builds through MAX_ITER."""
    plan = plan_scaling(cfg, num_gpus)
    return LRCurve(
        num_gpus=num_gpus,
        ims_per_batch=plan.cfg.SOLVER.IMS_PER_BATCH,
        lr_factor=plan.lr_factor,
        lrs=scheduled_lrs(plan.cfg),
    )


def scheduled_lrs(cfg: CfgNode) -> list[float]:
    """The LR of each of the MAX_ITER iterations, as the scheduler built from ``cfg`` sets it
    when stepped once per iteration."""
    # Imported here: the solver pulls in detectron2's engine, which the other commands (all
    # parsers are built at start-up) do not need.
    from det_scaling.solver import build_lr_scheduler

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.SOLVER.BASE_LR)
    scheduler = build_lr_scheduler(cfg, optimizer)
    group = optimizer.param_groups[0]
    lrs = []
    with warnings.catch_warnings():
        # No optimizer step is taken, on purpose: torch warns about the order of the two.
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(cfg.SOLVER.MAX_ITER):
            lrs.append(group["lr"])
            scheduler.step()
    return lrs


def plot_lr_curves(
    curves: list[LRCurve],
    path: str,
    *,
    dataset_size: int = 0,
    title: str = "",
    relative: bool = False,
) -> Any:
    """Writes a PNG with the curves against iterations (left) and epochs or images (right);
    returns the matplotlib ``Figure``."""
    # The object-oriented API with the Agg canvas: no pyplot state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    by_iteration, by_epoch = figure.subplots(1, 2)
    # Curves that coincide (the point of the right panel) stay visible with distinct dashes.
    line_styles = itertools.cycle(["-", "--", "-.", ":"])
    for curve, style in zip(curves, line_styles, strict=False):
        lrs = [lr / curve.lr_factor for lr in curve.lrs] if relative else curve.lrs
        label = (
            f"{curve.num_gpus} GPU(s): {curve.ims_per_batch} images/step, LR x{curve.lr_factor:g}"
        )
        by_iteration.plot(range(len(lrs)), lrs, style, label=label, linewidth=1.4)
        images = curve.images()
        x = [n / dataset_size for n in images] if dataset_size > 0 else images
        by_epoch.plot(x, lrs, style, label=label, linewidth=1.4)
    ylabel = "LR / scaling factor" if relative else "learning rate"
    by_iteration.set(xlabel="iteration", ylabel=ylabel, title="against iterations")
    by_epoch.set(
        xlabel=f"epoch ({dataset_size} images)" if dataset_size > 0 else "images seen",
        ylabel=ylabel,
        title="against epochs" if dataset_size > 0 else "against images seen",
    )
    for axes in (by_iteration, by_epoch):
        axes.grid(alpha=0.3)
        axes.set_ylim(bottom=0)
    by_iteration.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    figure.savefig(path, dpi=120)
    return figure

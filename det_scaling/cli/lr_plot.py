"""``lr-plot CONFIG [--num-gpus 1 2 4 8] [-o lr.png] [KEY VALUE ...]``: the LR at each GPU count.

CONFIG (with the overrides) is scaled to each GPU count as ``plan`` does, and the LR scheduler
training would build for it (``det_scaling.solver.build_lr_scheduler``, over a one-tensor
optimizer) is stepped through its MAX_ITER iterations. Two panels: the LR against iterations,
and against epochs (images seen / SCALING.DATASET_SIZE; images seen when that is 0). In the
second panel the scaled schedules are one curve, times the LR factor of SCALING.RULE;
``--relative`` divides each by its factor so that they overlap. Reduce-on-plateau
(SOLVER.PLATEAU) is not drawn: it depends on evaluation results.

With AdaBatch (SCALING.ADABATCH.ENABLED) each run takes its stages' steps, the LR includes each
stage's factor, and a third panel draws the total batch against epochs.
"""

from __future__ import annotations

import argparse
import itertools
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from detectron2.config import CfgNode

from det_scaling.adabatch import adabatch_schedule
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
    # AdaBatch: batches[i], the total batch of iteration i; None when it is ims_per_batch.
    batches: list[int] | None = None

    def images(self) -> list[int]:
        """Images seen before each iteration."""
        if self.batches is None:
            return [images_seen(i, self.ims_per_batch) for i in range(len(self.lrs))]
        return list(itertools.accumulate(self.batches[:-1], initial=0))


def lr_curve(cfg: CfgNode, num_gpus: int) -> LRCurve:
    """Scales ``cfg`` to ``num_gpus`` and steps the scheduler it builds through MAX_ITER (with
    AdaBatch, through its stages' steps)."""
    plan = plan_scaling(cfg, num_gpus)
    schedule = adabatch_schedule(plan.cfg)
    batches = None
    if schedule is not None:
        batches = [stage.ims_per_batch for stage in schedule.stages for _ in range(stage.num_iters)]
    return LRCurve(
        num_gpus=num_gpus,
        ims_per_batch=plan.cfg.SOLVER.IMS_PER_BATCH,
        lr_factor=plan.lr_factor,
        lrs=scheduled_lrs(plan.cfg),
        batches=batches,
    )


def scheduled_lrs(cfg: CfgNode) -> list[float]:
    """The LR of each of the MAX_ITER iterations (with AdaBatch, of the stages' steps), as the
    scheduler built from ``cfg`` sets it when stepped once per iteration."""
    # Imported here: the solver pulls in detectron2's engine, which the other commands (all
    # parsers are built at start-up) do not need.
    from det_scaling.solver import build_lr_scheduler

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.SOLVER.BASE_LR)
    scheduler = build_lr_scheduler(cfg, optimizer)
    schedule = adabatch_schedule(cfg)
    num_iters = cfg.SOLVER.MAX_ITER if schedule is None else schedule.total_iterations
    group = optimizer.param_groups[0]
    lrs = []
    with warnings.catch_warnings():
        # No optimizer step is taken, on purpose: torch warns about the order of the two.
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(num_iters):
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
    """Writes a PNG with the curves against iterations (left) and epochs or images (middle),
    and, when a curve has AdaBatch stages, the total batch against epochs or images (right);
    returns the matplotlib ``Figure``."""
    # The object-oriented API with the Agg canvas: no pyplot state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    growing = any(curve.batches is not None for curve in curves)
    figure = Figure(figsize=(18 if growing else 12, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    by_iteration, by_epoch, *batch_panel = figure.subplots(1, 3 if growing else 2)
    # Curves that coincide (the point of the right panel) stay visible with distinct dashes.
    line_styles = itertools.cycle(["-", "--", "-.", ":"])
    for curve, style in zip(curves, line_styles, strict=False):
        lrs = [lr / curve.lr_factor for lr in curve.lrs] if relative else curve.lrs
        batch = f"{curve.ims_per_batch}"
        if curve.batches is not None and curve.batches[-1] != curve.ims_per_batch:
            batch += f"->{curve.batches[-1]}"
        label = f"{curve.num_gpus} GPU(s): {batch} images/step, LR x{curve.lr_factor:g}"
        by_iteration.plot(range(len(lrs)), lrs, style, label=label, linewidth=1.4)
        images = curve.images()
        x = [n / dataset_size for n in images] if dataset_size > 0 else images
        by_epoch.plot(x, lrs, style, label=label, linewidth=1.4)
        if batch_panel:
            batches = curve.batches or [curve.ims_per_batch] * len(lrs)
            batch_panel[0].step(x, batches, style, where="post", label=label, linewidth=1.4)
    ylabel = "LR / scaling factor" if relative else "learning rate"
    by_iteration.set(xlabel="iteration", ylabel=ylabel, title="against iterations")
    by_epoch.set(
        xlabel=f"epoch ({dataset_size} images)" if dataset_size > 0 else "images seen",
        ylabel=ylabel,
        title="against epochs" if dataset_size > 0 else "against images seen",
    )
    if batch_panel:
        batch_panel[0].set(
            xlabel=by_epoch.get_xlabel(),
            ylabel="total batch (images/step)",
            title="AdaBatch: batch size",
            yscale="log",
        )
        # Every batch a run takes as a tick: on a log axis they are evenly spaced.
        all_batches = sorted({b for c in curves for b in (c.batches or [c.ims_per_batch])})
        batch_panel[0].set_yticks(all_batches, [str(b) for b in all_batches])
        batch_panel[0].minorticks_off()
        batch_panel[0].grid(alpha=0.3)
    for axes in (by_iteration, by_epoch):
        axes.grid(alpha=0.3)
        axes.set_ylim(bottom=0)
    by_iteration.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    figure.savefig(path, dpi=120)
    return figure

"""The LR each step of a scaled run trains with, at several GPU counts, and its plot (what
``lr-plot`` draws): against iterations, and against epochs where the scaled schedules are one
curve times the LR factor of ``SCALING.RULE``. When the batch grows (AdaBatch), each run takes
its stages' steps, the LR includes each stage's factor, and a third panel draws the batch.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from det_scaling.config import Recipe
from det_scaling.scaling.batch_schedule import BatchSchedule
from det_scaling.scaling.plan import plan_scaling
from det_scaling.solver import scheduled_lrs

__all__ = ["LRCurve", "finish_lr_figure", "lr_curve", "plot_lr_curves"]


@dataclass
class LRCurve:
    """The LR each step of a scaled run trains with."""

    num_gpus: int
    lr_factor: float  # the scaling rule's factor on the reference LR
    schedule: BatchSchedule
    lrs: list[float]  # lrs[i]: the LR of step i, for every step of the run
    written: Recipe | None = None  # the config's recipe as written

    @property
    def ims_per_batch(self) -> int:
        return self.schedule.ims_per_batch

    def batches(self) -> list[int]:
        """The total batch of each step."""
        return [self.schedule.stage_at_iteration(i).ims_per_batch for i in range(len(self.lrs))]

    def images(self) -> list[int]:
        """Images seen before each step."""
        return [self.schedule.images_at_iteration(i) for i in range(len(self.lrs))]


def lr_curve(cfg: Any, num_gpus: int) -> LRCurve:
    """Scales ``cfg`` to ``num_gpus`` and steps the scheduler it builds through the run."""
    plan = plan_scaling(cfg, num_gpus)
    schedule = BatchSchedule.from_recipe(plan.recipe, num_gpus)
    lrs = scheduled_lrs(plan.cfg, schedule)
    return LRCurve(num_gpus, plan.lr_factor, schedule, lrs, written=plan.written)


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

    growing = any(curve.schedule.grows for curve in curves)
    figure = Figure(figsize=(18 if growing else 12, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    by_iteration, by_epoch, *batch_panel = figure.subplots(1, 3 if growing else 2)
    # Curves that coincide (the point of the right panel) stay visible with distinct dashes.
    line_styles = itertools.cycle(["-", "--", "-.", ":"])
    for curve, style in zip(curves, line_styles, strict=False):
        lrs = [lr / curve.lr_factor for lr in curve.lrs] if relative else curve.lrs
        batch = f"{curve.ims_per_batch}"
        if curve.schedule.grows:
            batch += f"->{curve.schedule.stages[-1].ims_per_batch}"
        label = f"{curve.num_gpus} GPU(s): {batch} images/step, LR x{curve.lr_factor:g}"
        by_iteration.plot(range(len(lrs)), lrs, style, label=label, linewidth=1.4)
        images = curve.images()
        x = [n / dataset_size for n in images] if dataset_size > 0 else images
        by_epoch.plot(x, lrs, style, label=label, linewidth=1.4)
        if batch_panel:
            batch_panel[0].step(x, curve.batches(), style, where="post", label=label, linewidth=1.4)
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
        all_batches = sorted({s.ims_per_batch for c in curves for s in c.schedule.stages})
        batch_panel[0].set_yticks(all_batches, [str(b) for b in all_batches])
        batch_panel[0].minorticks_off()
        batch_panel[0].grid(alpha=0.3)
    return finish_lr_figure(figure, (by_iteration, by_epoch), path, title)


def finish_lr_figure(figure: Any, lr_axes: tuple[Any, ...], path: str, title: str) -> Any:
    """Grids and LR axes from 0 on ``lr_axes``, the legend on the first, the title; saves."""
    for axes in lr_axes:
        axes.grid(alpha=0.3)
        axes.set_ylim(bottom=0)
    lr_axes[0].legend(fontsize="small")
    if title:
        figure.suptitle(title)
    figure.savefig(path, dpi=120)
    return figure

"""LR range test: a short training run whose LR grows exponentially, to choose ``SOLVER.BASE_LR``.

Smith's range test ("Cyclical Learning Rates for Training Neural Networks", 2017), as fastai's
and PyTorch Lightning's LR finders run it: train from the config's initial weights while the LR
grows from ``start_lr`` to ``end_lr`` over ``num_iter`` optimizer steps, record the loss of each
step, and stop once the loss diverges. The loss first barely moves (LR too low), then falls, then
rises again when the LR is too high; a good base LR lies on the falling part.

What is trained is what training would build, from the same building blocks: the task's trainer
class (classification for ``ImageClassifier``, detection otherwise) builds the model, the
training loader (micro-batches, as :class:`~det_scaling.engine.ScalingTrainer` loads them), the
optimizer named by ``SOLVER.OPTIMIZER`` and the step trainer (gradient accumulation, AMP). Only
the LR differs: no scheduler, the sweep's LR set on every param group in the proportions the
optimizer builder gave them (``SOLVER.BIAS_LR_FACTOR`` and the like are kept).

The sweep runs on the config's **reference batch**: ``SOLVER.IMS_PER_BATCH`` images per step as
written for ``SOLVER.REFERENCE_WORLD_SIZE`` GPUs, realised on the processes of this run by
gradient accumulation (``plan_scaling(cfg, world_size, keep_reference_batch=True)``). The LR it
suggests is therefore a ``BASE_LR`` for the config as written, which ``scale_cfg`` then rescales
to any GPU count. Nothing is written: no checkpoint, no ``OUTPUT_DIR``, no config file; the
trained weights are dropped.

:func:`lr_range_test` runs in the current process (or in every process of a process group);
:func:`launch_lr_range_test` starts ``num_gpus`` processes through
:func:`det_scaling.engine.launch.launch` and returns the main process's result.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch.distributed as dist
from detectron2.config import CfgNode
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

from det_scaling.config import add_scaling_config
from det_scaling.engine.launch import launch_for_result
from det_scaling.errors import ConfigError
from det_scaling.tasks import build_run_step, check_weights, prepare_run, resolve_run
from det_scaling.utils.logs import unactionable_warnings_ignored

__all__ = [
    "DEFAULT_DIVERGE_FACTOR",
    "DEFAULT_END_LR",
    "DEFAULT_NUM_ITER",
    "DEFAULT_SMOOTHING",
    "DEFAULT_START_LR",
    "MIN_DECREASE",
    "SUGGESTION_RULES",
    "LRFindPoint",
    "LRFindResult",
    "Suggestion",
    "exponential_lrs",
    "launch_lr_range_test",
    "lr_range_test",
    "plot_lr_find",
]

# The rules :meth:`LRFindResult.suggest` knows; the first is the default (see its docstring).
SUGGESTION_RULES = ("best/10", "steepest")

# A smoothed loss less than this fraction below the first one is noise, not learning: one
# batch's loss varies by a few percent, and the moving average (0.9) divides that by about 4.
MIN_DECREASE = 0.02

# The sweep's defaults: six decades in 100 steps (fastai's length) reach the LRs at which SGD
# and its variants diverge from those at which the loss barely moves; a moving average over
# about 1 / (1 - 0.9) = 10 steps smooths the noise of one batch with a lag of under a decade of
# LR; and stopping at 4x the lowest loss (fastai's and Lightning's criterion) ends the sweep once
# the curve has clearly turned.
DEFAULT_START_LR = 1e-5
DEFAULT_END_LR = 10.0
DEFAULT_NUM_ITER = 100
DEFAULT_SMOOTHING = 0.9
DEFAULT_DIVERGE_FACTOR = 4.0


@dataclass(frozen=True)
class LRFindPoint:
    """One step of the sweep: its LR, the loss it computed (before its update) and the smoothed
    loss up to it."""

    iteration: int
    lr: float
    loss: float
    smoothed_loss: float


@dataclass(frozen=True)
class Suggestion:
    """A suggested base LR, the rule that gave it and the sweep step it was read from."""

    lr: float
    rule: str
    iteration: int
    explanation: str


@dataclass
class LRFindResult:
    """The recorded sweep and the settings it ran with.

    ``points`` holds the steps with a finite loss, up to and including the one that met the
    divergence criterion (``diverged_at``, ``None`` when the sweep reached ``end_lr``). A step
    whose loss is not finite is not recorded: ``diverged_at`` is then its iteration.
    ``cfg`` is the config as written (not scaled), with ``SCALING.DATASET_SIZE`` filled in.
    """

    points: list[LRFindPoint]
    start_lr: float
    end_lr: float
    num_iter: int
    smoothing: float
    diverge_factor: float
    diverged_at: int | None
    divergence: str | None  # why the sweep stopped early, in words
    cfg: CfgNode
    world_size: int
    ims_per_batch: int
    grad_accum_steps: int
    notes: list[str] = field(default_factory=list)

    @property
    def lrs(self) -> list[float]:
        return [point.lr for point in self.points]

    @property
    def losses(self) -> list[float]:
        return [point.loss for point in self.points]

    @property
    def smoothed_losses(self) -> list[float]:
        return [point.smoothed_loss for point in self.points]

    def best(self) -> LRFindPoint:
        """The step with the lowest smoothed loss."""
        if not self.points:
            raise ConfigError("the sweep recorded no finite loss")
        return min(self.points, key=lambda point: point.smoothed_loss)

    def suggest(
        self, rule: str = SUGGESTION_RULES[0], min_decrease: float = MIN_DECREASE
    ) -> Suggestion:
        """The base LR the sweep suggests, by ``rule``:

        * ``"best/10"`` (default): a tenth of the LR at the lowest smoothed loss. Past that LR
          the loss stops improving: it is the edge of what the model tolerates for a few steps,
          not a rate to train at for a whole run. A tenth of it keeps that margin and absorbs the
          lag of the smoothing, which moves the minimum to higher LRs. The minimum is the most
          stable reading of a short, noisy sweep, hence the default.
        * ``"steepest"``: the LR where the smoothed loss falls fastest against log(LR), before
          the minimum and after the smoothing's first ``1 / (1 - smoothing)`` steps: where the LR
          is visibly most effective. It reads a derivative of a noisy curve, so on short sweeps
          it jumps; it is printed as a cross-check (the two agreeing within a few times means
          the curve is well behaved).

        Raises ``ConfigError`` when the smoothed loss never fell by ``min_decrease`` (a fraction)
        below its first value: then the curve has no falling part to read.
        """
        if rule not in SUGGESTION_RULES:
            raise ConfigError(f"unknown suggestion rule {rule!r}; choose one of {SUGGESTION_RULES}")
        self._check_decreased(min_decrease)
        best_index = self.points.index(self.best())
        if rule == "best/10":
            best = self.points[best_index]
            return Suggestion(
                best.lr / 10,
                rule,
                best.iteration,
                f"a tenth of LR {best.lr:.3g}, where the smoothed loss is lowest "
                f"({best.smoothed_loss:.4g})",
            )
        # Central differences over the whole curve (one-sided at its ends), read before the
        # minimum: a one-sided difference at the minimum itself would favour its last drop. The
        # first 1 / (1 - smoothing) - 1 steps are skipped when the minimum comes later: there the
        # bias-corrected average still rests on a few losses, and its slope is their noise.
        slopes = np.gradient(self.smoothed_losses, np.log10(self.lrs))
        warm_up = int(1 / (1 - self.smoothing)) - 1
        first = warm_up if warm_up < best_index else 0
        index = first + int(np.argmin(slopes[first:best_index]))
        steepest = self.points[index]
        return Suggestion(
            steepest.lr,
            rule,
            steepest.iteration,
            f"the smoothed loss falls fastest here ({slopes[index]:.3g} per decade of LR)",
        )

    def _check_decreased(self, min_decrease: float) -> None:
        if len(self.points) >= 2:
            first, best = self.points[0].smoothed_loss, self.best().smoothed_loss
            if best <= first * (1 - min_decrease):
                return
            start = f"the smoothed loss went from {first:.4g} to at best {best:.4g}"
        else:
            start = f"only {len(self.points)} step(s) had a finite loss"
        stop = (
            f"; the sweep stopped at step {self.diverged_at}: {self.divergence}"
            if self.diverged_at is not None
            else f" over {len(self.points)} steps up to LR {self.end_lr:g}"
        )
        raise ConfigError(
            f"the loss never decreased ({start}{stop}), so there is no LR to suggest. A loss "
            f"that rises at once means the LR is already too high at the start: lower the start "
            f"LR (now {self.start_lr:g}); one that stays flat means the sweep is too short or "
            "too low (raise the end LR or the number of steps), or that the model cannot learn "
            "from this data as configured"
        )

    def write_csv(self, path: str | os.PathLike) -> None:
        """Writes the points as CSV: iteration, lr, loss, smoothed_loss."""
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["iteration", "lr", "loss", "smoothed_loss"])
            for p in self.points:
                writer.writerow([p.iteration, repr(p.lr), repr(p.loss), repr(p.smoothed_loss)])


def exponential_lrs(start_lr: float, end_lr: float, num_iter: int) -> list[float]:
    """``num_iter`` LRs growing geometrically from ``start_lr`` to ``end_lr`` (both included):
    the same number of steps per decade, so every order of magnitude is sampled alike."""
    ratio = end_lr / start_lr
    return [start_lr * ratio ** (i / (num_iter - 1)) for i in range(num_iter)]


def lr_range_test(
    cfg: CfgNode,
    *,
    start_lr: float = DEFAULT_START_LR,
    end_lr: float = DEFAULT_END_LR,
    num_iter: int = DEFAULT_NUM_ITER,
    smoothing: float = DEFAULT_SMOOTHING,
    diverge_factor: float = DEFAULT_DIVERGE_FACTOR,
) -> LRFindResult:
    """Trains ``cfg``'s model on its data for up to ``num_iter`` steps at an exponentially growing
    LR, on the config's reference batch (see the module), and returns the recorded sweep.

    The loss of each step is smoothed by an exponential moving average (weight ``smoothing`` on
    the past, bias-corrected so that the first steps are not pulled towards 0). The sweep stops
    at the first step whose loss is not finite or whose smoothed loss exceeds
    ``diverge_factor`` times the lowest so far: past that point the curve says nothing more.

    Call it in every process of a process group (or in one process); all of them return the
    same result. The data sets the config names are registered as ``tools/train.py`` does
    (generated or exported when missing). Raises ``ConfigError`` for bad arguments, a config
    that cannot be scaled to this world size with its reference batch, missing data, or a model
    whose loss is not finite before any update.
    """
    _check_sweep_arguments(start_lr, end_lr, num_iter, smoothing, diverge_factor)
    world_size = comm.get_world_size()
    run = prepare_run(cfg, world_size, keep_reference_batch=True)
    scaled, schedule = run.cfg, run.schedule
    step = build_run_step(run)
    optimizer, step_trainer = step.optimizer, step.trainer
    # Each group's LR relative to BASE_LR (bias LR factor, LARS exclusions ...), kept in the sweep.
    lr_factors = [group["lr"] / scaled.SOLVER.BASE_LR for group in optimizer.param_groups]

    points: list[LRFindPoint] = []
    diverged_at: int | None = None
    divergence: str | None = None
    average, best = 0.0, math.inf
    with EventStorage(0) as storage:
        for iteration, lr in enumerate(exponential_lrs(start_lr, end_lr, num_iter)):
            for group, factor in zip(optimizer.param_groups, lr_factors, strict=True):
                group["lr"] = lr * factor
            storage.iter = iteration
            loss = _broadcast_from_main(_run_step(step_trainer, storage))
            if not math.isfinite(loss):
                if iteration == 0:
                    raise ConfigError(
                        f"the model's loss is {loss} before any update: the config cannot train "
                        "(check the data, MODEL.PIXEL_STD and the model's initialisation)"
                    )
                diverged_at, divergence = iteration, f"the loss is {loss} at LR {lr:.3g}"
                break
            average = smoothing * average + (1 - smoothing) * loss
            smoothed = average / (1 - smoothing ** (iteration + 1))
            points.append(LRFindPoint(iteration, lr, loss, smoothed))
            best = min(best, smoothed)
            if smoothed > diverge_factor * best:
                diverged_at = iteration
                divergence = (
                    f"the smoothed loss {smoothed:.4g} at LR {lr:.3g} exceeds "
                    f"{diverge_factor:g} x the lowest, {best:.4g}"
                )
                break
    del step, step_trainer  # the loader's workers, if any, end with its iterator

    result = LRFindResult(
        points=points,
        start_lr=start_lr,
        end_lr=end_lr,
        num_iter=num_iter,
        smoothing=smoothing,
        diverge_factor=diverge_factor,
        diverged_at=diverged_at,
        divergence=divergence,
        cfg=_as_written(cfg, scaled),
        world_size=world_size,
        ims_per_batch=schedule.ims_per_batch,
        grad_accum_steps=schedule.grad_accum_steps,
    )
    _add_notes(result)
    return result


def launch_lr_range_test(
    cfg: CfgNode,
    num_gpus: int = 1,
    *,
    start_lr: float = DEFAULT_START_LR,
    end_lr: float = DEFAULT_END_LR,
    num_iter: int = DEFAULT_NUM_ITER,
    smoothing: float = DEFAULT_SMOOTHING,
    diverge_factor: float = DEFAULT_DIVERGE_FACTOR,
) -> LRFindResult:
    """:func:`lr_range_test` (same arguments) in ``num_gpus`` processes on this machine (one GPU
    each, or gloo processes on the CPU, see :func:`det_scaling.engine.launch.launch`), gradient
    accumulation making up the rest of the reference batch; returns the result. One process runs
    here, without spawning."""
    settings = {
        "start_lr": start_lr,
        "end_lr": end_lr,
        "num_iter": num_iter,
        "smoothing": smoothing,
        "diverge_factor": diverge_factor,
    }
    # Checked here first, so that bad settings, missing data or a GPU count that does not divide
    # the reference batch are reported before any process starts or data set is generated.
    _check_sweep_arguments(**settings)
    check_weights(resolve_run(cfg, num_gpus, keep_reference_batch=True))
    return launch_for_result(_sweep, num_gpus, args=(cfg, settings))


def plot_lr_find(
    result: LRFindResult,
    path: str | os.PathLike,
    *,
    suggestions: Sequence[Suggestion] = (),
    title: str = "",
) -> Any:
    """Writes a PNG of the loss (each step, and smoothed) against the LR on a log axis, with the
    ``suggestions``, the lowest smoothed loss and the divergence marked; returns the matplotlib
    ``Figure``."""
    # The object-oriented API with the Agg canvas: no pyplot state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.plot(result.lrs, result.losses, color="0.6", linewidth=0.8, label="loss of each step")
    axes.plot(
        result.lrs,
        result.smoothed_losses,
        color="C0",
        linewidth=2,
        label=f"smoothed (EMA {result.smoothing:g})",
    )
    if result.points:
        best = result.best()
        axes.plot(best.lr, best.smoothed_loss, "o", color="C3", label=f"lowest at LR {best.lr:.3g}")
        # The divergent end can reach any height: the axis shows the fall from the first loss
        # to the lowest at a third of its height or more, and the rise above it only so far.
        smoothed = result.smoothed_losses
        top = max(
            min(max(smoothed), smoothed[0] + 2 * (smoothed[0] - best.smoothed_loss)), smoothed[0]
        )
        bottom = min(min(result.losses), best.smoothed_loss)
        margin = 0.05 * (top - bottom) or 0.05 * abs(top) or 1.0
        axes.set_ylim(bottom - margin, top + margin)
    styles = iter([("C2", "-"), ("C1", "--"), ("C4", ":")])
    for suggestion, (color, style) in zip(suggestions, styles, strict=False):
        axes.axvline(
            suggestion.lr,
            color=color,
            linestyle=style,
            label=f"{suggestion.rule}: LR {suggestion.lr:.3g}",
        )
    if result.diverged_at is not None:
        lr = exponential_lrs(result.start_lr, result.end_lr, result.num_iter)[result.diverged_at]
        axes.axvline(lr, color="0.3", linestyle=":", label=f"stopped (diverged) at LR {lr:.3g}")
    axes.set_xscale("log")
    axes.set(xlabel="learning rate (log scale)", ylabel="training loss")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize="small")
    if title:
        axes.set_title(title, fontsize="medium")
    figure.savefig(path, dpi=120)
    return figure


# ---- helpers ----


def _check_sweep_arguments(
    start_lr: float, end_lr: float, num_iter: int, smoothing: float, diverge_factor: float
) -> None:
    # Named as the lr-find options that set them.
    if not 0 < start_lr < end_lr or not math.isfinite(end_lr):
        raise ConfigError(
            f"--start-lr {start_lr:g} and --end-lr {end_lr:g}: need 0 < start LR < end LR"
        )
    if num_iter < 2:
        raise ConfigError(f"--num-iter {num_iter}: the sweep needs at least 2 steps")
    if not 0 <= smoothing < 1:
        raise ConfigError(f"--smoothing {smoothing:g}: must be in [0, 1)")
    if not diverge_factor > 1:
        raise ConfigError(f"--diverge-factor {diverge_factor:g}: must be > 1")


def _as_written(cfg: CfgNode, scaled: CfgNode) -> CfgNode:
    """``cfg`` as written, with the ``SCALING.DATASET_SIZE`` the run found."""
    out = cfg.clone()
    out.defrost()
    add_scaling_config(out)
    out.SCALING.DATASET_SIZE = scaled.SCALING.DATASET_SIZE
    return out


def _run_step(step_trainer: Any, storage: EventStorage) -> float:
    """Runs one optimizer step; returns the total loss (averaged over processes) on the main
    process, NaN elsewhere and when the loss is not finite."""
    try:
        step_trainer.run_step()
    except FloatingPointError:  # detectron2 raises it, on the main process, for a NaN/inf loss
        return math.nan
    if not comm.is_main_process():
        return math.nan
    return float(storage.history("total_loss").latest())


def _broadcast_from_main(value: float) -> float:
    """The main process's ``value`` in every process, so that all stop at the same step."""
    if comm.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return float(box[0])


def _add_notes(result: LRFindResult) -> None:
    if not result.points:
        return
    best_index = result.points.index(result.best())
    if result.diverged_at is None and best_index >= len(result.points) - max(
        2, len(result.points) // 20
    ):
        result.notes.append(
            f"the loss was still falling at the end LR {result.end_lr:g}: the best LR may be "
            "higher; raise the end LR to see where it diverges"
        )
    if best_index < 5 and len(result.points) > 10:
        result.notes.append(
            "the loss was lowest in the first steps of the sweep: the start LR "
            f"{result.start_lr:g} may already be too high; lower it"
        )
    solver = result.cfg.SOLVER
    best_lr = result.points[best_index].lr
    if solver.BASE_LR > best_lr:
        # The sweep starts from the initial weights, which tolerate less than trained ones: a
        # from-scratch config often runs above this LR thanks to its warmup.
        result.notes.append(
            f"the config's SOLVER.BASE_LR {solver.BASE_LR:g} is above LR {best_lr:.3g}, past "
            "which the loss rose from the initial weights: training reaches it safely only "
            "after a warmup (SOLVER.WARMUP_ITERS, or SCALING.EPOCHS.WARMUP); without one, lower it"
        )


@unactionable_warnings_ignored()
def _sweep(cfg: CfgNode, settings: dict[str, Any]) -> LRFindResult:
    # Module level: launched processes import it.
    return lr_range_test(cfg, **settings)

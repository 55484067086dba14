"""The gradient noise scale of a config: a short measurement on its model and data.

McCandlish et al. (2018): B_simple = tr(Sigma) / |G|^2 estimates the critical batch, below which
k times the batch takes about k times fewer steps (the linear rule holds); past it, extra batch
buys little. :func:`measure_noise_scale` trains the config's model on its data for a few steps,
as training would start (the task's trainer class builds the model, loader, optimizer, LR
schedule and step; ``MODEL.WEIGHTS`` is loaded), with the step's
:class:`~det_scaling.engine.GradientNoiseMeter` measuring the two batch sizes every step has.

The run is the config's **reference batch** (as ``lr-find``), realised on this run's processes
by gradient accumulation. With one process and no accumulation a step has one batch size only;
the measurement then runs at twice the reference batch (2 micro-batches per step, the LR by the
config's rule), which changes what is measured only through the LR. Nothing is written.

B_simple is the ratio of the means of the per-step unbiased estimates of tr(Sigma) and |G|^2,
over all steps and over consecutive windows of steps (how it moves as the model trains), and,
measured ``by_module``, of each module group's part of the gradient
(:func:`~det_scaling.engine.gradient_noise.module_groups`).
:func:`launch_noise_scale` runs it in several processes.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from detectron2.config import CfgNode
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

from det_scaling.config import add_scaling_config
from det_scaling.engine import GradientNoiseMeter, Run, StepNorms, place_scheduler
from det_scaling.engine.gradient_noise import module_groups
from det_scaling.engine.launch import launch_for_result
from det_scaling.errors import ConfigError
from det_scaling.scaling.gradient_noise import two_batch_estimates
from det_scaling.scaling.plan import plan_scaling
from det_scaling.tasks import build_run_step, prepare_run, resolve_run, trainer_class
from det_scaling.utils.logs import unactionable_warnings_ignored

__all__ = [
    "DEFAULT_NUM_ITER",
    "DEFAULT_WINDOWS",
    "NoiseScaleEstimate",
    "NoiseScaleResult",
    "estimate",
    "launch_noise_scale",
    "measure_noise_scale",
]

# 100 steps: a minute or two for the tiny detector on a CPU; a few seconds on a GPU.
DEFAULT_NUM_ITER = 100
DEFAULT_WINDOWS = 5
_NORM_COLUMNS = ("small_sq_norm", "small_batch", "big_sq_norm", "big_batch")


@dataclass(frozen=True)
class NoiseScaleEstimate:
    """B_simple over steps ``first`` .. ``last`` (inclusive), with its standard error (delta
    method, steps taken as independent); ``noise_scale`` is None when |G|^2 is not resolved."""

    first: int
    last: int
    steps: int
    sq_grad_norm: float
    trace_sigma: float
    noise_scale: float | None
    standard_error: float | None


def estimate(norms: list[StepNorms]) -> NoiseScaleEstimate:
    """B_simple from the steps' squared norms: the ratio of the means of their unbiased
    estimates of tr(Sigma) and |G|^2
    (:func:`~det_scaling.scaling.gradient_noise.two_batch_estimates`)."""
    if not norms:
        raise ConfigError("no step was measured")
    pairs = [
        two_batch_estimates(n.small_sq_norm, n.small_batch, n.big_sq_norm, n.big_batch)
        for n in norms
    ]
    count = len(pairs)
    sq_grad_norm = sum(g for g, _ in pairs) / count
    trace = sum(t for _, t in pairs) / count
    ratio = trace / sq_grad_norm if sq_grad_norm > 0 else None
    error = None
    if ratio is not None and count > 1:
        residuals = [t - ratio * g for g, t in pairs]
        variance = sum(r * r for r in residuals) / (count - 1)
        error = math.sqrt(variance / count) / sq_grad_norm
    return NoiseScaleEstimate(
        norms[0].iteration,
        norms[-1].iteration,
        count,
        sq_grad_norm,
        trace,
        None if ratio is None else max(ratio, 0.0),
        error,
    )


@dataclass
class NoiseScaleResult:
    """The measured steps and the setting they ran in.

    ``cfg`` is the config as written, with ``SCALING.DATASET_SIZE`` filled in; ``per_gpu_batch``
    is one GPU's images per optimizer step in it (``IMS_PER_BATCH / REFERENCE_WORLD_SIZE``), the
    batch the GPU limit is counted in.
    """

    norms: list[StepNorms]
    losses: list[float]  # the logged total loss of each step (main process)
    lrs: list[float]  # the LR of each step (first param group)
    cfg: CfgNode
    world_size: int
    ims_per_batch: int
    grad_accum_steps: int
    micro_batch: int
    per_gpu_batch: int
    start_iter: int
    notes: list[str] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)  # each step's wall time (main process)

    @property
    def micro_batch_seconds(self) -> float | None:
        """The median time of one micro-batch's step on a process (a step's time over its
        micro-batches), the first steps (warm-up) left out; None with fewer than 4 steps."""
        timed = sorted(self.step_seconds[2:])
        if len(timed) < 2:
            return None
        return statistics.median(timed) / self.grad_accum_steps

    @property
    def overall(self) -> NoiseScaleEstimate:
        """B_simple over every step measured."""
        return estimate(self.norms)

    def windows(self, count: int = DEFAULT_WINDOWS) -> list[NoiseScaleEstimate]:
        """B_simple over ``count`` consecutive windows of (nearly) equal length."""
        count = max(1, min(count, len(self.norms)))
        bounds = [round(i * len(self.norms) / count) for i in range(count + 1)]
        return [estimate(self.norms[a:b]) for a, b in itertools.pairwise(bounds)]

    def module_estimates(
        self, first: int | None = None, last: int | None = None
    ) -> dict[str, NoiseScaleEstimate]:
        """B_simple of each module group's gradient over iterations ``first`` .. ``last``
        (inclusive; every step measured by default), for a run measured ``by_module``."""
        steps = [
            n
            for n in self.norms
            if (first is None or n.iteration >= first) and (last is None or n.iteration <= last)
        ]
        if not steps:
            measured = (
                f"{self.norms[0].iteration} .. {self.norms[-1].iteration}" if self.norms else "none"
            )
            raise ConfigError(
                f"no step measured in iterations {first} .. {last} (measured: {measured}); "
                "pick first and last among the measured iterations"
            )
        if not steps[0].groups:
            raise ConfigError(
                "the steps hold no module groups: measure with by_module=True (noise-scale's "
                "per-module measurement)"
            )
        return {name: estimate([n.of_group(name) for n in steps]) for name in steps[0].groups}

    def window_loss(self, window: NoiseScaleEstimate) -> float:
        """The mean logged loss over a window's steps."""
        values = self.losses[window.first - self.start_iter : window.last - self.start_iter + 1]
        return sum(values) / len(values)

    def write_csv(self, path: str | os.PathLike) -> None:
        """Each step: iteration, LR, loss, the two squared norms and their batch sizes."""
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["iteration", "lr", "loss", *_NORM_COLUMNS])
            for n, lr, loss in zip(self.norms, self.lrs, self.losses, strict=True):
                norms = (repr(n.small_sq_norm), n.small_batch, repr(n.big_sq_norm), n.big_batch)
                writer.writerow([n.iteration, repr(lr), repr(loss), *norms])


def measure_noise_scale(
    cfg: CfgNode,
    *,
    num_iter: int = DEFAULT_NUM_ITER,
    start_iter: int = 0,
    by_module: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
) -> NoiseScaleResult:
    """Trains ``cfg``'s model on its data for ``num_iter`` steps of its LR schedule from step
    ``start_iter`` (at the reference batch, see the module) and returns every step's norms;
    ``by_module``: each module group's too (:meth:`NoiseScaleResult.module_estimates`).
    ``progress(steps_done, num_iter, seconds)`` is called after each step in the main process.

    Call it in every process of a process group (or in one process); all return the same result.
    Raises ``ConfigError`` for bad arguments, a config that cannot be scaled to this world size,
    missing data, or a schedule shorter than ``start_iter + num_iter`` steps.
    """
    if num_iter < 2:
        raise ConfigError(f"num_iter must be at least 2, got {num_iter}")
    if start_iter < 0:
        raise ConfigError(f"start_iter must be >= 0, got {start_iter}")
    world_size = comm.get_world_size()
    run, notes, doubled = _measurable_run(cfg, world_size)
    scaled, schedule = run.cfg, run.schedule
    if doubled and start_iter:
        # The same point of training: where the doubled batch's schedule has seen the images
        # the config's schedule has at ``start_iter``.
        notes.append(f"step {start_iter} of the config's schedule is step {start_iter // 2} here")
        start_iter //= 2
    if start_iter + num_iter > schedule.total_iterations:
        raise ConfigError(
            f"the schedule has {schedule.total_iterations} steps at {schedule.ims_per_batch} "
            f"images/step; {start_iter} + {num_iter} do not fit (fewer --num-iter or an earlier "
            "--start-iter)"
        )
    step = build_run_step(run, weights=run.settings.weights)
    optimizer, step_trainer = step.optimizer, step.trainer
    scheduler = trainer_class(run.adapter).build_lr_scheduler(scaled, optimizer, schedule)
    base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    place_scheduler(scheduler, optimizer, base_lrs, start_iter)
    meter = GradientNoiseMeter(
        step_trainer,
        schedule.micro_batch,
        keep_history=True,
        groups=module_groups(step_trainer.model) if by_module else None,
    )

    losses, lrs, step_seconds = [], [], []
    start = time.perf_counter()
    with EventStorage(start_iter) as storage:
        for iteration in range(start_iter, start_iter + num_iter):
            step_start = time.perf_counter()
            step_trainer.iter = storage.iter = iteration
            step_trainer.accumulation_steps = schedule.stage_at_iteration(
                iteration
            ).grad_accum_steps
            lrs.append(optimizer.param_groups[0]["lr"])
            step_trainer.run_step()
            losses.append(
                float(storage.history("total_loss").latest()) if comm.is_main_process() else 0.0
            )
            scheduler.step()
            step_seconds.append(time.perf_counter() - step_start)
            if progress is not None and comm.is_main_process():
                progress(len(step_seconds), num_iter, time.perf_counter() - start)
    del step, step_trainer  # the loader's workers, if any, end with its iterator
    if comm.get_world_size() > 1:
        losses = comm.all_gather(losses)[0]  # the main process's, logged over all processes

    written = cfg.clone()
    written.defrost()
    add_scaling_config(written)
    written.SCALING.DATASET_SIZE = scaled.SCALING.DATASET_SIZE
    return NoiseScaleResult(
        norms=meter.history,
        losses=losses,
        lrs=lrs,
        cfg=written,
        world_size=world_size,
        ims_per_batch=schedule.ims_per_batch,
        grad_accum_steps=schedule.grad_accum_steps,
        micro_batch=schedule.micro_batch,
        per_gpu_batch=written.SOLVER.IMS_PER_BATCH
        // (written.SOLVER.REFERENCE_WORLD_SIZE or world_size),
        start_iter=start_iter,
        notes=notes,
        step_seconds=step_seconds,
    )


def launch_noise_scale(
    cfg: CfgNode,
    num_gpus: int = 1,
    *,
    num_iter: int = DEFAULT_NUM_ITER,
    start_iter: int = 0,
    by_module: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
) -> NoiseScaleResult:
    """:func:`measure_noise_scale` in ``num_gpus`` processes on this machine (GPUs, or gloo
    processes on the CPU); the config is checked here before any process starts. ``progress``
    must be picklable (a module-level function) when ``num_gpus`` > 1."""
    if num_gpus > 1:
        resolve_run(cfg, num_gpus, keep_reference_batch=True)
    return launch_for_result(
        _measure, num_gpus, args=(cfg, num_iter, start_iter, by_module, progress)
    )


@unactionable_warnings_ignored()
def _measure(
    cfg: CfgNode,
    num_iter: int,
    start_iter: int,
    by_module: bool,
    progress: Callable[[int, int, float], None] | None,
) -> NoiseScaleResult:
    # Module level: launched processes import it.
    return measure_noise_scale(
        cfg, num_iter=num_iter, start_iter=start_iter, by_module=by_module, progress=progress
    )


def _measurable_run(cfg: CfgNode, world_size: int) -> tuple[Run, list[str], bool]:
    """The config's run at its reference batch on ``world_size`` processes, with two batch sizes
    per step (see the module); a note, and True, when it had to double the batch for that."""
    run = prepare_run(cfg, world_size, keep_reference_batch=True)
    scaled = run.cfg
    if world_size > 1 or scaled.SCALING.GRAD_ACCUM_STEPS > 1:
        return run, [], False
    twice = plan_scaling(scaled, 2, keep_reference_batch=False).cfg
    plan = plan_scaling(twice, 1, keep_reference_batch=True)
    plan.adapter.freeze()
    doubled = plan.cfg
    note = (
        f"one process at the reference batch ({scaled.SOLVER.IMS_PER_BATCH} images/step) has "
        f"one batch size per step: measured at {doubled.SOLVER.IMS_PER_BATCH} images/step "
        f"(2 micro-batches of {scaled.SOLVER.IMS_PER_BATCH}), LR {doubled.SOLVER.BASE_LR:g} "
        f"by the {doubled.SCALING.RULE} rule"
    )
    return Run.from_plan(plan, 1), [note], True

"""The gradient noise scale measured in training, from the two batch sizes every step already has.

McCandlish et al. (2018): below B_simple = tr(Sigma) / |G|^2 images per step, k times the batch
needs about k times fewer steps (the linear rule holds); past it, extra batch buys little. The
statistics are :class:`det_scaling.scaling.gradient_noise.GradientNoiseStats`; this module feeds
them from a running step, reading gradients that exist anyway:

* several processes: each process's gradient before DDP's all-reduce (its micro-batch x
  accumulation images), whose squared norm a DDP communication hook takes bucket by bucket before
  the usual all-reduce, against the all-reduced gradient (x world size images). The per-process
  norms are averaged over the processes (one scalar all-reduce per step), so that every process
  holds the same statistics;
* one process with accumulation: the first micro-batch's gradient (in ``.grad`` right after its
  backward, times the accumulation count that divides its loss) against the accumulated step's.

Norms are of unscaled gradients (AMP's scale is divided out), kept as tensors during the step and
read on the host only when the statistics are asked for; a step whose norms are not finite (one
AMP's GradScaler skips) is left out.

:class:`GradientNoiseMeter` is the measurement, a :class:`~det_scaling.engine.accumulation.
GradientObserver` of the step trainer; ``ScalingTrainer`` holds it as ``trainer.gradient_noise``
for any hook or scheduler that needs the statistics. :class:`NoiseScaleHook` logs them and keeps
them in checkpoints.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from det_scaling.engine.accumulation import AccumulatingTrainer
from det_scaling.errors import ConfigError
from det_scaling.scaling.gradient_noise import GradientNoiseStats, squared_grad_norm

__all__ = ["GradientNoiseMeter", "NoiseScaleHook", "StepNorms"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepNorms:
    """One step's squared gradient norms: of a batch of ``small_batch`` images (the mean over
    processes or micro-batches measured) and of the step's ``big_batch`` images."""

    iteration: int
    small_sq_norm: float
    small_batch: int
    big_sq_norm: float
    big_batch: int


class GradientNoiseMeter:
    """Measures |G_b|^2 and |G_B|^2 at every step of ``step_trainer`` and keeps their running
    averages (:attr:`stats`); ``micro_batch`` is the images each process loads per micro-batch.

    Build it before the first step (it registers the DDP communication hook). With
    ``keep_history`` every measured step is also kept in :attr:`history`. A step with one process
    and no accumulation has only one batch size: it is not measured (logged once).
    """

    def __init__(
        self,
        step_trainer: AccumulatingTrainer,
        micro_batch: int,
        decay: float = 0.99,
        *,
        keep_history: bool = False,
    ) -> None:
        if micro_batch < 1:
            raise ConfigError(f"micro_batch must be >= 1, got {micro_batch}")
        self._stats = GradientNoiseStats(decay)
        self.micro_batch = micro_batch
        self.world_size = comm.get_world_size()
        self.skipped_steps = 0  # steps with non-finite norms, left out
        self._history: list[StepNorms] | None = [] if keep_history else None
        self._step_trainer = step_trainer
        self._pending: list[tuple[int, torch.Tensor, int, torch.Tensor, int]] = []
        self._local_sq_norm: torch.Tensor | None = None  # this step's, summed over DDP buckets
        self._first_sq_norm: torch.Tensor | None = None  # this step's first micro-batch's
        self._warned_unmeasurable = False
        model = step_trainer.model
        if isinstance(model, DistributedDataParallel):
            model.register_comm_hook(None, self._comm_hook)
        elif self.world_size > 1:
            raise ConfigError("with several processes the model must be DistributedDataParallel")
        step_trainer.observers.append(self)

    # ---- what other hooks and schedulers read ----
    @property
    def stats(self) -> GradientNoiseStats:
        """The running averages, up to the last step (reads the steps' norms: one host sync)."""
        self._flush()
        return self._stats

    @property
    def history(self) -> list[StepNorms] | None:
        """Every step measured since :meth:`keep_history` (or ``keep_history=True``), else None."""
        self._flush()
        return self._history

    def keep_history(self) -> None:
        """From the next step on, keeps every step's norms in :attr:`history`."""
        self._flush()
        if self._history is None:
            self._history = []

    @property
    def noise_scale(self) -> float | None:
        """B_simple in images, from the running averages; None while not measurable."""
        return self.stats.noise_scale

    def summary(self) -> dict[str, Any]:
        """B_simple (images), |G|^2, tr(Sigma) per image and the steps measured, as plain values."""
        stats = self.stats
        return {
            "noise_scale": stats.noise_scale,
            "sq_grad_norm": stats.sq_grad_norm,
            "trace_sigma": stats.trace_sigma,
            "steps_measured": stats.steps,
            "steps_skipped": self.skipped_steps,
        }

    def state_dict(self) -> dict[str, Any]:
        return {**self.stats.state_dict(), "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending.clear()
        self._stats.load_state_dict(state)
        self.skipped_steps = int(state.get("skipped_steps", 0))

    # ---- the step (GradientObserver) ----
    def after_backward(self, micro_batch: int, accumulation_steps: int) -> None:
        if self.world_size == 1 and accumulation_steps > 1 and micro_batch == 0:
            # .grad holds this micro-batch's gradient divided by the accumulation count.
            self._first_sq_norm = self._unscaled(
                squared_grad_norm(self._step_trainer.model.parameters()) * accumulation_steps**2
            )

    def before_optimizer_step(self) -> None:
        trainer = self._step_trainer
        per_process = self.micro_batch * trainer.accumulation_steps
        if self.world_size > 1:
            if self._local_sq_norm is None:
                raise RuntimeError("the DDP communication hook did not run in this step")
            small = self._local_sq_norm.clone()
            dist.all_reduce(small)
            small /= self.world_size
            small_batch, big_batch = per_process, per_process * self.world_size
        elif self._first_sq_norm is not None:
            small, small_batch, big_batch = self._first_sq_norm, self.micro_batch, per_process
        else:
            self._warn_unmeasurable()
            return
        # The trainer unscaled the gradients before calling observers.
        big = squared_grad_norm(trainer.model.parameters())
        self._pending.append((trainer.iter, small, small_batch, big, big_batch))
        self._local_sq_norm = self._first_sq_norm = None

    # Not annotated: DDP checks the annotations of a hook against the types themselves, which
    # this module's postponed (string) annotations are not.
    def _comm_hook(self, state, bucket):
        """DDP's all-reduce of one bucket (a ``dist.GradBucket``), after adding the bucket's local
        squared norm to this step's."""
        buffer = bucket.buffer()
        dtype = torch.float64 if buffer.dtype == torch.float64 else torch.float32
        sq_norm = self._unscaled(torch.linalg.vector_norm(buffer, dtype=dtype).square())
        self._local_sq_norm = (
            sq_norm if self._local_sq_norm is None else self._local_sq_norm + sq_norm
        )
        return allreduce_hook(state, bucket)

    def _unscaled(self, sq_norm: torch.Tensor) -> torch.Tensor:
        """``sq_norm`` of AMP-scaled gradients divided by the scale squared (no host read)."""
        scaler = self._step_trainer.grad_scaler
        if scaler is None:
            return sq_norm
        return sq_norm / scaler._get_scale_async().to(sq_norm.dtype).square()

    def _flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        smalls = torch.stack([p[1].double() for p in pending]).cpu().tolist()
        bigs = torch.stack([p[3].double() for p in pending]).cpu().tolist()
        for (iteration, _, small_batch, _, big_batch), small, big in zip(
            pending, smalls, bigs, strict=True
        ):
            if not (math.isfinite(small) and math.isfinite(big)):
                self.skipped_steps += 1
                continue
            self._stats.update(small, small_batch, big, big_batch)
            if self._history is not None:
                self._history.append(StepNorms(iteration, small, small_batch, big, big_batch))

    def _warn_unmeasurable(self) -> None:
        if not self._warned_unmeasurable:
            logger.warning(
                "Gradient noise scale: a step of 1 process without gradient accumulation has "
                "only one batch size, so it is not measured; use 2+ processes or "
                "SCALING.GRAD_ACCUM_STEPS >= 2"
            )
            self._warned_unmeasurable = True


class NoiseScaleHook(HookBase):
    """Every ``period`` steps and at the last, puts ``noise_scale`` (B_simple, images),
    ``grad_sq_norm`` (|G|^2) and ``grad_trace_sigma`` (tr(Sigma) per image) into the
    ``EventStorage`` (hence metrics.json and tensorboard); the averages go into checkpoints."""

    def __init__(self, meter: GradientNoiseMeter, period: int) -> None:
        if period < 1:
            raise ConfigError(f"SCALING.NOISE_SCALE.PERIOD must be >= 1, got {period}")
        self.meter = meter
        self.period = period

    def after_step(self) -> None:
        steps_done = self.trainer.iter + 1
        if steps_done % self.period and steps_done != self.trainer.max_iter:
            return
        stats = self.meter.stats
        values = {
            "noise_scale": stats.noise_scale,
            "grad_sq_norm": stats.sq_grad_norm,
            "grad_trace_sigma": stats.trace_sigma,
        }
        for name, value in values.items():
            if value is not None:
                self.trainer.storage.put_scalar(name, value, smoothing_hint=False)

    def state_dict(self) -> dict[str, Any]:
        return self.meter.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.meter.load_state_dict(state_dict)

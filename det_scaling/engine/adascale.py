"""AdaScale SGD (Johnson et al. 2020, "AdaScale SGD: A User-Friendly Algorithm for Distributed
Training"): the LR and the schedule's clock follow the gain ratio measured in training.

A config's schedule (LR, length, steps, warmup) is written for a reference batch; a run at S
times that batch measures, at every step, how many reference steps the step is worth:
r = (s2 + m2) / (s2 / S + m2) in [1, S] (:func:`det_scaling.scaling.gradient_noise.gain_ratio`,
from the statistics :class:`~det_scaling.engine.gradient_noise.GradientNoiseMeter` keeps). The step
trains at r times the schedule's LR at the "scale-invariant" progress tau, then tau advances by r;
the run ends once tau reaches the schedule's length. Where the gradient is mostly noise r is near S
(the linear rule, S times fewer steps); where it is mostly signal r is near 1 (the reference
schedule, step for step). At S = 1, r = 1: exactly the reference schedule.

Reading r needs the step's squared gradient norms on the host: one synchronization per step.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from detectron2.engine import HookBase

from det_scaling.engine.gradient_noise import GradientNoiseMeter
from det_scaling.errors import ConfigError
from det_scaling.solver.lr_scheduler import ProgressLRScheduler

__all__ = ["AdaScale"]

logger = logging.getLogger(__name__)

# tau is a sum of floats: a run whose gains add up to the length within rounding is done.
_TOLERANCE = 1e-9


class AdaScale(HookBase):
    """AdaScale's clock, read by ``scheduler`` as its progress and LR factor, advanced by the
    step (a :class:`~det_scaling.engine.accumulation.GradientObserver`: add it to the step
    trainer's observers after ``meter``) and kept in checkpoints (a hook: register it before the
    checkpointer).

    ``scale`` is S, ``reference_batch`` the batch the schedule is written for, ``length`` the
    schedule's length in its steps. ``meter`` may be None only at S = 1 (r is 1 there).
    """

    def __init__(
        self,
        scheduler: ProgressLRScheduler,
        meter: GradientNoiseMeter | None,
        *,
        scale: float,
        reference_batch: int,
        length: int,
    ) -> None:
        if scale < 1:
            raise ConfigError(f"AdaScale needs S >= 1, got {scale}")
        if meter is None and scale != 1:
            raise ConfigError("AdaScale at S > 1 needs the gradient noise meter")
        if not isinstance(scheduler, ProgressLRScheduler):
            raise TypeError(
                f"AdaScale drives det_scaling's ProgressLRScheduler, got {type(scheduler).__name__}"
            )
        self.meter = meter
        self.scale = scale
        self.reference_batch = reference_batch
        self.length = length
        self.progress = 0.0  # tau: steps of the reference batch done
        self.gain = 1.0  # r of the last step
        self.steps = 0  # steps taken on this clock
        self.gain_sum = 0.0
        self.loaded = False  # whether a checkpoint's clock was loaded
        self._scheduler = scheduler
        scheduler.set_clock(self._progress_fraction, self._lr_factor)

    # ---- what the scheduler reads ----
    def _progress_fraction(self, iteration: int) -> float:
        return self.progress / self.length

    def _lr_factor(self, iteration: int) -> float:
        return self.gain

    @property
    def finished(self) -> bool:
        """Whether the clock reached the schedule's length."""
        return self.progress >= self.length - _TOLERANCE

    def steps_left_at_most(self) -> int:
        """Steps to the end if every one is worth one reference step (r >= 1)."""
        return max(math.ceil(self.length - self.progress - _TOLERANCE), 0)

    def steps_left_expected(self) -> int:
        """Steps to the end at the mean gain so far."""
        mean = self.gain_sum / self.steps if self.steps else 1.0
        return max(math.ceil((self.length - self.progress - _TOLERANCE) / mean), 0)

    # ---- the step (GradientObserver) ----
    def after_backward(self, micro_batch: int, accumulation_steps: int) -> None:
        pass

    def before_optimizer_step(self) -> None:
        """This step's r from the statistics up to it, its LR, and the clock moved by r."""
        self.gain = self._measured_gain()
        self._scheduler.refresh_lrs()
        self.progress += self.gain
        self.steps += 1
        self.gain_sum += self.gain

    def _measured_gain(self) -> float:
        if self.meter is None:
            return 1.0
        stats = self.meter.stats
        gain = stats.gain_ratio(self.scale, self.reference_batch)
        if gain is not None:
            return gain
        if stats.trace_sigma:
            # |G|^2 not resolved above the noise: r -> S as |G|^2 -> 0 (the linear rule).
            return self.scale
        return 1.0  # nothing measured yet: as the reference batch

    # ---- the hook ----
    def after_step(self) -> None:
        storage = self.trainer.storage
        storage.put_scalar("adascale_gain", self.gain, smoothing_hint=False)
        storage.put_scalar("adascale_progress", self.progress, smoothing_hint=False)
        if self.finished:
            self.trainer.end_after_this_step()
        else:
            self.trainer.expect_end(self.trainer.iter + 1 + self.steps_left_expected())

    def summary(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "reference_batch": self.reference_batch,
            "length": self.length,
            "progress": self.progress,
            "steps": self.steps,
            "mean_gain": self.gain_sum / self.steps if self.steps else None,
            "last_gain": self.gain,
        }

    def state_dict(self) -> dict[str, Any]:
        state = {
            "progress": self.progress,
            "gain": self.gain,
            "steps": self.steps,
            "gain_sum": self.gain_sum,
            "scale": self.scale,
            "reference_batch": self.reference_batch,
            "length": self.length,
        }
        if self.meter is not None:
            state["gradient_noise"] = self.meter.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues the checkpoint's clock, at any S: tau and the statistics (per image) do not
        depend on the batch. tau is converted to this run's reference batch (same reference
        images); a longer or shorter schedule continues at the same tau."""
        self.progress = float(state["progress"]) * state["reference_batch"] / self.reference_batch
        self.gain = float(state["gain"])
        self.steps = int(state["steps"])
        self.gain_sum = float(state["gain_sum"])
        if self.meter is not None and "gradient_noise" in state:
            self.meter.load_state_dict(state["gradient_noise"])
        self.loaded = True
        logger.info(
            "AdaScale: resuming at progress %.6g of %d steps of batch %d, S = %g (the "
            "checkpoint's: %.6g of %d steps of batch %d, S = %g)",
            self.progress,
            self.length,
            self.reference_batch,
            self.scale,
            state["progress"],
            state["length"],
            state["reference_batch"],
            state["scale"],
        )

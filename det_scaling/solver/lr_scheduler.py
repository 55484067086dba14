"""The LR scheduler the builders return: a progress schedule, optionally reduced on plateau.

It is detectron2's ``LRMultiplier`` (so detectron2's ``LRScheduler`` hook steps it and saves its
state) with a :class:`~det_scaling.solver.plateau.Plateau` factor fed by
:meth:`ProgressLRScheduler.observe`, and ``progress`` and ``lr_factor`` functions of the
iteration (from the run's batch schedule, :mod:`det_scaling.scaling.batch_schedule`), so that its
state is the iteration and the plateau, and a resume is exact.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from detectron2.solver.lr_scheduler import LRMultiplier
from fvcore.common.param_scheduler import ParamScheduler

from det_scaling.errors import ConfigError
from det_scaling.solver.plateau import Plateau

__all__ = ["ProgressLRScheduler"]

logger = logging.getLogger(__name__)


class ProgressLRScheduler(LRMultiplier):
    """Sets each parameter group's LR to ``initial LR * multiplier(iteration / max_iter)``, times
    the plateau factor when a :class:`Plateau` is given. Step it once after each optimizer step.

    The plateau factor never takes a group's LR below ``min_lr`` (an LR the schedule itself puts
    lower is kept). Observations made before ``warmup_iters`` are ignored, so the warmup is not
    mistaken for a plateau. Past ``max_iter`` the schedule keeps its final value.

    ``progress(iteration)``, when given, replaces ``iteration / max_iter`` as the multiplier's
    argument (clamped to [0, 1]); ``lr_factor(iteration)``, when given, multiplies the scheduled
    LR (before the plateau factor); ``build_lr_scheduler`` passes the batch schedule's.

    ``state_dict()`` is ``{"base_lrs": [...], "last_epoch": int, "max_iter": int, "plateau":
    Plateau.state_dict() or None}``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        multiplier: ParamScheduler,
        max_iter: int,
        *,
        plateau: Plateau | None = None,
        warmup_iters: int = 0,
        min_lr: float = 0.0,
        last_iter: int = -1,
        progress: Callable[[int], float] | None = None,
        lr_factor: Callable[[int], float] | None = None,
    ) -> None:
        if max_iter < 1:
            raise ConfigError(f"SOLVER.MAX_ITER must be positive, got {max_iter}")
        self._progress = progress
        self._lr_factor = lr_factor
        self._plateau = plateau
        self._warmup_iters = warmup_iters
        self._min_lr = min_lr
        super().__init__(optimizer, multiplier, max_iter, last_iter)

    @property
    def plateau(self) -> Plateau | None:
        """The plateau state, or None when reduce-on-plateau is off."""
        return self._plateau

    def get_lr(self) -> list[float]:
        """The LR of each parameter group at iteration ``last_epoch``."""
        progress = self.last_epoch / self._max_iter
        if self._progress is not None:
            progress = self._progress(self.last_epoch)
        multiplier = self._multiplier(min(max(progress, 0.0), 1.0))
        if self._lr_factor is not None:
            multiplier *= self._lr_factor(self.last_epoch)
        scheduled = [base_lr * multiplier for base_lr in self.base_lrs]
        factor = 1.0 if self._plateau is None else self._plateau.factor
        if factor == 1.0:
            return scheduled
        return [max(lr * factor, min(lr, self._min_lr)) for lr in scheduled]

    def set_clock(
        self, progress: Callable[[int], float], lr_factor: Callable[[int], float]
    ) -> None:
        """Replaces the ``progress`` and ``lr_factor`` functions (AdaScale's clock, which the run
        advances) and sets the LRs from them."""
        self._progress = progress
        self._lr_factor = lr_factor
        self.refresh_lrs()

    def refresh_lrs(self) -> None:
        """Sets each group's LR at ``last_epoch`` again, after the clock or the plateau moved."""
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def observe(self, value: float) -> bool:
        """Feeds one evaluation's metric to the plateau rule; returns True when it reduced the LR
        (the new LR applies from the next optimizer step)."""
        if self._plateau is None:
            raise RuntimeError("observe() needs reduce-on-plateau: set SOLVER.PLATEAU.ENABLED True")
        if self.last_epoch < self._warmup_iters:
            return False
        reduced = self._plateau.observe(value)
        if reduced:
            self.refresh_lrs()
            logger.info(
                "LR reduced on plateau (x%g, reduction %d)",
                self._plateau.reduce_factor,
                self._plateau.num_reductions,
            )
        return reduced

    def state_dict(self) -> dict[str, Any]:
        """``base_lrs``, ``last_epoch``, ``max_iter`` (a record) and the ``plateau`` state."""
        state = super().state_dict()
        state["max_iter"] = self._max_iter
        state["plateau"] = None if self._plateau is None else self._plateau.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s iteration and plateau state; the base LRs stay this
        scheduler's (the config's, which follow the run's total batch), never the checkpoint's.
        A resume at another batch moves the iteration afterwards
        (:func:`det_scaling.engine.resume.place_scheduler`)."""
        self.last_epoch = int(state_dict["last_epoch"])
        plateau_state = state_dict.get("plateau")
        if self._plateau is not None and plateau_state is not None:
            self._plateau.load_state_dict(plateau_state)
        self.refresh_lrs()

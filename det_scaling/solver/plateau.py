"""Reduce the LR when a validation metric stops improving, on top of a progress schedule.

:class:`Plateau` holds the state (best value, evaluations without improvement, cooldown, the
factor reached so far). It lives inside the
:class:`~det_scaling.solver.lr_scheduler.ProgressLRScheduler`, which multiplies its schedule by
``Plateau.factor`` and saves the plateau state with its own, so a checkpoint restores it.
A plain loop calls ``scheduler.observe(value)`` after each evaluation; a detectron2 trainer
registers :class:`det_scaling.engine.hooks.PlateauHook` after its ``EvalHook``.
"""

from __future__ import annotations

import math
from typing import Any

from det_scaling.errors import ConfigError

__all__ = ["Plateau"]

_MODES = ("min", "max")
_THRESHOLD_MODES = ("rel", "abs")


class Plateau:
    """The reduce-on-plateau rule, as a state machine over observed metric values.

    An observation improves on the best so far when it is better by more than a margin:
    ``threshold * |best|`` in "rel" threshold mode, ``threshold`` in "abs" mode. After more than
    ``patience`` observations in a row without improvement (torch's ``ReduceLROnPlateau``
    counting), :attr:`factor`, the multiplier applied to the LR, is multiplied by
    ``reduce_factor``, and the next ``cooldown`` observations are not counted.
    """

    def __init__(
        self,
        mode: str = "max",
        reduce_factor: float = 0.1,
        patience: int = 2,
        cooldown: int = 0,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
    ) -> None:
        if mode not in _MODES:
            raise ConfigError(f"SOLVER.PLATEAU.MODE must be one of {list(_MODES)}, got {mode!r}")
        if threshold_mode not in _THRESHOLD_MODES:
            raise ConfigError(
                f"SOLVER.PLATEAU.THRESHOLD_MODE must be one of {list(_THRESHOLD_MODES)}, "
                f"got {threshold_mode!r}"
            )
        if not 0.0 < reduce_factor < 1.0:
            raise ConfigError(f"SOLVER.PLATEAU.FACTOR must be in (0, 1), got {reduce_factor}")
        if patience < 0 or cooldown < 0 or threshold < 0:
            raise ConfigError(
                "SOLVER.PLATEAU.PATIENCE, COOLDOWN and THRESHOLD must be >= 0, got "
                f"{patience}, {cooldown}, {threshold}"
            )
        self.mode = mode
        self.reduce_factor = reduce_factor
        self.patience = patience
        self.cooldown = cooldown
        self.threshold = threshold
        self.threshold_mode = threshold_mode
        self.best = -math.inf if mode == "max" else math.inf
        self.num_bad = 0
        self.cooldown_left = 0
        self.factor = 1.0
        self.num_reductions = 0

    def improves(self, value: float) -> bool:
        """Whether ``value`` counts as an improvement on the best so far (NaN never does)."""
        if self.threshold_mode == "rel":
            margin = abs(self.best) * self.threshold if math.isfinite(self.best) else 0.0
        else:
            margin = self.threshold
        if self.mode == "max":
            return value > self.best + margin
        return value < self.best - margin

    def observe(self, value: float) -> bool:
        """Takes one evaluation's metric; returns True when it reduced :attr:`factor`."""
        value = float(value)
        if self.improves(value):
            self.best = value
            self.num_bad = 0
        else:
            self.num_bad += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.num_bad = 0
        if self.num_bad > self.patience:
            self.factor *= self.reduce_factor
            self.num_reductions += 1
            self.cooldown_left = self.cooldown
            self.num_bad = 0
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        """The state that changes with observations (the settings come from the config)."""
        return {
            "best": self.best,
            "num_bad": self.num_bad,
            "cooldown_left": self.cooldown_left,
            "factor": self.factor,
            "num_reductions": self.num_reductions,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned."""
        self.best = float(state["best"])
        self.num_bad = int(state["num_bad"])
        self.cooldown_left = int(state["cooldown_left"])
        self.factor = float(state["factor"])
        self.num_reductions = int(state["num_reductions"])

"""Reduce the LR when a validation metric stops improving, on top of a progress schedule.

:class:`Plateau` holds the state (best value, evaluations without improvement, cooldown, the
factor reached so far). It lives inside the
:class:`~det_scaling.solver.lr_scheduler.ProgressLRScheduler`, which multiplies its schedule by
``Plateau.factor`` and saves the plateau state with its own, so detectron2's checkpointer
(through the ``LRScheduler`` hook) restores it on resume.

The metric reaches it in one of two ways:

* a plain loop calls ``scheduler.observe(value)`` after each evaluation;
* a detectron2 trainer registers :class:`PlateauHook` after its ``EvalHook`` (the
  :class:`~det_scaling.solver.trainer.SolverMixin` does it when ``SOLVER.PLATEAU.ENABLED``); the
  hook reads ``SOLVER.PLATEAU.METRIC`` from the ``EventStorage`` where ``EvalHook`` wrote the
  results, and shares the main process's value with every worker so that all keep the same LR.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from detectron2.engine.train_loop import HookBase
from detectron2.utils import comm

__all__ = ["Plateau", "PlateauHook"]

_MODES = ("min", "max")
_THRESHOLD_MODES = ("rel", "abs")

logger = logging.getLogger(__name__)


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
            raise ValueError(f"SOLVER.PLATEAU.MODE must be one of {list(_MODES)}, got {mode!r}")
        if threshold_mode not in _THRESHOLD_MODES:
            raise ValueError(
                f"SOLVER.PLATEAU.THRESHOLD_MODE must be one of {list(_THRESHOLD_MODES)}, "
                f"got {threshold_mode!r}"
            )
        if not 0.0 < reduce_factor < 1.0:
            raise ValueError(f"SOLVER.PLATEAU.FACTOR must be in (0, 1), got {reduce_factor}")
        if patience < 0 or cooldown < 0 or threshold < 0:
            raise ValueError(
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


class PlateauHook(HookBase):
    """Feeds ``metric`` to the trainer's scheduler after each periodic evaluation.

    Register it after detectron2's ``EvalHook`` with the same ``eval_period`` (the cfg's
    ``TEST.EVAL_PERIOD``): at those iterations ``EvalHook`` has just written the flattened results
    into the ``EventStorage``, and this hook passes ``metric`` (e.g. "bbox/AP50") to
    ``scheduler.observe``. The scheduler is the one given, else ``trainer.scheduler``. The hook
    keeps no state of its own: the plateau state is in the scheduler's ``state_dict``.
    """

    def __init__(self, eval_period: int, metric: str, scheduler: Any = None) -> None:
        self._period = eval_period
        self._metric = metric
        self._scheduler = scheduler
        self._warned = False

    @property
    def scheduler(self) -> Any:
        """The scheduler fed with the metric."""
        return self._scheduler if self._scheduler is not None else self.trainer.scheduler

    def after_step(self) -> None:
        """After an evaluation iteration, passes the metric to ``scheduler.observe``."""
        next_iter = self.trainer.iter + 1
        # The iterations where EvalHook evaluates (it leaves the last one to after_train, when a
        # reduction no longer matters); every worker gets here at the same iterations.
        if self._period <= 0 or next_iter % self._period or next_iter == self.trainer.max_iter:
            return
        latest = self.trainer.storage.latest()
        value, iteration = latest.get(self._metric, (None, None))
        local = float(value) if iteration == self.trainer.iter else None
        # Only the main process may have evaluation results: all take the first value found.
        values = comm.all_gather(local) if comm.get_world_size() > 1 else [local]
        found = [v for v in values if v is not None]
        if not found:
            if not self._warned:
                logger.warning(
                    "SOLVER.PLATEAU.METRIC %r is not among the evaluation results written at "
                    "iteration %d (%s); the LR is not reduced on plateau",
                    self._metric,
                    self.trainer.iter,
                    ", ".join(sorted(k for k, (_, it) in latest.items() if it == self.trainer.iter))
                    or "none",
                )
                self._warned = True
            return
        self.scheduler.observe(found[0])

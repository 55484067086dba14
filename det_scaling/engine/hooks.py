"""The hooks the trainer adds to detectron2's: progress in images, periods in images, plateau.

* :class:`ScalingProgress` counts the images seen and writes the run's geometry into every
  checkpoint (its key is the class name: keep it);
* :class:`ImagePeriodHook` makes a periodic detectron2 hook (checkpoints, evaluation, PreciseBN,
  plateau) act every so many images of the starting batch, as the batch schedule says;
* :class:`PlateauHook` feeds evaluation metrics to a reduce-on-plateau scheduler;
  :func:`add_plateau_hook` places it after the ``EvalHook``;
* :class:`EtaPrinter`, a writer: detectron2's console printer, its ETA counting to the run's end
  where that moves.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from detectron2.engine import HookBase, hooks
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, EventWriter

from det_scaling.scaling.batch_schedule import BatchSchedule

__all__ = [
    "EtaPrinter",
    "ImagePeriodHook",
    "PlateauHook",
    "ScalingProgress",
    "add_plateau_hook",
    "is_periodic",
]

logger = logging.getLogger(__name__)


class ScalingProgress(HookBase):
    """Counts the images seen; its state, in every checkpoint, is the images seen, the steps done,
    the run's geometry (:meth:`BatchSchedule.state_at`), base LR and data set size.

    Register it before the checkpointer, so a checkpoint includes the step just done. Loading a
    checkpoint only keeps its state in :attr:`loaded_state`: the trainer converts it once
    everything is loaded (:func:`det_scaling.engine.resume.resume_point`) and calls
    :meth:`start_at`.
    """

    def __init__(self, schedule: BatchSchedule, base_lr: float) -> None:
        self.schedule = schedule
        self.base_lr = float(base_lr)
        self.start_iter = 0
        self.images_at_start = 0  # exact: a converted iteration rounds images to whole steps
        self.iterations_done = 0
        self.loaded_state: dict[str, Any] | None = None
        # The checkpoint's state when its geometry differed from this run's (a converted resume).
        self.resumed_from: dict[str, Any] | None = None
        self.train_seconds = 0.0
        self._train_start: float | None = None

    @property
    def images_seen(self) -> int:
        """Images consumed by all processes together over the whole run, resumes included."""
        schedule = self.schedule
        return (
            self.images_at_start
            + schedule.images_at_iteration(self.iterations_done)
            - schedule.images_at_iteration(self.start_iter)
        )

    @property
    def epochs_seen(self) -> float | None:
        """Epochs consumed, or None when ``SCALING.DATASET_SIZE`` is unknown (0)."""
        return self.schedule.epochs(self.images_seen)

    def start_at(self, iterations_done: int, images_seen: int) -> None:
        """Training (re)starts after ``iterations_done`` steps that saw ``images_seen`` images."""
        self.start_iter = self.iterations_done = iterations_done
        self.images_at_start = images_seen

    def before_train(self) -> None:
        self._train_start = time.perf_counter()

    def after_step(self) -> None:
        self.iterations_done = self.trainer.iter + 1
        storage = self.trainer.storage
        storage.put_scalar("images_seen", self.images_seen, smoothing_hint=False)
        if self.epochs_seen is not None:
            storage.put_scalar("epoch", self.epochs_seen, smoothing_hint=False)
        # Up to the last step, so the final evaluation does not count as training time.
        assert self._train_start is not None  # detectron2 runs before_train before any step
        self.train_seconds = time.perf_counter() - self._train_start

    def state_dict(self) -> dict[str, Any]:
        return {
            "images_seen": self.images_seen,
            "iteration": self.iterations_done,  # steps done (detectron2 stores the last index)
            **self.schedule.state_at(self.iterations_done),
            "base_lr": self.base_lr,
            "dataset_size": self.schedule.dataset_size,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loaded_state = dict(state_dict)


class ImagePeriodHook(HookBase):
    """Runs a periodic detectron2 hook every ``period`` steps *of the starting batch*, in images.

    detectron2's periodic hooks act when ``steps done % period == 0``; once the batch grows, only
    a period in images keeps its epochs. Before each ``after_step`` of the wrapped hook, its
    period is set to the steps done when the step ends an image period
    (:meth:`BatchSchedule.is_period_end`) and to one more otherwise. With a fixed batch it acts
    exactly as the hook alone. Wrapped hooks must keep no checkpoint state (it would be filed
    under this class's name).
    """

    def __init__(self, hook: HookBase, schedule: BatchSchedule) -> None:
        self.hook = hook
        self.schedule = schedule
        # fvcore's PeriodicCheckpointer calls it ``period``; detectron2's other hooks ``_period``.
        self._attribute = "period" if isinstance(hook, hooks.PeriodicCheckpointer) else "_period"
        self.period: int = getattr(hook, self._attribute)

    @property
    def trainer(self) -> Any:  # register_hooks sets it on the wrapper; the hook needs it too
        return self.hook.trainer

    @trainer.setter
    def trainer(self, trainer: Any) -> None:
        self.hook.trainer = trainer

    def before_train(self) -> None:
        self.hook.before_train()

    def after_train(self) -> None:
        self.hook.after_train()

    def before_step(self) -> None:
        self.hook.before_step()

    def after_step(self) -> None:
        if self.period > 0:
            steps_done = self.trainer.iter + 1
            due = self.schedule.is_period_end(steps_done, self.period)
            setattr(self.hook, self._attribute, steps_done if due else steps_done + 1)
        self.hook.after_step()


def is_periodic(hook: HookBase) -> bool:
    """Whether :class:`ImagePeriodHook` can wrap ``hook`` (a ``PreciseBN`` disabled for want of
    BatchNorm layers has no period)."""
    if isinstance(hook, hooks.PeriodicCheckpointer):
        return True
    periodic = isinstance(hook, hooks.EvalHook | hooks.PreciseBN | PlateauHook)
    return periodic and hasattr(hook, "_period")


class PlateauHook(HookBase):
    """Feeds ``metric`` to the trainer's scheduler (``scheduler.observe``) after each periodic
    evaluation.

    Register it after detectron2's ``EvalHook``, with the same period: at those steps the
    ``EventStorage`` holds the flattened results. The main process's value is shared with every
    worker so all keep the same LR. The plateau state is the scheduler's, not the hook's.
    """

    def __init__(self, eval_period: int, metric: str, scheduler: Any = None) -> None:
        self._period = eval_period
        self._metric = metric
        self._scheduler = scheduler
        self._warned = False

    @property
    def scheduler(self) -> Any:
        """The scheduler fed with the metric (the one given, else ``trainer.scheduler``)."""
        return self._scheduler if self._scheduler is not None else self.trainer.scheduler

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        # EvalHook's periodic steps; it leaves the last one to after_train, when a reduction no
        # longer matters. Every worker gets here at the same steps.
        if self._period <= 0 or next_iter % self._period or next_iter == self.trainer.max_iter:
            return
        latest = self.trainer.storage.latest()
        value, iteration = latest.get(self._metric, (None, None))
        local = float(value) if iteration == self.trainer.iter else None
        values = comm.all_gather(local) if comm.get_world_size() > 1 else [local]
        found = [v for v in values if v is not None]
        if not found:
            if not self._warned:
                written = sorted(k for k, (_, it) in latest.items() if it == self.trainer.iter)
                logger.warning(
                    "SOLVER.PLATEAU.METRIC %r is not among the evaluation results of iteration "
                    "%d (%s); the LR is not reduced on plateau",
                    self._metric,
                    self.trainer.iter,
                    ", ".join(written) or "none",
                )
                self._warned = True
            return
        self.scheduler.observe(found[0])


def add_plateau_hook(cfg: Any, hook_list: list[Any]) -> list[Any]:
    """``hook_list`` with a :class:`PlateauHook` after its last ``EvalHook`` (at the end when it
    has none) when ``SOLVER.PLATEAU.ENABLED``; the list itself otherwise."""
    if not cfg.SOLVER.PLATEAU.ENABLED:
        return hook_list
    plateau_hook = PlateauHook(cfg.TEST.EVAL_PERIOD, cfg.SOLVER.PLATEAU.METRIC)
    eval_positions = [i for i, h in enumerate(hook_list) if isinstance(h, hooks.EvalHook)]
    position = eval_positions[-1] + 1 if eval_positions else len(hook_list)
    return [*hook_list[:position], plateau_hook, *hook_list[position:]]


class EtaPrinter(EventWriter):
    """detectron2's console printer (``CommonMetricPrinter``) for a run of ``max_iter`` steps,
    built again by :meth:`expect_end` for another length (AdaScale ends when its clock does):
    detectron2's printer takes the length once, when built, for its ETA."""

    def __init__(self, max_iter: int) -> None:
        self.max_iter = max_iter
        self.printer = CommonMetricPrinter(max_iter)

    def expect_end(self, max_iter: int) -> None:
        """The run now ends after ``max_iter`` steps: the ETA counts to there."""
        if max_iter != self.max_iter:
            self.max_iter = max_iter
            self.printer = CommonMetricPrinter(max_iter)

    def write(self) -> None:
        self.printer.write()

    def close(self) -> None:
        self.printer.close()

"""AdaBatch in the engine: periods counted in images (the LR over the stages is
``det_scaling.solver.build_lr_scheduler``'s).

:class:`~det_scaling.engine.trainer.ScalingTrainer` does the rest when
``SCALING.ADABATCH.ENABLED``: its step trainer is always an
:class:`~det_scaling.engine.accumulation.AccumulatingTrainer`, whose ``accumulation_steps`` it
sets before each step to the stage's (the data loader keeps its micro-batch), ``MAX_ITER`` is
the sum of the stages' steps, and :class:`~det_scaling.engine.resume.ScalingProgress` counts the
images of each stage and checkpoints the stage.

Nothing here holds state: the stage, the LR factor and the schedule's progress are functions of
the iteration (:class:`~det_scaling.adabatch.AdaBatchSchedule`), and the iteration is what
detectron2's checkpoints restore, so a resume lands in the same stage with the same LR.
"""

from __future__ import annotations

from typing import Any

from detectron2.engine import HookBase, hooks

from det_scaling.adabatch import AdaBatchSchedule
from det_scaling.solver import PlateauHook

__all__ = ["ImagePeriodHook", "is_periodic"]


class ImagePeriodHook(HookBase):
    """Runs a periodic detectron2 hook (``PeriodicCheckpointer``, ``EvalHook``, ``PreciseBN``,
    det_scaling's ``PlateauHook``) every ``period`` steps *of the starting batch*, in images.

    Those hooks act when ``steps done % period == 0``. Once the batch grows, a period written in
    steps (``SOLVER.CHECKPOINT_PERIOD``, ``TEST.EVAL_PERIOD``) must mean images to keep its
    epochs, and no fixed step count does. Before each of the hook's ``after_step`` calls, this
    wrapper sets the period the hook tests to the steps done when the step ends an image period
    (:meth:`AdaBatchSchedule.is_period_end`) and to one more otherwise; the hook's own handling
    of the last step is untouched. A period <= 0 (never) is left as it is. The hooks it wraps
    keep no checkpoint state (detectron2 would file a wrapped hook's state under this class's
    name).
    """

    def __init__(self, hook: HookBase, schedule: AdaBatchSchedule) -> None:
        self.hook = hook
        self.schedule = schedule
        # fvcore's PeriodicCheckpointer calls it ``period``; detectron2's other hooks ``_period``.
        self._attribute = "period" if isinstance(hook, hooks.PeriodicCheckpointer) else "_period"
        self.period: int = getattr(hook, self._attribute)

    @property
    def trainer(self) -> Any:  # register_hooks sets it on the wrapper: the hook needs it too
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
    """Whether ``hook`` is one of the periodic hooks :class:`ImagePeriodHook` can wrap (a
    ``PreciseBN`` disabled for want of BatchNorm layers has no period)."""
    if isinstance(hook, hooks.PeriodicCheckpointer):
        return True
    periodic = isinstance(hook, hooks.EvalHook | hooks.PreciseBN | PlateauHook)
    return periodic and hasattr(hook, "_period")

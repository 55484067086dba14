"""``ScalingTrainer``: detectron2's ``DefaultTrainer`` for configs that ``plan_scaling`` scaled.

What it changes in ``DefaultTrainer``, and why:

* ``__init__`` builds the DDP model itself (:func:`det_scaling.engine.launch.create_ddp_model`):
  detectron2 passes ``device_ids``, which DDP rejects for CPU models. It takes the config as
  scaled and never calls ``auto_scale_workers`` (see :func:`check_scaled`).
* the run follows its :class:`~det_scaling.scaling.batch_schedule.BatchSchedule`: micro-batches
  loaded, accumulated per step (:class:`~det_scaling.engine.accumulation.AccumulatingTrainer`),
  the LR schedule over images seen, periods in images (:mod:`det_scaling.engine.hooks`), the steps
  of the run (a fixed batch is one stage; AdaBatch, several);
* the optimizer and LR scheduler come from det_scaling's registries (:class:`SolverMixin`);
* checkpoints also hold the optimizer state (v0.6's ``DefaultTrainer`` leaves it out) and the
  images seen with the geometry, so ``resume_or_load`` continues at the same images seen on
  another GPU count (:mod:`det_scaling.engine.resume`); they are written atomically, and resume
  skips an unreadable one for the newest readable (:mod:`det_scaling.engine.checkpoint`);
* a non-finite loss raises ``FloatingPointError`` with scaling advice (:func:`nan_advice`);
* with ``SCALING.AUTO_MICRO_BATCH``, a step that runs out of memory is retried with half the
  micro-batch (:mod:`.micro_batch_limit`);
* ``train()`` ends with a summary, logged and written to ``OUTPUT_DIR/summary.json``
  (:mod:`.summary`).

It reads the config through its format (:mod:`det_scaling.config`): the recipe and the run
settings (output directory, periods, AMP, DDP options) of a yacs config or a LazyConfig. A task
other than detection overrides ``build_model``, ``build_train_loader``, ``build_test_loader`` and
``build_evaluator`` only; a LazyConfig's trainer (:mod:`.lazy_trainer`) overrides
``build_model``, ``build_train_loader`` and ``test``.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog, build_detection_train_loader
from detectron2.engine import DefaultTrainer, TrainerBase, default_writers, hooks
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, PascalVOCDetectionEvaluator
from detectron2.evaluation.testing import verify_results
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, EventStorage
from detectron2.utils.logger import setup_logger
from fvcore.nn.precise_bn import get_bn_modules

from det_scaling import compat
from det_scaling.config import Recipe
from det_scaling.engine.accumulation import MicroBatchOutOfMemory, micro_batch_cfg
from det_scaling.engine.adascale import AdaScale
from det_scaling.engine.checkpoint import SafeCheckpointer, periodic_checkpointer
from det_scaling.engine.gradient_noise import GradientNoiseMeter, NoiseScaleHook
from det_scaling.engine.hooks import (
    EtaPrinter,
    ImagePeriodHook,
    ScalingProgress,
    add_plateau_hook,
    is_periodic,
)
from det_scaling.engine.micro_batch_limit import (
    check_auto_micro_batch,
    halve_micro_batch,
    limit_micro_batch,
)
from det_scaling.engine.preemption import PreemptionHook, installed
from det_scaling.engine.resume import place_scheduler, resume_point
from det_scaling.engine.run import Run
from det_scaling.engine.solver_mixin import SolverMixin
from det_scaling.engine.step import build_step
from det_scaling.engine.summary import (
    build_environment,
    build_summary,
    format_summary,
    write_summary,
)
from det_scaling.scaling.plan import adascale_scale
from det_scaling.scaling.rules import NOISE_SCHEDULE, applied_rule

__all__ = ["ScalingTrainer", "nan_advice"]

logger = logging.getLogger(__name__)


def nan_advice(recipe: Recipe, world_size: int) -> str:
    """What to tell a user whose losses became NaN or infinite with a config of this (scaled)
    recipe on ``world_size`` processes: the scaled settings and the fixes, under the config's own
    keys."""
    keys = recipe.keys
    advice = (
        f"det_scaling: this run uses {keys.base_lr} {recipe.base_lr:g} on {world_size} "
        f"process(es) with a total batch of {recipe.ims_per_batch} ({keys.ims_per_batch}, "
        f"{recipe.grad_accum_steps} micro-batch(es) per step), scaling rule {recipe.rule!r} "
        f"({keys.rule}). The config may be written for more GPUs: set "
        f"{keys.reference_world_size} to the GPU count it was written for so det_scaling "
        f"rescales it, or lower {keys.base_lr}"
    )
    rule = applied_rule(recipe)[0]
    return advice + rule.nan_advice(keys) + "."


class ScalingTrainer(SolverMixin, TrainerBase):
    """A trainer with ``DefaultTrainer``'s interface for a config scaled by ``plan_scaling`` (see
    the module): detectron2's ``TrainerBase`` loop, hooks, writers, checkpointer and evaluation,
    and ``DefaultTrainer``'s ``build_*`` classmethods, ``test`` and ``resume_or_load``, which a
    task overrides as it would there.

    Use it as ``DefaultTrainer``::

        trainer = ScalingTrainer(plan_scaling(cfg, comm.get_world_size()).cfg)
        trainer.resume_or_load(resume=args.resume)
        summary = trainer.train()

    ``run``, when given, is the config already resolved for this process (``tools/train.py``
    passes it); otherwise it is resolved here. It works on CUDA (NCCL) and on the CPU
    (``MODEL.DEVICE cpu``, gloo processes).
    """

    runs_scaling_step = True  # accumulation, AdaScale and AdaBatch are this trainer's step

    # detectron2's DefaultTrainer pieces, kept as they are there.
    build_model = DefaultTrainer.__dict__["build_model"]
    build_test_loader = DefaultTrainer.__dict__["build_test_loader"]
    test = DefaultTrainer.__dict__["test"]
    model = DefaultTrainer.__dict__["model"]  # the step's (DDP) model, data loader, optimizer
    data_loader = DefaultTrainer.__dict__["data_loader"]
    optimizer = DefaultTrainer.__dict__["optimizer"]

    def __init__(self, cfg: Any, run: Run | None = None) -> None:
        super().__init__()
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        self.world_size = comm.get_world_size()
        if run is None:
            run = Run.of_scaled(cfg, self.world_size)
        cfg = run.cfg
        self.recipe = run.recipe
        self.settings = run.settings
        self.batch_schedule = run.schedule
        adascale = applied_rule(self.recipe)[0].adascale
        scale = adascale_scale(self.recipe, self.world_size) if adascale else 1.0
        check_auto_micro_batch(self.recipe.keys, self.settings, adascale and scale > 1)

        self.run = run
        step = build_step(run, self)
        optimizer, model = step.optimizer, step.ddp_model
        self._trainer = step.trainer
        self.gradient_noise = self.build_gradient_noise(cfg, measure=scale > 1)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer, self.batch_schedule)
        self.adascale = self.build_adascale(scale) if adascale else None
        # This run's base LR of each param group: a checkpoint of another GPU count carries its
        # own, which resume must not bring back. torch schedulers keep it as initial_lr.
        self._base_lrs = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
        self.checkpointer = SafeCheckpointer(
            model,
            self.settings.output_dir,
            allow_pickled=self.settings.allow_pickled_weights,
            allow_pickled_key=run.adapter.keys.allow_pickled_weights,
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = self.batch_schedule.total_iterations
        self.cfg = cfg
        self.progress = ScalingProgress(self.batch_schedule, self.recipe.base_lr)
        self.summary: dict[str, Any] | None = None
        # The seed this process's torch generator was given: default_setup's SEED + rank, or the
        # seed it drew for a negative SEED (it logs that one and keeps it nowhere else).
        self.seed_used = torch.initial_seed()
        self.writers: list[Any] = []  # the main process's, from build_hooks
        self.register_hooks(self.build_hooks())

    # ---- building blocks a task may override ----
    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        """detectron2's detection training loader, called with a config whose
        ``SOLVER.IMS_PER_BATCH`` is one micro-batch over all processes (:func:`micro_batch_cfg`),
        so an override keeps detectron2's convention: ``IMS_PER_BATCH / world size`` images per
        process and batch."""
        return build_detection_train_loader(cfg)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str) -> DatasetEvaluator:
        """The evaluator for the data set's ``evaluator_type``: ``pascal_voc`` (VOC07 AP, AP50,
        AP75) or ``coco``; ``NotImplementedError`` otherwise (``test`` then skips the set)."""
        evaluator_type = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", None)
        if evaluator_type == "pascal_voc":
            return PascalVOCDetectionEvaluator(dataset_name)
        if evaluator_type == "coco":
            return COCOEvaluator(
                dataset_name,
                output_dir=os.path.join(cfg.OUTPUT_DIR, "inference"),
                # The fast evaluator is compiled C++; a pure-Python detectron2 lacks it.
                use_fast_impl="placeholder_c_ops" not in compat.applied_fixes(),
            )
        raise NotImplementedError(
            f"no evaluator for data set {dataset_name!r} (evaluator_type {evaluator_type!r}); "
            "override ScalingTrainer.build_evaluator"
        )

    def build_gradient_noise(self, cfg: Any, measure: bool = False) -> GradientNoiseMeter | None:
        """With ``SCALING.NOISE_SCALE.ENABLED`` (``train.scaling.noise_scale.enabled``) or
        ``measure`` (AdaScale), the measurement of the gradient statistics in the step:
        ``trainer.gradient_noise``, where hooks and schedulers read them."""
        if self.settings.noise_scale is None and not measure:
            return None
        return GradientNoiseMeter(
            self._trainer, self.batch_schedule.micro_batch, self.settings.gradient_noise_decay
        )

    def build_adascale(self, scale: float) -> AdaScale:
        """``SCALING.RULE adascale`` at ``scale`` S: the clock that sets ``self.scheduler``'s LR
        from the gain ratio, in the step after the gradient statistics."""
        recipe = self.recipe
        adascale = AdaScale(
            self.scheduler,
            self.gradient_noise,
            scale=scale,
            reference_batch=recipe.adascale_reference_batch or recipe.ims_per_batch,
            length=recipe.max_iter,
        )
        self._trainer.observers.append(adascale)
        return adascale

    def build_hooks(self) -> list[hooks.HookBase]:
        """detectron2's default hooks (timer, LR schedule, PreciseBN, checkpoints, evaluation,
        writers) with :class:`ScalingProgress` (and :class:`NoiseScaleHook` when the noise scale is
        measured) before the checkpointer, PreciseBN reading
        micro-batches, the plateau hook after the evaluation when ``SOLVER.PLATEAU.ENABLED``,
        and every periodic hook counting its period in images (:class:`ImagePeriodHook`)."""
        settings = self.settings
        precise_bn = None
        if settings.precise_bn_iters and get_bn_modules(self.model):
            adapter = self.run.adapter.writable_copy()  # PreciseBN is a yacs setting
            adapter.cfg.DATALOADER.NUM_WORKERS = 0  # PreciseBN's own loader: save memory and time
            precise_bn = hooks.PreciseBN(
                settings.eval_period,
                self.model,
                self.build_train_loader(micro_batch_cfg(adapter, self.batch_schedule)),
                settings.precise_bn_iters,
            )

        def test_and_save_results() -> dict:
            self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results

        ret: list[hooks.HookBase | None] = [
            hooks.IterationTimer(),
            self.progress,
            self.adascale,  # before the checkpointer and evaluation: it may end the run here
            None
            if settings.noise_scale is None
            else NoiseScaleHook(self.gradient_noise, settings.noise_scale.period),
            hooks.LRScheduler(),
            precise_bn,  # before the checkpointer: it changes the model that is saved
        ]
        if comm.is_main_process():
            ret.append(
                periodic_checkpointer(
                    self.checkpointer, settings.checkpoint_period, settings.max_to_keep
                )
            )
        if installed():  # after the periodic checkpoint, before a long evaluation
            ret.append(PreemptionHook())
        ret.append(hooks.EvalHook(settings.eval_period, test_and_save_results))
        if comm.is_main_process():
            # Last, so that evaluation results of the step are written too.
            self.writers = self.build_writers()
            ret.append(hooks.PeriodicWriter(self.writers, period=settings.writer_period))
        ret = [h for h in ret if h is not None]
        if settings.plateau:
            ret = add_plateau_hook(self.cfg, ret)
        return [ImagePeriodHook(h, self.batch_schedule) if is_periodic(h) else h for h in ret]

    def build_writers(self) -> list[Any]:
        """detectron2's default writers (console, metrics.json, tensorboard) in the output
        directory, the console's ETA counting to the run's end as :meth:`expect_end` moves it
        (:class:`EtaPrinter`)."""
        writers = default_writers(self.settings.output_dir, self.max_iter)
        return [EtaPrinter(self.max_iter) if type(w) is CommonMetricPrinter else w for w in writers]

    # ---- checkpoints and resume ----
    def state_dict(self) -> dict[str, Any]:
        ret = TrainerBase.state_dict(self)
        # The optimizer (and AMP scaler) state; v0.6's DefaultTrainer omits it.
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        TrainerBase.load_state_dict(self, state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])

    def resume_or_load(self, resume: bool = True) -> None:
        """As ``DefaultTrainer.resume_or_load``; the step to continue at is computed once, from
        the images seen and this run's batch schedule (:func:`resume_point`), and the LR schedule
        is placed there with this run's base LRs."""
        self.checkpointer.resume_or_load(self.settings.weights, resume=resume)
        if not (resume and self.checkpointer.has_checkpoint()):
            return
        limit = (self.progress.loaded_state or {}).get("micro_batch_limit", 0)
        if limit and self.settings.auto_micro_batch:
            # The limit is the device's, whatever the GPU count: kept, not found again.
            limit_micro_batch(self, limit, "as the checkpoint's run found")
        # detectron2 restored ``iter``, the last step done.
        point = resume_point(
            self.progress.loaded_state,
            self.batch_schedule,
            self.iter + 1,
            same_fraction=self.recipe.schedule == NOISE_SCHEDULE,
        )
        self.progress.loaded_state = None
        self.progress.resumed_from = point.converted_from
        self.progress.start_at(point.iteration, point.images_seen)
        if self.adascale is not None:
            self._resume_adascale(point.images_seen)
            self.max_iter = point.iteration + self.adascale.steps_left_at_most()
            self.expect_end(self.max_iter)
        place_scheduler(self.scheduler, self.optimizer, self._base_lrs, point.iteration)
        self.iter = point.iteration - 1
        self.start_iter = point.iteration

    def _resume_adascale(self, images_seen: int) -> None:
        adascale = self.adascale
        if not adascale.loaded:  # a checkpoint of another rule: its images, in reference steps
            adascale.progress = images_seen / adascale.reference_batch
            logger.warning(
                "The checkpoint has no AdaScale state: continuing at progress %.6g of %d (its "
                "%d images / batch %d)",
                adascale.progress,
                adascale.length,
                images_seen,
                adascale.reference_batch,
            )

    # ---- the end of the run ----
    def end_after_this_step(self) -> None:
        """Makes the step under way the last (AdaScale reached its length): the hooks after it
        (final checkpoint, evaluation, writers) see ``max_iter = iter + 1``."""
        self.max_iter = self.iter + 1
        for hook in self._hooks:
            hook = getattr(hook, "hook", hook)  # ImagePeriodHook's
            if isinstance(hook, hooks.PeriodicCheckpointer):
                hook.max_iter = self.max_iter  # read once, before training
        self.expect_end(self.max_iter)

    def expect_end(self, max_iter: int) -> None:
        """Where the console's ETA counts to (:meth:`build_writers`' :class:`EtaPrinter`)."""
        for writer in self.writers:
            if isinstance(writer, EtaPrinter):
                writer.expect_end(max_iter)

    # ---- the loop ----
    def run_step(self) -> None:
        self._trainer.iter = self.iter
        self._enter_stage()
        while True:
            try:
                self._trainer.run_step()
                return
            except FloatingPointError as error:
                # The step raises it when a loss is not finite; the same class (the failure
                # report tells a rank's own loss from another's by it), with the advice added.
                advice = nan_advice(self.recipe, self.world_size)
                raise type(error)(f"{error}\n{advice}") from error
            except MicroBatchOutOfMemory as error:  # every process: retry the step smaller
                out_of_memory = error
            halve_micro_batch(self, out_of_memory)

    def _enter_stage(self) -> None:
        """Sets this step's accumulation from the batch schedule (a function of the iteration, so
        a resumed run takes it up where it was), logs a change of stage, and records the step's
        total batch as the ``ims_per_batch`` scalar."""
        stage = self.batch_schedule.stage_at_iteration(self.iter)
        if self._trainer.accumulation_steps != stage.grad_accum_steps:
            self._trainer.accumulation_steps = stage.grad_accum_steps
            logger.info(
                "Batch stage %d of %d from step %d: total batch %d (%d micro-batch(es) per "
                "step), LR x%g",
                stage.index,
                len(self.batch_schedule.stages),
                self.iter,
                stage.ims_per_batch,
                stage.grad_accum_steps,
                stage.lr_factor,
            )
        self.storage.put_scalar("ims_per_batch", stage.ims_per_batch, smoothing_hint=False)

    def train(self) -> dict[str, Any]:
        """Trains from ``start_iter`` to the end of the batch schedule (evaluating as configured),
        then logs the summary and writes it to ``summary.json`` in the output directory (main
        process); returns it (see :meth:`build_summary`)."""
        start = time.perf_counter()
        self.run_loop()
        self.summary = self.build_summary(time.perf_counter() - start)
        if comm.is_main_process():
            logger.info("Training summary:\n%s", format_summary(self.summary))
            path = write_summary(self.summary, self.settings.output_dir)
            logger.info("Summary saved to %s", path)
        return self.summary

    def run_loop(self) -> None:
        """detectron2's ``DefaultTrainer.train``: the steps (:meth:`train_steps`), then the
        results checked against ``TEST.EXPECTED_RESULTS``."""
        self.train_steps()
        if len(self.cfg.TEST.EXPECTED_RESULTS) and comm.is_main_process():
            if not hasattr(self, "_last_eval_results"):
                raise RuntimeError("TEST.EXPECTED_RESULTS: nothing was evaluated")
            verify_results(self.cfg, self._last_eval_results)

    def train_steps(self) -> None:
        """detectron2's ``TrainerBase.train`` from ``start_iter`` while ``iter < max_iter``, a
        bound a hook may lower during the run (AdaScale ends it early)."""
        logger.info("Starting training from iteration %d", self.start_iter)
        self.iter = self.start_iter
        with EventStorage(self.start_iter) as self.storage:
            try:
                self.before_train()
                while self.iter < self.max_iter:
                    self.before_step()
                    self.run_step()
                    self.after_step()
                    self.iter += 1
            except Exception:
                logger.exception("Exception during training:")
                raise
            finally:
                self.after_train()

    def build_summary(self, wall_time: float) -> dict[str, Any]:
        """The run in one dict (:func:`~det_scaling.engine.summary.build_summary`)."""
        return build_summary(self, wall_time)

    def build_environment(self) -> dict[str, Any]:
        """Where the run was made (:func:`~det_scaling.engine.summary.build_environment`)."""
        return build_environment(self)

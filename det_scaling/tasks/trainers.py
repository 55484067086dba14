"""The trainer of a config's task, and the one way every caller builds it for a prepared run:
seeded as detectron2's ``default_setup`` seeds, so that a run starts alike whoever starts it."""

from __future__ import annotations

from det_scaling.classification import ClassificationTrainer
from det_scaling.config import ConfigFormat
from det_scaling.engine import LazyScalingTrainer, ScalingTrainer
from det_scaling.engine.run import Run
from det_scaling.engine.step import Step, build_step

__all__ = ["build_run_step", "build_trainer", "seed_process", "trainer_class"]


def trainer_class(adapter: ConfigFormat) -> type[ScalingTrainer]:
    """The trainer for the config's task: a LazyConfig's, classification for the
    ``ImageClassifier`` meta-architecture, detection otherwise."""
    if adapter.is_lazy:
        return LazyScalingTrainer
    if adapter.cfg.MODEL.META_ARCHITECTURE == "ImageClassifier":
        return ClassificationTrainer
    return ScalingTrainer


def seed_process(run: Run) -> None:
    """Seeds this process with the run's seed plus its rank, as ``default_setup`` does (a random
    seed when it is negative). Rank 0's seed decides the initial weights, which DDP broadcasts,
    and the shared data order, so runs of one seed match at any world size."""
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng

    seed = run.settings.seed
    seed_all_rng(None if seed < 0 else seed + comm.get_rank())


def build_trainer(run: Run, *, resume: bool = False, seeded: bool = False) -> ScalingTrainer:
    """The task's trainer of a prepared ``run`` in this process, with its weights loaded (with
    ``resume``, the output directory's last checkpoint when it has one). It seeds the process
    first unless ``seeded`` says that detectron2's ``default_setup`` has (it draws and logs the
    seed a negative one asks for: drawing again would make its log wrong)."""
    if not seeded:
        seed_process(run)
    trainer = trainer_class(run.adapter)(run.cfg, run=run)
    trainer.resume_or_load(resume=resume)
    return trainer


def build_run_step(run: Run, *, weights: str = "") -> Step:
    """The task's training step of a prepared ``run`` alone (no hooks, no LR schedule), seeded as
    :func:`build_trainer` seeds, with ``weights`` loaded when given."""
    seed_process(run)
    return build_step(run, trainer_class(run.adapter), weights=weights)

"""One per-process setup: a loaded config and a world size make the run's scaled config and plan.

:func:`plan_run` does everything that needs no process group and writes nothing: it is what the
launching process checks before it starts any worker. :func:`prepare_run` is the same in each
process of the run, once its data sets are registered (generated sets written once per machine).
``tools/train.py`` (``det-scaling train``), ``lr-find`` and the benchmarks all use them.
"""

from __future__ import annotations

from detectron2.config import CfgNode

from det_scaling.batch_schedule import BatchSchedule
from det_scaling.config import add_scaling_config
from det_scaling.engine.checkpoint import check_retention
from det_scaling.launch import default_device
from det_scaling.scaling import ScalingPlan, plan_scaling
from det_scaling.tasks import check_task, register_datasets, training_set_size

__all__ = ["plan_run", "prepare_run"]


def plan_run(
    cfg: CfgNode,
    world_size: int,
    *,
    no_scale: bool = False,
    keep_reference_batch: bool | None = None,
    device: str | None = None,
) -> ScalingPlan:
    """``cfg`` scaled for ``world_size`` processes, with ``SCALING.DATASET_SIZE`` filled in from
    the training data (read, never written) and the run's batch schedule checked. ``no_scale``
    uses it as written (``REFERENCE_WORLD_SIZE 0``); ``device`` "cpu" moves a CUDA config to the
    CPU. Raises ``ValueError`` naming the key or data set (also for training data of the other
    task or with more classes than the model, and a checkpoint retention that keeps no older
    one). ``cfg`` is not changed."""
    cfg = cfg.clone()
    cfg.defrost()
    add_scaling_config(cfg)
    if device == "cpu" and cfg.MODEL.DEVICE.startswith("cuda"):
        cfg.MODEL.DEVICE = "cpu"  # no CUDA here, or launch fell back to gloo processes
    size = training_set_size(cfg)  # also: the training data is registered and on disk
    check_task(cfg)
    check_retention(cfg)
    if cfg.SCALING.DATASET_SIZE == 0:
        cfg.SCALING.DATASET_SIZE = size
    if no_scale:
        cfg.SOLVER.REFERENCE_WORLD_SIZE = 0
    plan = plan_scaling(cfg, world_size, keep_reference_batch=keep_reference_batch)
    BatchSchedule.from_cfg(plan.cfg, world_size)  # the geometry this world size can run
    return plan


def prepare_run(
    cfg: CfgNode,
    world_size: int,
    *,
    no_scale: bool = False,
    keep_reference_batch: bool | None = None,
) -> ScalingPlan:
    """:func:`plan_run` in a process of the run, on this process's device, after registering the
    data sets the config names; the plan's config is frozen."""
    register_datasets(cfg)
    plan = plan_run(
        cfg,
        world_size,
        no_scale=no_scale,
        keep_reference_batch=keep_reference_batch,
        device=default_device(),
    )
    plan.cfg.freeze()
    return plan

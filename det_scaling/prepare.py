"""One per-process setup: a loaded config and a world size make the run's scaled config and plan.

:func:`plan_run` does everything that needs no process group and writes nothing: it is what the
launching process checks before it starts any worker. :func:`prepare_run` is the same in each
process of the run, once its data sets are registered (generated sets written once per machine).
``tools/train.py`` (``det-scaling train``), ``lr-find`` and the benchmarks all use them.
"""

from __future__ import annotations

from typing import Any

from det_scaling.batch_schedule import BatchSchedule
from det_scaling.engine.checkpoint import check_retention
from det_scaling.formats import config_format
from det_scaling.launch import default_device
from det_scaling.scaling import ScalingPlan, plan_scaling
from det_scaling.tasks import check_task, register_datasets, training_set_size

__all__ = ["plan_run", "prepare_run"]


def plan_run(
    cfg: Any,
    world_size: int,
    *,
    no_scale: bool = False,
    keep_reference_batch: bool | None = None,
    device: str | None = None,
) -> ScalingPlan:
    """``cfg`` (a CfgNode or a LazyConfig) scaled for ``world_size`` processes, with its data set
    size (``SCALING.DATASET_SIZE``, ``train.scaling.dataset_size``) filled in from the training
    data (read, never written) and the run's batch schedule checked. ``no_scale`` uses it as
    written (reference GPU count 0); ``device`` "cpu" moves a CUDA config to the CPU. Raises
    ``ValueError`` naming the key or data set (also for training data of the other task or with
    more classes than the model, and a checkpoint retention that keeps no older one). ``cfg`` is
    not changed."""
    fmt = config_format(cfg).writable_copy()
    keys = fmt.keys
    if device == "cpu" and str(fmt.get(keys.device)).startswith("cuda"):
        fmt.set(keys.device, "cpu")  # no CUDA here, or launch fell back to gloo processes
    size = training_set_size(fmt.cfg)  # also: the training data is registered and on disk
    check_task(fmt.cfg)
    check_retention(fmt.run_settings().max_to_keep, keys.checkpoints_kept)
    if fmt.get(keys.dataset_size) == 0:
        fmt.set(keys.dataset_size, size)
    if no_scale:
        fmt.set(keys.reference_world_size, 0)
    plan = plan_scaling(fmt.cfg, world_size, keep_reference_batch=keep_reference_batch)
    BatchSchedule.from_cfg(plan.cfg, world_size)  # the geometry this world size can run
    return plan


def prepare_run(
    cfg: Any,
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
    config_format(plan.cfg).freeze()
    return plan

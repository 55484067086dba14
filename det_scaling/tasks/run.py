"""A loaded config and a world size resolved into the :class:`~det_scaling.engine.run.Run` of
every process: scaled, its data sized and checked.

:func:`resolve_run` does everything that needs no process group and writes nothing: it is what
the launching process checks before it starts any worker. :func:`prepare_run` is the same in each
process of the run, once its data sets are registered (generated sets written once per machine).
``tools/train.py`` (``det-scaling train``), ``lr-find``, ``noise-scale`` and the benchmarks use
them.
"""

from __future__ import annotations

import logging
from typing import Any

from detectron2.utils import comm

from det_scaling.config import adapter_of
from det_scaling.engine.checkpoint import check_retention
from det_scaling.engine.launch import default_device
from det_scaling.engine.run import Run
from det_scaling.scaling.plan import plan_scaling
from det_scaling.tasks.datasets import check_task, register_datasets, training_set_size

__all__ = ["prepare_run", "resolve_run"]

logger = logging.getLogger(__name__)


def resolve_run(
    cfg: Any,
    world_size: int,
    *,
    no_scale: bool = False,
    keep_reference_batch: bool | None = None,
    device: str | None = None,
    warn_of_dataset_size: bool = False,
) -> Run:
    """``cfg`` (a CfgNode or a LazyConfig) scaled for ``world_size`` processes, with its data set
    size (``SCALING.DATASET_SIZE``, ``train.scaling.dataset_size``) filled in from the training
    data (read, never written; a configured size that differs from it is kept, with a warning
    when ``warn_of_dataset_size``) and the run's batch schedule checked. ``no_scale`` uses it as
    written (reference GPU count 0); ``device`` "cpu" moves a CUDA config to the CPU. Raises
    ``ConfigError`` naming the key or data set (also for training data of the other task or with
    more classes than the model, and a checkpoint retention that keeps no older one). ``cfg`` is
    not changed."""
    adapter = adapter_of(cfg).writable_copy()
    keys = adapter.keys
    if device == "cpu" and str(adapter.get(keys.device)).startswith("cuda"):
        adapter.set(keys.device, "cpu")  # no CUDA here, or launch fell back to gloo processes
    size = training_set_size(adapter)  # also: the training data is registered and on disk
    check_task(adapter)
    check_retention(adapter.run_settings().max_to_keep, keys.checkpoints_kept)
    configured = adapter.get(keys.dataset_size)
    if configured == 0:
        adapter.set(keys.dataset_size, size)
    elif configured != size and warn_of_dataset_size:
        # Not an error: a sampler that repeats or filters images makes an epoch of another size.
        logger.warning(
            "%s is %d but the training data has %d images; epochs are counted with %d",
            keys.dataset_size,
            configured,
            size,
            configured,
        )
    if no_scale:
        adapter.set(keys.reference_world_size, 0)
    plan = plan_scaling(adapter.cfg, world_size, keep_reference_batch=keep_reference_batch)
    return Run.from_plan(plan, world_size)


def prepare_run(
    cfg: Any,
    world_size: int,
    *,
    no_scale: bool = False,
    keep_reference_batch: bool | None = None,
) -> Run:
    """:func:`resolve_run` in a process of the run, on this process's device, with the data sets
    the config names registered (generated ones written once per machine); the run's config is
    frozen. The main process warns of a configured data set size the data does not have."""
    register_datasets(adapter_of(cfg))
    run = resolve_run(
        cfg,
        world_size,
        no_scale=no_scale,
        keep_reference_batch=keep_reference_batch,
        device=default_device(),
        warn_of_dataset_size=comm.is_main_process(),
    )
    run.adapter.freeze()
    return run

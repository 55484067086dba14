"""Training (or evaluating) a config on any number of processes: what ``tools/train.py`` and
``det-scaling train`` run.

:func:`launch_training` resolves the config for the run's world size in the launching process (a
bad config, an OUTPUT_DIR that cannot be written or MODEL.WEIGHTS that cannot initialise the
model is one ``ConfigError`` before any worker starts, nothing written), then runs
:func:`train_process` in every process: the config loaded again (as detectron2's tools do: a
LazyConfig may hold what cannot be sent to a spawned process) and resolved into the process's
:class:`~det_scaling.engine.run.Run` (:func:`det_scaling.tasks.prepare_run`), the plan logged
and saved beside the config, then the task's trainer on that run. A failing process is reported
once (:mod:`det_scaling.engine.failures`); under torchrun a restarted worker
group resumes by itself (:func:`resume_requested`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

from det_scaling.config import load_cfg
from det_scaling.engine import SafeCheckpointer, preemption
from det_scaling.engine.failures import keep_tracebacks_off_the_console
from det_scaling.engine.launch import (
    DEFAULT_TIMEOUT,
    launch,
    planned_world_size,
    torchrun_restart_count,
    under_torchrun,
)
from det_scaling.engine.output_lock import output_dir_lock
from det_scaling.engine.run import Run
from det_scaling.errors import ConfigError
from det_scaling.scaling.plan import ScalingPlan
from det_scaling.tasks import build_trainer, check_weights, prepare_run, resolve_run, trainer_class
from det_scaling.utils.logs import plain_config_dump, unactionable_warnings_ignored

__all__ = [
    "PLAN_FILE",
    "launch_training",
    "resume_requested",
    "save_plan",
    "setup_process",
    "train_process",
    "training_args",
]

logger = logging.getLogger("det_scaling.commands.train")

PLAN_FILE = "scaling_plan.json"


def training_args(config_file: str, opts: Sequence[str] = (), **options: Any) -> argparse.Namespace:
    """The arguments :func:`launch_training` takes, as ``det-scaling train --config-file
    CONFIG_FILE [KEY VALUE ...]`` parses them: its defaults, with ``options`` (``num_gpus=2``,
    ``resume=True``, ...) changed."""
    args = argparse.Namespace(
        config_file=str(config_file),
        opts=list(opts),
        resume=False,
        eval_only=False,
        num_gpus=1,
        num_machines=1,
        machine_rank=0,
        dist_url="auto",
        dist_timeout=DEFAULT_TIMEOUT,
        no_scale=False,
        preempt_on=preemption.DEFAULT_SIGNALS,
    )
    for name, value in options.items():
        if not hasattr(args, name):
            raise TypeError(f"training_args: no option {name!r}")
        setattr(args, name, value)
    return args


def launch_training(args: argparse.Namespace) -> None:
    """Checks the config for the run's world size here, then trains (or evaluates) in every
    process of the run; ``args`` as ``det-scaling train`` parses them. Raises ``ConfigError``
    before starting any process when the config, its data, OUTPUT_DIR, MODEL.WEIGHTS or the GPU
    count cannot make a run, and :class:`~det_scaling.engine.failures.RankFailedError` when a
    process of the run fails."""
    if args.num_gpus < 1 or args.num_machines < 1:
        raise ConfigError(
            f"--num-gpus {args.num_gpus} --num-machines {args.num_machines}: both must be >= 1"
        )
    if not 0 <= args.machine_rank < args.num_machines:
        raise ConfigError(f"--machine-rank must be in [0, {args.num_machines - 1}]")
    world_size = planned_world_size(args.num_gpus, args.num_machines)
    run = resolve_run(load_cfg(args.config_file, args.opts), world_size, no_scale=args.no_scale)
    keys, settings = run.adapter.keys, run.settings
    check_output_dir(settings.output_dir, keys.output_dir)
    if args.eval_only and not settings.weights and not args.resume:
        raise ConfigError(
            f"--eval-only evaluates {keys.weights}, which is empty: set it to a checkpoint (e.g. "
            f"model_final.pth in {keys.output_dir}), or add --resume for {keys.output_dir}'s last"
        )
    if not _resumes_from_output_dir(args, settings.output_dir):
        check_weights(run)  # else detectron2 loads the output directory's checkpoint
    # One run per OUTPUT_DIR: the launching process of machine 0 holds it (under torchrun, the
    # process of global rank 0).
    holds = os.environ.get("RANK") == "0" if under_torchrun() else args.machine_rank == 0
    lock = output_dir_lock(settings.output_dir, keys.output_dir) if holds else nullcontext()
    with lock:
        launch(
            train_process,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            timeout=args.dist_timeout,
            log_dir=settings.output_dir,
        )


@unactionable_warnings_ignored()
def train_process(args: argparse.Namespace) -> dict[str, Any]:
    """Runs in every process: loads the config, then returns the evaluation results with
    ``--eval-only``, else the training summary."""
    with preemption.armed(args.preempt_on):
        return _train_process(args)


def _train_process(args: argparse.Namespace) -> dict[str, Any]:
    cfg = load_cfg(args.config_file, args.opts)
    run = prepare_run(cfg, comm.get_world_size(), no_scale=args.no_scale)
    settings = run.settings
    output_dir = settings.output_dir
    resume = resume_requested(args, output_dir)  # before setup_process saves this run's plan
    setup_process(args, run)
    if comm.get_world_size() > 1:
        resume = comm.all_gather(resume)[0]  # the main process decides, for every process
    if resume and not args.resume:
        logger.info(
            "torchrun restarted the worker group (restart %d, world size %d): resuming from the "
            "last checkpoint in %s",
            torchrun_restart_count(),
            comm.get_world_size(),
            output_dir,
        )
    trainer_cls = trainer_class(run.adapter)
    if args.eval_only:
        model = trainer_cls.build_model(run.cfg)
        SafeCheckpointer(
            model,
            save_dir=settings.output_dir,
            allow_pickled=settings.allow_pickled_weights,
            allow_pickled_key=run.adapter.keys.allow_pickled_weights,
        ).resume_or_load(settings.weights, resume=resume)
        return trainer_cls.test(run.cfg, model)
    return build_trainer(run, resume=resume, seeded=True).train()


def resume_requested(args: argparse.Namespace, output_dir: str) -> bool:
    """Whether this process resumes from OUTPUT_DIR's last checkpoint: with ``--resume``, or in a
    worker group that torchrun restarted: after a failure (``TORCHELASTIC_RESTART_COUNT`` > 0),
    or for a change of membership, which torchrun does not count; that one is told by OUTPUT_DIR's
    saved plan, written by the same torchrun job (``TORCHELASTIC_RUN_ID``, torchrun's
    ``--rdzv-id``; not with its default id "none", which every job shares)."""
    if args.resume:
        return True
    if not under_torchrun():
        return False
    if torchrun_restart_count() > 0:
        return True
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    return run_id != "none" and _saved_plan(output_dir).get("torchelastic_run_id") == run_id


def check_output_dir(output_dir: str, key: str = "OUTPUT_DIR") -> None:
    """Raises ``ConfigError`` naming ``key`` when ``output_dir`` cannot be created or written
    (checked without writing: on the nearest existing directory above it)."""
    path = os.path.abspath(output_dir)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(
            f"{key} {output_dir}: {existing} is a file, so the directory cannot be made; "
            f"choose another {key}"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{key} {output_dir}: {existing} is not writable; choose another {key} or fix its "
            "permissions"
        )


def _resumes_from_output_dir(args: argparse.Namespace, output_dir: str) -> bool:
    # What detectron2's resume_or_load does: OUTPUT_DIR's checkpoint when it has one.
    has_checkpoint = os.path.isfile(os.path.join(output_dir, "last_checkpoint"))
    return has_checkpoint and resume_requested(args, output_dir)


def _saved_plan(output_dir: str) -> dict[str, Any]:
    try:
        with open(os.path.join(output_dir, PLAN_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def setup_process(args: argparse.Namespace, run: Run) -> None:
    """detectron2's ``default_setup`` for this process's run (loggers, config.yaml in the output
    directory, seeds), and the scaling plan logged and saved."""
    world_size, plan = run.world_size, run.plan
    with plain_config_dump():
        default_setup(run.cfg, args)
    output_dir = run.settings.output_dir
    setup_logger(output_dir, distributed_rank=comm.get_rank(), name="det_scaling")
    keep_tracebacks_off_the_console("detectron2", "fvcore", "det_scaling")
    if comm.is_main_process():
        logger.info(
            "Scaling plan for %d process(es)%s:\n%s",
            world_size,
            " (--no-scale)" if args.no_scale else "",
            plan.format() or "(nothing to change)",
        )
        save_plan(args, plan, output_dir)


def save_plan(args: argparse.Namespace, plan: ScalingPlan, output_dir: str) -> None:
    """Writes the provenance of ``output_dir``'s config.yaml: source config, overrides, the
    plan."""
    record = {
        "config_file": os.path.abspath(args.config_file),
        "overrides": list(args.opts),
        "world_size": plan.num_gpus,
        "no_scale": args.no_scale,
        # Tells a torchrun restart of this job from a new job (resume_requested).
        "torchelastic_run_id": os.environ.get("TORCHELASTIC_RUN_ID") if under_torchrun() else None,
        **plan.to_dict(),
    }
    path = os.path.join(output_dir, PLAN_FILE)
    with PathManager.open(path, "w") as f:
        json.dump(record, f, indent=2)
    logger.info("Scaling plan saved to %s", path)

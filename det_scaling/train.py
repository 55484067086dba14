"""Training (or evaluating) a config on any number of processes: what ``tools/train.py`` and
``det-scaling train`` run.

:func:`launch_training` checks the config for the run's world size in the launching process (a
bad config is one ``ValueError`` before any worker starts, nothing written), then runs
:func:`train_process` in every process: the per-process setup (:func:`det_scaling.prepare.
prepare_run`), the plan logged and saved beside the config, then the task's trainer.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

from det_scaling.config import load_cfg
from det_scaling.formats import config_format
from det_scaling.launch import launch, planned_world_size
from det_scaling.prepare import plan_run, prepare_run
from det_scaling.scaling import ScalingPlan
from det_scaling.tasks import trainer_class

__all__ = ["PLAN_FILE", "launch_training", "save_plan", "setup_process", "train_process"]

logger = logging.getLogger("det_scaling.train")

PLAN_FILE = "scaling_plan.json"


def launch_training(args: argparse.Namespace) -> None:
    """Checks the config for the run's world size here, then trains (or evaluates) in every
    process of the run; ``args`` as ``det-scaling train`` parses them. Raises ``ValueError``
    before starting any process when the config, its data or the GPU count cannot make a run."""
    if args.num_gpus < 1 or args.num_machines < 1:
        raise ValueError("--num-gpus and --num-machines must be >= 1")
    if not 0 <= args.machine_rank < args.num_machines:
        raise ValueError(f"--machine-rank must be in [0, {args.num_machines - 1}]")
    cfg = load_cfg(args.config_file, args.opts)
    plan_run(cfg, planned_world_size(args.num_gpus, args.num_machines), no_scale=args.no_scale)
    launch(
        train_process,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


def train_process(args: argparse.Namespace) -> dict[str, Any]:
    """Runs in every process: loads the config (as detectron2's tools do in each process; a
    LazyConfig may hold what cannot be sent to a spawned process), then returns the evaluation
    results with ``--eval-only``, else the training summary."""
    cfg = setup_process(args, load_cfg(args.config_file, args.opts))
    trainer_cls = trainer_class(cfg)
    if args.eval_only:
        settings = config_format(cfg).run_settings()
        model = trainer_cls.build_model(cfg)
        DetectionCheckpointer(model, save_dir=settings.output_dir).resume_or_load(
            settings.weights, resume=args.resume
        )
        return trainer_cls.test(cfg, model)
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def setup_process(args: argparse.Namespace, cfg: Any) -> Any:
    """This process's scaled config (:func:`~det_scaling.prepare.prepare_run`), with detectron2's
    ``default_setup`` (loggers, config.yaml in the output directory, seeds) and the plan logged
    and saved."""
    world_size = comm.get_world_size()
    plan = prepare_run(cfg, world_size, no_scale=args.no_scale)
    default_setup(plan.cfg, args)
    output_dir = config_format(plan.cfg).run_settings().output_dir
    setup_logger(output_dir, distributed_rank=comm.get_rank(), name="det_scaling")
    if comm.is_main_process():
        logger.info(
            "Scaling plan for %d process(es)%s:\n%s",
            world_size,
            " (--no-scale)" if args.no_scale else "",
            plan.format() or "(nothing to change)",
        )
        save_plan(args, plan)
    return plan.cfg


def save_plan(args: argparse.Namespace, plan: ScalingPlan) -> None:
    """Writes the provenance of the output directory's config.yaml: source config, overrides,
    the plan."""
    record = {
        "config_file": os.path.abspath(args.config_file),
        "overrides": list(args.opts),
        "world_size": plan.num_gpus,
        "no_scale": args.no_scale,
        **plan.to_dict(),
    }
    path = os.path.join(config_format(plan.cfg).run_settings().output_dir, PLAN_FILE)
    with PathManager.open(path, "w") as f:
        json.dump(record, f, indent=2)
    logger.info("Scaling plan saved to %s", path)

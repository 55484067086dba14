#!/usr/bin/env python
"""Train (or evaluate) a detectron2 config on any number of GPUs, rescaled for that number.

Detection and classification share this script: a config whose ``MODEL.META_ARCHITECTURE`` is
``ImageClassifier`` (``configs/ImageNet-Classification/``) trains with the classification
trainer, anything else with detectron2's detection models. Both use the same scaling, solver,
launcher, hooks and checkpoints.

The config says which GPU count it was written for (``SOLVER.REFERENCE_WORLD_SIZE``); this
script rescales it for the processes it runs on (batch, LR by ``SCALING.RULE``, schedule in
images seen), prints what changed and why, saves the scaled config and the plan to
``OUTPUT_DIR``, and trains with det_scaling's trainer. detectron2's ``train_net.py`` arguments::

    python tools/train.py --config-file configs/VOC07-Detection/faster_rcnn_R_50_FPN.yaml \\
        --num-gpus 8 OUTPUT_DIR output/voc07_8gpu
    python tools/train.py --config-file CFG --num-gpus 8 --resume     # also from another count
    python tools/train.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    # several machines (run on each):
    python tools/train.py --config-file CFG --num-gpus 8 --num-machines 2 --machine-rank R \\
        --dist-url tcp://HOST0:PORT
    # torchrun starts the processes itself:
    torchrun --nproc-per-node 8 tools/train.py --config-file CFG

Without GPUs, ``--num-gpus N`` runs N processes on the CPU (gloo).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import det_scaling  # before detectron2: it applies the compatibility layer

# isort: split
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

from det_scaling.data import count_images
from det_scaling.launch import default_device, launch
from det_scaling.tasks import register_datasets, trainer_class

logger = logging.getLogger("det_scaling.train")

PLAN_FILE = "scaling_plan.json"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """detectron2's ``default_argument_parser`` plus ``--no-scale``."""
    parser = default_argument_parser()
    parser.add_argument(
        "--no-scale",
        action="store_true",
        help="use the config as written for whatever GPU count runs it (sets "
        "SOLVER.REFERENCE_WORLD_SIZE 0: SOLVER.IMS_PER_BATCH is then the total batch)",
    )
    return parser.parse_args(argv)


def setup(args: argparse.Namespace) -> CfgNode:
    """The config of this process: loaded, on a device this process has, with the data set size,
    scaled to the world size (unless ``--no-scale``); logs and saves it with its scaling plan."""
    cfg = det_scaling.load_cfg(args.config_file, args.opts)
    device = default_device()
    if cfg.MODEL.DEVICE.startswith("cuda") and device == "cpu":
        cfg.MODEL.DEVICE = "cpu"  # launch fell back to gloo on the CPU (no or too few GPUs)
    register_datasets(cfg)
    if not args.eval_only and cfg.SCALING.DATASET_SIZE == 0:
        # Before scaling, so the plan can speak in epochs.
        cfg.SCALING.DATASET_SIZE = count_images(cfg.DATASETS.TRAIN)
    if args.no_scale:
        cfg.SOLVER.REFERENCE_WORLD_SIZE = 0

    world_size = comm.get_world_size()
    plan = det_scaling.plan_scaling(cfg, world_size)
    cfg = plan.cfg
    cfg.freeze()
    default_setup(cfg, args)  # loggers, environment, OUTPUT_DIR/config.yaml, seeds
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="det_scaling")

    if comm.is_main_process():
        logger.info(
            "Scaling plan for %d process(es)%s:\n%s",
            world_size,
            " (--no-scale)" if args.no_scale else "",
            plan.format() or "(nothing to change)",
        )
        save_plan(cfg.OUTPUT_DIR, args, world_size, plan.to_dict())
    return cfg


def save_plan(output_dir: str, args: argparse.Namespace, world_size: int, plan: dict) -> None:
    """Writes the provenance of OUTPUT_DIR/config.yaml: source config, overrides, the plan."""
    record = {
        "config_file": os.path.abspath(args.config_file) if args.config_file else None,
        "overrides": list(args.opts),
        "world_size": world_size,
        "no_scale": args.no_scale,
        **plan,
    }
    path = os.path.join(output_dir, PLAN_FILE)
    with PathManager.open(path, "w") as f:
        json.dump(record, f, indent=2)
    logger.info("Scaling plan saved to %s", path)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Runs in every process: evaluation results with ``--eval-only``, else the training
    summary."""
    cfg = setup(args)
    trainer_cls = trainer_class(cfg)
    if args.eval_only:
        model = trainer_cls.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return trainer_cls.test(cfg, model)
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )

"""Does the tiny from-scratch config learn? Stock single-process detectron2 training, then AP.

Makes (or reuses) the synthetic VOC-layout set, trains
``configs/VOC07-Detection/faster_rcnn_synthetic_tiny.yaml`` with detectron2's ``DefaultTrainer`` in
one process on the CPU, then evaluates with ``PascalVOCDetectionEvaluator`` and prints the wall
times and the AP table. The config's total batch (``SOLVER.IMS_PER_BATCH``, written for 2
processes) is trained as written in this one process: ``REFERENCE_WORLD_SIZE`` is set to 0 here
so that ``DefaultTrainer`` does not rescale it. This is the evidence that the config, not the
multi-process trainer, learns; ``tools/train.py --num-gpus 2`` runs the same config on 2 processes.

    .venv/bin/python benchmarks/train_synthetic_tiny.py [--output DIR] [KEY VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

import det_scaling  # first: installs the detectron2 compatibility layer
from det_scaling.config import config_format
from det_scaling.data import register_synthetic_voc
from det_scaling.tasks import generate_synthetic_voc_for, training_set_size

# isort: split
from detectron2.engine import DefaultTrainer, hooks
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.utils.logger import setup_logger

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny.yaml"


class _Trainer(DefaultTrainer):
    """DefaultTrainer with the VOC evaluator, and evaluation kept out of the timed training."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name):
        return PascalVOCDetectionEvaluator(dataset_name)

    def build_hooks(self):
        # TEST.EVAL_PERIOD is ignored: one evaluation, after the timed training.
        return [h for h in super().build_hooks() if not isinstance(h, hooks.EvalHook)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="the data sets root: the set is made in its parameters' folder under "
        "<root>/synthetic_voc/ (default: $DETECTRON2_DATASETS, as tools/train.py)",
    )
    parser.add_argument("--output", type=Path, default=Path("/tmp/det_scaling_synthetic_tiny"))
    # One intra-op thread: on a small shared CPU, 2 threads per process spend their time waiting
    # for each other (measured here: about 4x slower per iteration than 1 thread under load).
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("overrides", nargs="*", help="KEY VALUE pairs merged into the config")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    cfg = det_scaling.load_cfg(str(args.config), args.overrides)
    data_root = generate_synthetic_voc_for(config_format(cfg), args.data_root)
    train_name, _ = register_synthetic_voc(data_root)
    cfg.OUTPUT_DIR = str(args.output)
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 0  # the config's total batch, as written, on this process
    cfg.SCALING.DATASET_SIZE = training_set_size(config_format(cfg))
    cfg.freeze()
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "config.yaml").write_text(cfg.dump())
    setup_logger(str(args.output), name="detectron2")
    logging.getLogger("detectron2").info("torch threads: %d", torch.get_num_threads())

    trainer = _Trainer(cfg)
    trainer.resume_or_load(resume=False)
    setup_s = time.perf_counter() - start
    start, start_cpu = time.perf_counter(), time.process_time()
    trainer.train()
    train_s = time.perf_counter() - start
    # CPU time of this process: on a shared machine, what training would take with a core to itself.
    train_cpu_s = time.process_time() - start_cpu
    start = time.perf_counter()
    results = _Trainer.test(cfg, trainer.model)
    eval_s = time.perf_counter() - start

    summary = {
        "train_dataset": train_name,
        "data_root": str(data_root),
        "dataset_size": cfg.SCALING.DATASET_SIZE,
        "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
        "max_iter": cfg.SOLVER.MAX_ITER,
        "setup_s": round(setup_s, 1),
        "train_s": round(train_s, 1),
        "s_per_iter": round(train_s / cfg.SOLVER.MAX_ITER, 3),
        "train_cpu_s": round(train_cpu_s, 1),
        "eval_s": round(eval_s, 1),
        "bbox": {k: round(float(v), 2) for k, v in results["bbox"].items()},
    }
    print(json.dumps(summary, indent=2))
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()

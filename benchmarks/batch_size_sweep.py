"""Batch size sweep: final top-1 of plain SGD and LARC as the total batch grows, LR scaled linearly.

The experiment of the project's seeds (ResNet-50 on ImageNet at total batch 256 .. 4096; LARC at
trust coefficients 1e-3 and 2e-2), in shape, on the embedded digits by default (and on ImageNet
with ``--config configs/ImageNet-Classification/resnet50_goyal.yaml`` when it is present).

Every run is the config scaled by det_scaling's own ``plan_scaling``, trained by
``ClassificationTrainer`` in this one process:

1. a total batch ``B`` is ``B / m`` simulated GPUs of the config's per-GPU batch ``m``:
   ``plan_scaling(cfg, B / m)`` sets the batch, the LR by the linear rule, and the schedule (in
   epochs, so every run sees the same images; warmup included);
2. ``plan_scaling(that, 1, keep_reference_batch=True)`` runs it on one process by accumulating
   ``B / m`` micro-batches of ``m`` images per optimizer step (``SCALING.GRAD_ACCUM_STEPS``).

The gradient of a step is then that of ``B / m`` GPUs, and BatchNorm normalises each micro-batch
of ``m`` images on its own, as on ``B / m`` GPUs without cross-GPU BN (the seeds' setup).
What differs from real GPUs is only the time: images/s is this process's.

Prints a table (batch, LR, optimizer, steps, final top-1 / top-5, images/s), writes it with every
run's summary to ``OUTPUT/results.json`` and a plot to ``OUTPUT/batch_size_sweep.png``::

    .venv/bin/python benchmarks/batch_size_sweep.py [--batches 32 64 ...] [--output DIR]
        [--optimizers sgd larc-1e-3 larc-2e-2] [KEY VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from _environment import write_results  # benchmarks/: the results file
from _logs import log_to  # benchmarks/: the run logs to a file, stdout for the table

import det_scaling  # first: installs the detectron2 compatibility layer

# isort: split
from detectron2.config import CfgNode
from tabulate import tabulate

from det_scaling.classification import register_classification_datasets
from det_scaling.config import config_format
from det_scaling.engine import Run
from det_scaling.scaling.batch_schedule import micro_batch
from det_scaling.tasks import build_trainer, training_set_size

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "ImageNet-Classification" / "resnet18_digits_sweep.yaml"
# Optimizer name -> (SOLVER.OPTIMIZER, SOLVER.LARS.TRUST_COEFFICIENT or None).
OPTIMIZERS = {
    "sgd": ("SGD", None),
    "larc-1e-3": ("LARC", 1e-3),
    "larc-2e-2": ("LARC", 2e-2),
}


def load_base(config: Path, overrides: list[str], datasets_root: Path | None) -> CfgNode:
    """The config with its data sets registered, its size known, on the CPU without CUDA."""
    base = det_scaling.load_cfg(str(config), overrides)
    if not torch.cuda.is_available():
        base.MODEL.DEVICE = "cpu"
    register_classification_datasets((*base.DATASETS.TRAIN, *base.DATASETS.TEST), datasets_root)
    if base.SCALING.DATASET_SIZE == 0:
        base.SCALING.DATASET_SIZE = training_set_size(config_format(base))
    return base


def sweep_cfg(base: CfgNode, batch: int, optimizer: str, output_dir: Path) -> CfgNode:
    """``base`` at total batch ``batch`` (linear rule, same epochs), run on one process by
    gradient accumulation, with ``optimizer`` (a key of :data:`OPTIMIZERS`)."""
    solver = base.SOLVER
    per_gpu = micro_batch(
        solver.IMS_PER_BATCH, solver.REFERENCE_WORLD_SIZE, base.SCALING.GRAD_ACCUM_STEPS
    )
    if batch % per_gpu:
        raise SystemExit(f"total batch {batch} is not a multiple of {per_gpu} images per GPU")
    name, trust = OPTIMIZERS[optimizer]
    cfg = base.clone()
    cfg.SOLVER.OPTIMIZER = name
    if trust is not None:
        cfg.SOLVER.LARS.TRUST_COEFFICIENT = trust
    cfg.OUTPUT_DIR = str(output_dir)
    simulated = det_scaling.plan_scaling(cfg, batch // per_gpu).cfg
    return det_scaling.plan_scaling(simulated, 1, keep_reference_batch=True).cfg


def train_one(cfg: CfgNode) -> dict[str, Any]:
    """Trains ``cfg`` in this process (logs to ``OUTPUT_DIR/log.txt``); returns its summary."""
    output = Path(cfg.OUTPUT_DIR)
    output.mkdir(parents=True, exist_ok=True)
    log_to(output / "log.txt")
    return build_trainer(Run.of_scaled(cfg, 1)).train()


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Top-1 and images/s against the total batch, one line per optimizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, speed_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for optimizer in dict.fromkeys(row["optimizer"] for row in rows):
        mine = [row for row in rows if row["optimizer"] == optimizer]
        batches = [row["batch"] for row in mine]
        acc_ax.plot(batches, [row["top1"] for row in mine], marker="o", label=optimizer)
        speed_ax.plot(batches, [row["images_per_s"] for row in mine], marker="o", label=optimizer)
    all_batches = sorted({row["batch"] for row in rows})
    for ax, label in ((acc_ax, "final top-1 (%)"), (speed_ax, "images/s (this process)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_batches, [str(batch) for batch in all_batches])
        ax.minorticks_off()
        ax.set_xlabel("total batch (linear-scaled LR)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024])
    parser.add_argument(
        "--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS)
    )
    parser.add_argument("--output", type=Path, default=Path("output/batch_size_sweep"))
    parser.add_argument("--datasets-root", type=Path, default=None, help="default ./datasets")
    # One intra-op thread: on a small shared CPU more threads mostly wait for each other.
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0, help="the same for every run (SEED)")
    parser.add_argument("overrides", nargs="*", help="KEY VALUE pairs merged into the config")
    return parser.parse_args()


def run_sweep(
    args: argparse.Namespace, base: CfgNode
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Trains every batch with every optimizer: the table's rows and each run's summary."""
    rows, summaries = [], []
    for batch in args.batches:
        for optimizer in args.optimizers:
            cfg = sweep_cfg(base, batch, optimizer, args.output / f"batch{batch}_{optimizer}")
            summary = train_one(cfg)
            metrics = summary["metrics"]
            rows.append(
                {
                    "batch": batch,
                    "gpus x accum": f"1 x {cfg.SCALING.GRAD_ACCUM_STEPS}",
                    "LR": cfg.SOLVER.BASE_LR,
                    "optimizer": optimizer,
                    "steps": cfg.SOLVER.MAX_ITER,
                    "top1": round(metrics.get("classification/top1", float("nan")), 2),
                    "top5": round(metrics.get("classification/top5", float("nan")), 2),
                    "images_per_s": round(summary["images_per_s"], 1),
                }
            )
            summaries.append(summary)
            print(json.dumps(rows[-1]), flush=True)
    return rows, summaries


def report(
    args: argparse.Namespace,
    base: CfgNode,
    rows: list[dict[str, Any]],
    summaries: list[dict[str, Any]],
    wall: float,
) -> None:
    """Prints the table with the machine; writes results.json and the plot."""
    table = tabulate(rows, headers="keys", tablefmt="github", floatfmt="g")
    machine = (
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s), device {base.MODEL.DEVICE}"
    )
    print(f"\n{args.config.name}, {base.SCALING.DATASET_SIZE} training images, {machine}")
    print(f"{len(rows)} runs in {wall / 60:.1f} min\n")
    print(table)
    args.output.mkdir(parents=True, exist_ok=True)
    record = {
        "config": str(args.config),
        "overrides": args.overrides,
        "machine": machine,
        "wall_time_s": wall,
        "rows": rows,
        "summaries": summaries,
    }
    write_results(
        args.output / "results.json",
        record,
        world_size=1,
        seeds=args.seed,
        datasets=(*base.DATASETS.TRAIN, *base.DATASETS.TEST),
    )
    plot(rows, args.output / "batch_size_sweep.png", f"{args.config.stem}: batch size sweep")
    print(f"\nwritten: {args.output / 'results.json'}, {args.output / 'batch_size_sweep.png'}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    base = load_base(args.config, args.overrides, args.datasets_root)
    base.SEED = args.seed
    start = time.perf_counter()
    rows, summaries = run_sweep(args, base)
    wall = time.perf_counter() - start
    report(args, base, rows, summaries, wall)


if __name__ == "__main__":
    main()

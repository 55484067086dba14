"""AdaScale against the linear and square-root rules on the embedded digits.

The reference is the batch size sweep's digits setup (ResNet-18, 16x16 inputs, 8 epochs) at
batch 32 (one GPU of 32 images). Each scaled run is that reference scaled by det_scaling's own
``plan_scaling`` to ``batch / 32`` simulated GPUs with ``--rules`` (linear: LR x S, 8 epochs in
S times fewer steps; sqrt: LR x sqrt(S); adascale: the reference LR and schedule, LR x r and r
schedule steps per step, r measured), then run on this one process by accumulating ``batch / 32``
micro-batches of 32 (as ``benchmarks/batch_size_sweep.py`` does). Every run of a seed starts
from the same weights and data order.

Prints one row per run and a table of the mean over the seeds (top-1 against the reference,
steps, epochs, AdaScale's mean gain ratio), and writes ``OUTPUT/results.json``::

    .venv/bin/python benchmarks/adascale_digits.py [--batches 256 512] [--seeds 0 1]
        [--rules linear sqrt adascale] [--output DIR] [KEY VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _environment import write_results  # benchmarks/: the results file
from _timing import machine_description
from batch_size_sweep import (  # benchmarks/: the sweep's setup and runner
    CONFIG,
    load_base,
    train_one,
)
from tabulate import tabulate

import det_scaling  # first: installs the detectron2 compatibility layer

# isort: split
from detectron2.config import CfgNode

from det_scaling.scaling.batch_schedule import micro_batch

REFERENCE_BATCH = 32
RULES = ("linear", "sqrt", "adascale")


def reference_cfg(base: CfgNode) -> CfgNode:
    """``base`` at one GPU of its per-GPU batch (32 for the sweep's config)."""
    solver = base.SOLVER
    per_gpu = micro_batch(
        solver.IMS_PER_BATCH, solver.REFERENCE_WORLD_SIZE, base.SCALING.GRAD_ACCUM_STEPS
    )
    if per_gpu != REFERENCE_BATCH:
        raise SystemExit(f"the reference is {REFERENCE_BATCH} images per GPU, not {per_gpu}")
    return det_scaling.plan_scaling(base, 1).cfg


def scaled_cfg(reference: CfgNode, batch: int, rule: str) -> CfgNode:
    """``reference`` at ``batch`` by ``rule``, run on one process by accumulation."""
    if batch % REFERENCE_BATCH:
        raise SystemExit(f"batch {batch} is not a multiple of {REFERENCE_BATCH}")
    simulated = det_scaling.plan_scaling(reference, batch // REFERENCE_BATCH, rule=rule).cfg
    return det_scaling.plan_scaling(simulated, 1, keep_reference_batch=True).cfg


def run(cfg: CfgNode, output: Path, seed: int) -> dict[str, Any]:
    cfg = cfg.clone()
    cfg.OUTPUT_DIR = str(output)
    cfg.SEED = seed
    return train_one(cfg)


def row(batch: int, rule: str, seed: int, cfg: CfgNode, summary: dict[str, Any]) -> dict:
    adascale = summary.get("adascale") or {}
    return {
        "batch": batch,
        "rule": rule,
        "seed": seed,
        "base LR": cfg.SOLVER.BASE_LR,
        "steps": summary["iterations_done"],
        "epochs": round(summary["epochs_seen"], 2),
        "mean gain": round(adascale["mean_gain"], 3) if adascale else None,
        "top1": round(summary["metrics"].get("classification/top1", float("nan")), 2),
        "train s": round(summary["train_time_s"], 1),
    }


def mean_table(rows: list[dict]) -> list[dict]:
    """One line per (batch, rule): the mean and the range over the seeds."""
    reference = statistics.mean(r["top1"] for r in rows if r["rule"] == "reference")
    table = []
    for key in dict.fromkeys((r["batch"], r["rule"]) for r in rows):
        mine = [r for r in rows if (r["batch"], r["rule"]) == key]
        top1 = [r["top1"] for r in mine]
        gains = [r["mean gain"] for r in mine if r["mean gain"] is not None]
        table.append(
            {
                "batch": key[0],
                "rule": key[1],
                "seeds": len(mine),
                "steps": "/".join(str(r["steps"]) for r in mine),
                "epochs": round(statistics.mean(r["epochs"] for r in mine), 2),
                "mean gain": round(statistics.mean(gains), 2) if gains else "",
                "top1": round(statistics.mean(top1), 2),
                "top1 range": f"{min(top1):.2f}-{max(top1):.2f}",
                "vs reference": round(statistics.mean(top1) - reference, 2),
            }
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--output", type=Path, default=Path("output/adascale_digits"))
    parser.add_argument("--datasets-root", type=Path, default=None, help="default ./datasets")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("overrides", nargs="*", help="KEY VALUE pairs merged into the config")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    base = load_base(args.config, args.overrides, args.datasets_root)
    reference = reference_cfg(base)

    runs = [(REFERENCE_BATCH, "reference", reference)]
    runs += [(b, r, scaled_cfg(reference, b, r)) for b in args.batches for r in args.rules]
    rows, summaries = [], []
    start = time.perf_counter()
    for seed in args.seeds:
        for batch, rule, cfg in runs:
            summary = run(cfg, args.output / f"seed{seed}" / f"batch{batch}_{rule}", seed)
            rows.append(row(batch, rule, seed, cfg, summary))
            summaries.append(summary)
            print(json.dumps(rows[-1]), flush=True)
    wall = time.perf_counter() - start

    machine = machine_description(args.threads, base.MODEL.DEVICE)
    table = mean_table(rows)
    print(f"\n{args.config.name}, {base.SCALING.DATASET_SIZE} training images; {machine}")
    print(f"{len(rows)} runs in {wall / 60:.1f} min; reference batch {REFERENCE_BATCH}\n")
    print(tabulate(table, headers="keys", tablefmt="github", floatfmt="g"))
    record = {"config": str(args.config), "overrides": args.overrides, "machine": machine}
    record |= {"wall_time_s": wall, "rows": rows, "table": table, "summaries": summaries}
    path = args.output / "results.json"
    write_results(
        path,
        record,
        world_size=1,
        seeds=args.seeds,
        datasets=(*base.DATASETS.TRAIN, *base.DATASETS.TEST),
    )
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()

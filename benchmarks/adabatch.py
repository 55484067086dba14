"""AdaBatch against fixed batches: final top-1 and wall time, at the same epochs and LR decay.

The seeds' AdaBatch experiment (Devarakonda et al. 2017: 100 epochs, the batch doubled and the
LR multiplied by 0.75 every 20 epochs, 128 -> 2048, against fixed batches whose LR decays by the
same effective 0.375 every 20 epochs) in shape, on the embedded digits by default:

* **fixed small**: total batch ``--small`` (LR by the linear rule from the config's reference),
  LR x0.375 every ``--interval`` epochs;
* **fixed large**: total batch ``--large`` (the linear rule gives ``large / small`` times the LR),
  the same decay;
* **AdaBatch**: from ``--small`` with its LR, every ``--interval`` epochs the batch x2 and the LR
  x0.75 (``SCALING.ADABATCH``), no other decay: the LR per image of the batch falls by the same
  0.375 as in the fixed runs.

Every run is the config scaled by det_scaling's ``plan_scaling`` and trained by
``ClassificationTrainer`` in this one process, as in ``batch_size_sweep.py``: a total batch ``B``
is ``B / m`` simulated GPUs of the config's ``m`` images, accumulated on one process, so every
micro-batch (and BatchNorm's statistics) has ``m`` images whatever the batch; AdaBatch grows the
accumulation. The same epochs (hence images), warmup and seeds for every setup. Each setup runs
with each ``--seeds`` value (initial weights and data order).

Prints a table (setup, batch schedule, LR schedule, optimizer steps, final top-1 per seed and
mean, wall time of each run) and writes it with every run's summary to ``OUTPUT/results.json``::

    .venv/bin/python benchmarks/adabatch.py [--small 32] [--large 256] [--interval 2]
        [--seeds 0 1] [--output DIR] [KEY VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _environment import write_results  # benchmarks/: the results file

# isort: split
from batch_size_sweep import CONFIG, load_base, sweep_cfg, train_one  # the sweep's setup, reused
from detectron2.config import CfgNode
from tabulate import tabulate

from det_scaling.config import read_recipe
from det_scaling.scaling.batch_schedule import BatchSchedule, schedule_in_epochs

# AdaBatch's LR factor per doubling, and the per-interval decay of the fixed batches that gives
# the same LR per image (the paper's single-GPU setting: 0.75 / 2 = 0.375).
ADABATCH_LR_FACTOR = 0.75
FIXED_DECAY = ADABATCH_LR_FACTOR / 2


def setups(
    base: CfgNode, small: int, large: int, interval: float
) -> dict[str, tuple[CfgNode, int]]:
    """The three setups: name -> (config as written, total batch it is scaled to)."""
    epochs = base.SCALING.EPOCHS.MAX
    decay_epochs = tuple(interval * k for k in range(1, math.ceil(epochs / interval)))

    fixed = base.clone()
    fixed.SCALING.EPOCHS.STEPS = decay_epochs
    fixed.SOLVER.GAMMA = FIXED_DECAY

    growing = base.clone()
    growing.SCALING.EPOCHS.STEPS = ()
    growing.SCALING.ADABATCH.ENABLED = True
    growing.SCALING.ADABATCH.INTERVAL_EPOCHS = interval
    growing.SCALING.ADABATCH.BATCH_FACTOR = 2
    growing.SCALING.ADABATCH.LR_FACTOR = ADABATCH_LR_FACTOR
    growth = large // small
    growing.SCALING.ADABATCH.MAX_STAGES = growth.bit_length()  # small x 2 ** k up to large
    return {
        f"fixed small ({small})": (fixed, small),
        f"fixed large ({large})": (fixed, large),
        f"AdaBatch ({small} -> {large})": (growing, small),
    }


def describe(cfg: CfgNode) -> tuple[str, str, int]:
    """The batch schedule, LR schedule and optimizer steps of a run's config, for the table."""
    recipe = read_recipe(cfg)
    schedule = BatchSchedule.from_recipe(recipe, world_size=1)
    base_lr = cfg.SOLVER.BASE_LR
    if not schedule.grows:
        steps = ", ".join(f"{step:.3g}" for step in schedule_in_epochs(recipe)[1])
        lr = f"{base_lr:g}, x{cfg.SOLVER.GAMMA:g} at epochs {steps}"
        return f"{cfg.SOLVER.IMS_PER_BATCH}", lr, cfg.SOLVER.MAX_ITER
    batches = " -> ".join(str(stage.ims_per_batch) for stage in schedule.stages)
    lrs = " -> ".join(f"{base_lr * stage.lr_factor:.3g}" for stage in schedule.stages)
    every = cfg.SCALING.ADABATCH.INTERVAL_EPOCHS
    return f"{batches} (x2 every {every:g} epochs)", lrs, schedule.total_iterations


def parse_args() -> argparse.Namespace:
    """The command line; ``--large`` must be ``--small`` times a power of 2."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--small", type=int, default=32, help="fixed small and AdaBatch's start")
    parser.add_argument("--large", type=int, default=256, help="fixed large and AdaBatch's end")
    parser.add_argument("--interval", type=float, default=2.0, help="epochs between growths")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--output", type=Path, default=Path("output/adabatch"))
    parser.add_argument("--datasets-root", type=Path, default=None, help="default ./datasets")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("overrides", nargs="*", help="KEY VALUE pairs merged into the config")
    args = parser.parse_args()
    if args.large % args.small or (args.large // args.small) & (args.large // args.small - 1):
        raise SystemExit("--large must be --small times a power of 2 (AdaBatch doubles the batch)")
    return args


def run_setup(
    name: str, setup: CfgNode, batch: int, args: argparse.Namespace, runs: list[dict[str, Any]]
) -> dict[str, Any]:
    """Trains one setup once per seed (each run appended to ``runs``); its row of the table."""
    top1s, walls = [], []
    for seed in args.seeds:
        cfg = setup.clone()
        cfg.SEED = seed
        slug = name.split(" (")[0].replace(" ", "_")
        cfg = sweep_cfg(cfg, batch, "sgd", args.output / f"{slug}_seed{seed}")
        summary = train_one(cfg)
        top1s.append(summary["metrics"].get("classification/top1", float("nan")))
        walls.append(summary["wall_time_s"])
        runs.append({"setup": name, "seed": seed, "summary": summary})
        print(json.dumps({"setup": name, "seed": seed, "top1": top1s[-1]}), flush=True)
    batches, lr, steps = describe(cfg)
    return {
        "setup": name,
        "batch schedule": batches,
        "LR": lr,
        "steps": steps,
        "top-1 per seed": " / ".join(f"{t:.2f}" for t in top1s),
        "top-1 mean": round(statistics.fmean(top1s), 2),
        # Per run, not averaged: on a shared machine one slow run would hide in a mean.
        "wall time per seed (s)": " / ".join(f"{w:.0f}" for w in walls),
    }


def report(
    args: argparse.Namespace,
    base: CfgNode,
    rows: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    wall: float,
) -> None:
    """Prints the table with the machine, and writes results.json."""
    table = tabulate(rows, headers="keys", tablefmt="github", floatfmt="g")
    machine = (
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s), device {base.MODEL.DEVICE}"
    )
    print(f"\n{args.config.name}, {base.SCALING.DATASET_SIZE} training images, {machine}")
    print(
        f"{base.SCALING.EPOCHS.MAX:g} epochs, seeds {args.seeds}; {len(runs)} runs in "
        f"{wall / 60:.1f} min\n"
    )
    print(table)
    args.output.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "config": str(args.config),
        "overrides": args.overrides,
        "machine": machine,
        "wall_time_s": wall,
        "rows": rows,
        "runs": runs,
    }
    write_results(
        args.output / "results.json",
        record,
        world_size=1,
        seeds=args.seeds,
        datasets=(*base.DATASETS.TRAIN, *base.DATASETS.TEST),
    )
    print(f"\nwritten: {args.output / 'results.json'}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    base = load_base(args.config, args.overrides, args.datasets_root)
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    start = time.perf_counter()
    for name, (setup, batch) in setups(base, args.small, args.large, args.interval).items():
        rows.append(run_setup(name, setup, batch, args, runs))
    wall = time.perf_counter() - start
    report(args, base, rows, runs, wall)


if __name__ == "__main__":
    main()

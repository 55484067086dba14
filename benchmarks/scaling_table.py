"""The seeds' VOC07 scaling table in shape: AP50 and images/s at 1, 2, 4, 8 simulated GPUs,
with the LR scaled by the linear rule and with the 1-GPU LR kept (not scaled).

The seeds' table (Faster R-CNN on VOC07, MXNet) shows that scaling the LR with the GPU count holds
mAP while keeping the LR loses 4-6 points. This script makes the same table with det_scaling's
own pieces on whatever data is present: by default the tiny from-scratch Faster R-CNN on the
generated synthetic VOC-layout set (``configs/VOC07-Detection/faster_rcnn_synthetic_tiny.yaml``);
with ``--config configs/VOC07-Detection/faster_rcnn_R_50_FPN.yaml`` the real VOC2007 when
``$DETECTRON2_DATASETS/VOC2007`` exists.

Every row starts from the config's 1-GPU form, ``plan_scaling(cfg, 1)`` (the config says which
GPU count it was written for, ``SOLVER.REFERENCE_WORLD_SIZE``), and the schedule is written in
epochs (``SCALING.EPOCHS``), so every row sees the same images:

1. N simulated GPUs: ``plan_scaling(one_gpu, N)``, the linear rule: N x the 1-GPU batch and LR,
   1/N of the steps. The "not scaled" row is ``plan_scaling(one_gpu, N, rule="none")``: the
   same batch and steps, the 1-GPU LR (as in the seeds, whose unscaled rows keep the epochs too).
2. realised on the ``P`` processes available (``--processes``, 2 by default: gloo processes on
   the CPU, or NCCL processes with one GPU each when there are enough GPUs): ``N <= P`` runs N
   real processes through ``det_scaling.launch.launch``; ``N > P`` runs P processes that each
   accumulate ``N / P`` micro-batches per step, ``plan_scaling(that, P,
   keep_reference_batch=True)``. The table's "how" column says which (processes x accumulation).
   The step's gradient is the same either way (up to float summation order; the tiny config's
   GroupNorm does not depend on the batch); only the time differs.

It also measures the toolkit's overhead: iteration time of ``ScalingTrainer`` against stock
detectron2 ``DefaultTrainer`` on the same 1-GPU config in this one process (SGD and
WarmupMultiStepLR, so both do the same math), in interleaved chunks, median over iterations.

Prints the table as markdown and writes ``table.md``, ``results.json`` and ``scaling_table.png``
to ``--output-dir``::

    .venv/bin/python benchmarks/scaling_table.py [--gpus 1 2 4 8] [--max-epochs E]
        [--processes P] [--overhead-iters N] [--output-dir DIR] [KEY VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from _logs import log_to  # benchmarks/: the run logs to a file, stdout for the table

import det_scaling  # first: applies the detectron2 compatibility layer

# isort: split
import detectron2
from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage
from tabulate import tabulate

from det_scaling.data import datasets_root
from det_scaling.engine import ScalingTrainer
from det_scaling.launch import default_device, launch
from det_scaling.tasks import register_datasets, training_set_size

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny.yaml"
SUMMARY_FILE = "summary.json"  # what ScalingTrainer.train() writes to OUTPUT_DIR


# ---------------------------------------------------------------- configs of the rows ----
@dataclass(frozen=True)
class Row:
    """One row of the table: N simulated GPUs, LR scaled or not, and how it was realised."""

    gpus: int
    scaled: bool
    processes: int
    accumulation: int

    @property
    def name(self) -> str:
        return f"gpus{self.gpus}_{'scaled' if self.scaled else 'unscaled'}"

    @property
    def how(self) -> str:
        return f"{self.processes} x {self.accumulation}"


def processes_for(gpus: int, max_processes: int) -> int:
    """The real processes that realise ``gpus`` simulated GPUs: the largest divisor of ``gpus``
    that is at most ``max_processes`` (each process then accumulates ``gpus / processes``
    micro-batches; ``plan_scaling`` needs a whole number of them)."""
    if gpus < 1 or max_processes < 1:
        raise ValueError(f"gpus and processes must be positive, got {gpus} and {max_processes}")
    return max(p for p in range(1, min(gpus, max_processes) + 1) if gpus % p == 0)


def plan_rows(gpu_counts: list[int], max_processes: int) -> list[Row]:
    """Scaled rows for every count, then "not scaled" rows for every count but 1 (at 1 GPU the
    1-GPU LR *is* the scaled LR: the row would be the same run twice)."""
    rows = []
    for scaled in (True, False):
        for gpus in gpu_counts:
            if not scaled and gpus == 1:
                continue
            processes = processes_for(gpus, max_processes)
            rows.append(Row(gpus, scaled, processes, gpus // processes))
    return rows


def epoch_schedule(cfg: CfgNode, max_epochs: float | None) -> CfgNode:
    """A copy of ``cfg`` whose schedule is written in epochs (``SCALING.EPOCHS``), so that every
    GPU count computes its steps from the same images; evaluation and checkpoint at the end only.

    A schedule written in iterations is converted at the config's own total batch. With
    ``max_epochs`` the whole schedule (steps and warmup too) is compressed by the same factor:
    a shorter run of the same shape.
    """
    out = cfg.clone()
    out.defrost()
    size = out.SCALING.DATASET_SIZE
    if size <= 0:
        raise ValueError("SCALING.DATASET_SIZE must be set (images per epoch)")
    epochs = out.SCALING.EPOCHS
    if epochs.MAX > 0:
        total, steps, warmup = epochs.MAX, tuple(epochs.STEPS), epochs.WARMUP
    else:
        per_iter = out.SOLVER.IMS_PER_BATCH / size  # epochs per step, at the written batch
        total = out.SOLVER.MAX_ITER * per_iter
        steps = tuple(step * per_iter for step in out.SOLVER.STEPS)
        warmup = out.SOLVER.WARMUP_ITERS * per_iter
    factor = 1.0 if max_epochs is None else max_epochs / total
    epochs.MAX = total * factor
    epochs.STEPS = tuple(step * factor for step in steps)
    epochs.WARMUP = warmup * factor
    # A period beyond the end: the checkpointer writes model_final only (not also the same
    # state under the last iteration's name: two large files per row for nothing).
    epochs.CHECKPOINT_PERIOD = 2 * epochs.MAX
    epochs.EVAL_PERIOD = 0.0  # one evaluation, at the end (the EvalHook always runs it)
    return out


def one_gpu_cfg(cfg: CfgNode) -> CfgNode:
    """The config as written for 1 GPU (its reference may be another count): the base of every
    row, so "the 1-GPU LR" is this config's ``BASE_LR``."""
    return det_scaling.plan_scaling(cfg, 1, keep_reference_batch=False).cfg


def row_cfg(one_gpu: CfgNode, row: Row, output_dir: Path) -> CfgNode:
    """The config a row trains with: ``one_gpu`` scaled to ``row.gpus`` (linear rule, or rule
    "none" for the 1-GPU LR), then realised on ``row.processes`` by gradient accumulation."""
    base = one_gpu.clone()
    base.OUTPUT_DIR = str(output_dir / row.name)
    rule = None if row.scaled else "none"
    simulated = det_scaling.plan_scaling(base, row.gpus, rule=rule, keep_reference_batch=False).cfg
    if row.processes == row.gpus:
        return simulated
    return det_scaling.plan_scaling(simulated, row.processes, keep_reference_batch=True).cfg


# ---------------------------------------------------------------------------- training ----
def _train_worker(cfg: CfgNode, threads: int) -> None:
    """Runs in every process of a row (module level: ``launch`` pickles it for spawned workers).
    The summary is written by rank 0 to ``OUTPUT_DIR/summary.json``."""
    torch.set_num_threads(threads)
    cfg = cfg.clone()
    if cfg.MODEL.DEVICE.startswith("cuda") and default_device() == "cpu":
        cfg.MODEL.DEVICE = "cpu"  # launch fell back to gloo on the CPU
    cfg.freeze()
    rank = comm.get_rank()
    log_to(Path(cfg.OUTPUT_DIR) / "log.txt" if rank == 0 else None)
    register_datasets(cfg)  # a spawned worker starts with empty catalogs; the data is on disk
    # detectron2's default_setup seeds SEED + rank: rank 0 (whose initial weights DDP broadcasts,
    # and whose seed picks the shared data order) is seeded alike in every row.
    seed_all_rng(cfg.SEED + rank)
    trainer = ScalingTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()


def train_row(cfg: CfgNode, row: Row, threads: int, keep_checkpoint: bool) -> dict[str, Any]:
    """Trains one row on ``row.processes`` processes; returns ScalingTrainer's summary."""
    output = Path(cfg.OUTPUT_DIR)
    output.mkdir(parents=True, exist_ok=True)
    (output / SUMMARY_FILE).unlink(missing_ok=True)  # never report a previous run's numbers
    (output / "config.yaml").write_text(cfg.dump())  # what this row trained, for the record
    launch(_train_worker, row.processes, dist_url="auto", args=(cfg, threads))
    summary = json.loads((output / SUMMARY_FILE).read_text())
    if not keep_checkpoint:
        # The table does not need the weights: about 120 MB per row (model and momentum).
        for path in (*output.glob("*.pth"), output / "last_checkpoint"):
            path.unlink(missing_ok=True)
    return summary


def table_row(row: Row, cfg: CfgNode, summary: dict[str, Any], per_gpu: int) -> dict[str, Any]:
    """The printed columns of a row, in the seeds' order (LR first), plus the realisation."""
    metrics = summary["metrics"]
    lr = f"{cfg.SOLVER.BASE_LR:g}" + ("" if row.scaled else " (not scaled)")
    return {
        "LR": lr,
        "GPUs (simulated)": row.gpus,
        "total batch": cfg.SOLVER.IMS_PER_BATCH,
        "images/GPU": per_gpu,
        "how (processes x accum)": row.how,
        "steps": cfg.SOLVER.MAX_ITER,
        "epochs": round(summary["epochs_seen"], 3) if summary["epochs_seen"] else None,
        "AP50": round(metrics.get("bbox/AP50", float("nan")), 2),
        "AP": round(metrics.get("bbox/AP", float("nan")), 2),
        "images/s": round(summary["images_per_s"], 2),
    }


# ---------------------------------------------------------------------------- overhead ----
def overhead_cfg(one_gpu: CfgNode, output_dir: Path) -> CfgNode:
    """The 1-GPU config that both trainers can run: written for 1 process (stock
    ``auto_scale_workers`` then changes nothing), no accumulation, detectron2's SGD and
    WarmupMultiStepLR (the same math in both), no evaluation or checkpoint during the timed
    steps."""
    cfg = one_gpu.clone()
    cfg.defrost()
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 1
    cfg.SCALING.GRAD_ACCUM_STEPS = 1
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
    cfg.SOLVER.PLATEAU.ENABLED = False
    cfg.TEST.PRECISE_BN.ENABLED = False
    cfg.TEST.EVAL_PERIOD = 0
    cfg.OUTPUT_DIR = str(output_dir)
    return cfg


class _Stepper:
    """Drives a trainer's loop by hand, a few iterations at a time, so that two trainers can
    alternate in one process: what ``TrainerBase.train`` does per iteration (``before_step``,
    ``run_step``, ``after_step``: all hooks included), each with its own ``EventStorage``
    (re-entered around every chunk, as ``train()`` holds it around the loop)."""

    def __init__(self, trainer: DefaultTrainer) -> None:
        self.trainer = trainer
        trainer.iter = trainer.start_iter = 0
        trainer.storage = EventStorage(0)
        with trainer.storage:
            trainer.before_train()

    def steps(self, count: int) -> list[float]:
        """Runs ``count`` iterations; returns the wall time of each, hooks included."""
        trainer, times = self.trainer, []
        with trainer.storage:
            for _ in range(count):
                start = time.perf_counter()
                trainer.before_step()
                trainer.run_step()
                trainer.after_step()
                times.append(time.perf_counter() - start)
                trainer.iter += 1
        return times


def measure_overhead(
    one_gpu: CfgNode, output_dir: Path, iterations: int, chunk: int, warmup: int
) -> dict[str, Any]:
    """Median iteration time of ScalingTrainer and of stock DefaultTrainer on the same config,
    same seed (same initial weights and data order), in this process. Chunks of ``chunk``
    iterations alternate between the two (ABBA order, so neither always runs first after the
    other) until each has ``iterations`` timed ones, after ``warmup`` untimed ones each."""
    if one_gpu.SOLVER.MAX_ITER < warmup + iterations + chunk:
        raise ValueError(
            f"the overhead needs {warmup + iterations + chunk} iterations; the schedule has "
            f"{one_gpu.SOLVER.MAX_ITER} (fewer --overhead-iters)"
        )
    built = {}
    for name, trainer_cls in (
        ("det_scaling ScalingTrainer", ScalingTrainer),
        ("detectron2 DefaultTrainer", DefaultTrainer),
    ):
        cfg = overhead_cfg(one_gpu, output_dir / name.split()[1])
        cfg.freeze()
        seed_all_rng(cfg.SEED)
        built[name] = _Stepper(trainer_cls(cfg))
    ours, stock = built
    for stepper in built.values():
        stepper.steps(warmup)
    times: dict[str, list[float]] = {name: [] for name in built}
    order = [ours, stock]
    while min(len(t) for t in times.values()) < iterations:
        for name in order:
            times[name] += built[name].steps(min(chunk, iterations - len(times[name])))
        order.reverse()
    medians = {name: statistics.median(t) for name, t in times.items()}
    quartiles = {name: statistics.quantiles(t, n=4) for name, t in times.items()}
    return {
        "iterations": iterations,
        "chunk": chunk,
        "warmup": warmup,
        "ims_per_batch": one_gpu.SOLVER.IMS_PER_BATCH,
        "median_s": medians,
        "quartiles_s": {name: [q[0], q[2]] for name, q in quartiles.items()},
        "ratio": medians[ours] / medians[stock],
        "times_s": times,
    }


def format_overhead(result: dict[str, Any]) -> str:
    """The overhead measurement as a small markdown table and the ratio."""
    names = list(result["median_s"])
    rows = [
        {
            "trainer": name,
            "median iteration (s)": round(result["median_s"][name], 4),
            "25-75% (s)": "-".join(f"{q:.4f}" for q in result["quartiles_s"][name]),
        }
        for name in names
    ]
    table = tabulate(rows, headers="keys", tablefmt="github")
    return (
        f"{table}\n\nratio ScalingTrainer / DefaultTrainer: {result['ratio']:.3f} "
        f"(median of {result['iterations']} iterations each, {result['ims_per_batch']} images "
        f"per iteration, chunks of {result['chunk']} alternating, after {result['warmup']} "
        "untimed)"
    )


# ------------------------------------------------------------------------------ output ----
def machine_description(threads: int, device: str) -> str:
    """CPU model and cores, torch and detectron2 versions, threads, device, load average."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    load = ", load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    return (
        f"CPU: {cpu}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}, detectron2 "
        f"{detectron2.__version__}; {threads} torch thread(s) per process; device {device}{load}"
    )


def plot(rows: list[dict[str, Any]], path: Path, title: str, rule: str = "linear") -> None:
    """AP50 and images/s against the simulated GPU count, scaled LR against the 1-GPU LR (the
    1-GPU run starts both lines: it is the same run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    one_gpu = [r for r in rows if r["GPUs (simulated)"] == 1]
    series = {
        f"LR scaled ({rule} rule)": [r for r in rows if "not scaled" not in r["LR"]],
        "LR not scaled (1-GPU LR)": one_gpu + [r for r in rows if "not scaled" in r["LR"]],
    }
    fig, (ap_ax, speed_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    # LR labels above the scaled points, below the others: equal AP50s would print them over
    # each other.
    styles = (("o", (4, 5)), ("s", (4, -11)))
    for (label, mine), (marker, offset) in zip(series.items(), styles, strict=True):
        gpus = [r["GPUs (simulated)"] for r in mine]
        (line,) = ap_ax.plot(gpus, [r["AP50"] for r in mine], marker=marker, label=label)
        for r in mine:
            if marker == "s" and r["GPUs (simulated)"] == 1:
                continue  # the 1-GPU run is labelled once, in the scaled series
            ap_ax.annotate(
                r["LR"].split()[0],
                (r["GPUs (simulated)"], r["AP50"]),
                textcoords="offset points",
                xytext=offset,
                fontsize=7,
                color=line.get_color(),  # whose LR it is, where the two lines cross
            )
        speed_ax.plot(gpus, [r["images/s"] for r in mine], marker=marker, label=label)
    all_gpus = sorted({r["GPUs (simulated)"] for r in rows})
    for ax, label in ((ap_ax, "AP50 (%)"), (speed_ax, "training images/s (this machine)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_gpus, [str(g) for g in all_gpus])
        ax.minorticks_off()
        ax.set_xlabel("simulated GPUs (total batch = GPUs x images/GPU)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    hows = ", ".join(
        f"{r['GPUs (simulated)']}: {r['how (processes x accum)']}"
        for r in next(iter(series.values()))
    )
    speed_ax.set_title(f"processes x accumulation: {hows}", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -------------------------------------------------------------------------------- main ----
def load_base(args: argparse.Namespace) -> CfgNode:
    """The config with its data registered (generated if synthetic), its real training-set size,
    the seed, and the device this machine has."""
    cfg = det_scaling.load_cfg(str(args.config), args.overrides)
    cfg.SEED = args.seed
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    names = (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST)
    if any(name.startswith("voc_2007") for name in names):
        voc = datasets_root() / "VOC2007"
        if not voc.is_dir():
            raise SystemExit(f"{args.config} trains on VOC2007, which is not at {voc}")
    register_datasets(cfg)
    size = training_set_size(cfg)
    if cfg.SCALING.DATASET_SIZE not in (0, size):
        print(f"note: SCALING.DATASET_SIZE {cfg.SCALING.DATASET_SIZE} -> {size} (registered set)")
    cfg.SCALING.DATASET_SIZE = size
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument(
        "--gpus", type=int, nargs="+", default=[1, 2, 4, 8], help="simulated GPU counts"
    )
    parser.add_argument(
        "--max-epochs",
        type=float,
        # 1 epoch keeps the 7 default runs at about 15 minutes on 2 shared CPU cores.
        default=1.0,
        help="epochs of every row (the config's schedule compressed to it); "
        "0: the config's own length",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="real processes at most (gloo on the CPU, NCCL with enough GPUs); "
        "more simulated GPUs accumulate gradients",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--seed", type=int, default=0, help="SEED of every run")
    parser.add_argument(
        "--overhead-iters",
        type=int,
        default=40,
        help="timed iterations per trainer for the overhead ratio (0: skip)",
    )
    parser.add_argument("--overhead-chunk", type=int, default=5)
    parser.add_argument("--no-unscaled", action="store_true", help="only the scaled rows")
    parser.add_argument("--keep-checkpoints", action="store_true")
    parser.add_argument("--output-dir", type=Path, default=Path("output/scaling_table"))
    parser.add_argument("overrides", nargs="*", help="KEY VALUE pairs merged into the config")
    args = parser.parse_args()

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    log_to(args.output_dir / "log.txt")
    loaded = load_base(args)
    reference = loaded.SOLVER.REFERENCE_WORLD_SIZE
    cfg = epoch_schedule(loaded, args.max_epochs or None)
    one_gpu = one_gpu_cfg(cfg)
    per_gpu = one_gpu.SOLVER.IMS_PER_BATCH
    machine = machine_description(args.threads, cfg.MODEL.DEVICE)
    header = (
        f"{args.config.name}: written for {reference} GPU(s) x "
        f"{cfg.SOLVER.IMS_PER_BATCH // max(reference, 1)} images, BASE_LR {cfg.SOLVER.BASE_LR:g};"
        f" 1-GPU form: batch {per_gpu}, LR {one_gpu.SOLVER.BASE_LR:g}; "
        f"{cfg.SCALING.EPOCHS.MAX:g} epochs of {cfg.SCALING.DATASET_SIZE} images "
        f"(LR steps at {', '.join(f'{s:g}' for s in cfg.SCALING.EPOCHS.STEPS)}, warmup "
        f"{cfg.SCALING.EPOCHS.WARMUP:g}), seed {args.seed}\n{machine}"
    )
    print(header, flush=True)

    overhead = None
    if args.overhead_iters > 0:
        log_to(args.output_dir / "overhead" / "log.txt")
        # The config's full schedule: the LR follows the same curve in both trainers, and the
        # timed iterations stay well inside MAX_ITER whatever --max-epochs is.
        full_one_gpu = one_gpu_cfg(epoch_schedule(loaded, None))
        overhead = measure_overhead(
            full_one_gpu, args.output_dir / "overhead", args.overhead_iters, args.overhead_chunk, 3
        )
        print(f"\nOverhead, 1 process:\n{format_overhead(overhead)}", flush=True)

    rows, summaries = [], {}
    print()
    for row in plan_rows(args.gpus, args.processes):
        if args.no_unscaled and not row.scaled:
            continue
        run_cfg = row_cfg(one_gpu, row, args.output_dir)
        summary = train_row(run_cfg, row, args.threads, args.keep_checkpoints)
        rows.append(table_row(row, run_cfg, summary, per_gpu))
        summaries[row.name] = {"row": asdict(row), "summary": summary}
        print(json.dumps(rows[-1]), flush=True)
    wall = time.perf_counter() - start

    table = tabulate(rows, headers="keys", tablefmt="github", floatfmt="g")
    text = f"{header}\n{len(rows)} runs, {wall / 60:.1f} min in all\n\n{table}\n"
    if overhead is not None:
        text += f"\nOverhead (1 process, same config):\n\n{format_overhead(overhead)}\n"
    print(f"\n{text}")
    (args.output_dir / "table.md").write_text(text)
    record = {
        "config": str(args.config),
        "overrides": args.overrides,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine,
        "machine_at_end": machine_description(args.threads, cfg.MODEL.DEVICE),
        "wall_time_s": wall,
        "rows": rows,
        "runs": summaries,
        "overhead": overhead,
    }
    (args.output_dir / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    plot(
        rows,
        args.output_dir / "scaling_table.png",
        f"{args.config.stem}: scaled vs not scaled LR, {cfg.SCALING.EPOCHS.MAX:g} epochs",
        cfg.SCALING.RULE,
    )
    print(f"written: {args.output_dir}/table.md, results.json, scaling_table.png")


if __name__ == "__main__":
    main()

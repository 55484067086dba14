"""The seeds' VOC07 scaling table: AP50 at 1, 2, 4, 8 and 16 simulated GPUs with the LR scaled by
the linear rule, kept (rule "none") and by the square-root rule, LARC at 8 and 16, and AdaScale,
each row over several seeds (mean and spread), with the gradient noise scale measured in the
same runs. ``--preset default|long|few-samples``: full schedules at 1-8 GPUs (linear, kept,
AdaScale), built over several sittings (``--only ROW``; ``--record`` takes the runs of a
results.json whose folders are gone), each row against the noise scale late
in the reference run (``noise_scale_over_training.py``).

The seeds' table (Faster R-CNN on VOC07, MXNet, an ImageNet-pretrained backbone) shows that
scaling the LR with the GPU count holds mAP to 8 GPUs while keeping the LR loses 4-6 points;
McCandlish et al. (2018) say where the linear rule ends: past the gradient noise scale B_simple.
This script makes the same table with det_scaling's own pieces: by default the tiny Faster R-CNN
on the generated synthetic VOC-layout set (``configs/VOC07-Detection/faster_rcnn_synthetic_tiny
.yaml``), fine-tuned from a backbone pretrained by the project on another sample of the same
world (``--backbone pretrained``: ``faster_rcnn_synthetic_tiny_pretrain.yaml`` through
``det_scaling.commands.pretrain``,
trained once and cached under ``$DETECTRON2_DATASETS/pretrained``;
``--backbone scratch``: from random weights).

Every row starts from the config's 1-GPU form, ``plan_scaling(cfg, 1)``, with the schedule
written in epochs (``SCALING.EPOCHS``, compressed to ``--max-epochs``), so every row sees the
same images:

1. N simulated GPUs: ``plan_scaling(one_gpu, N, rule=...)``: N x the 1-GPU batch, 1/N of the
   steps, the LR by the rule (linear: x N; none: the 1-GPU LR; sqrt: x sqrt(N)); the LARC rows
   are the linear rule with ``SOLVER.OPTIMIZER LARC``. At 1 GPU every rule is the same run.
2. realised on the ``P`` processes available (``--processes``, 2 by default: gloo processes on
   the CPU, NCCL with enough GPUs): ``N <= P`` runs N processes; ``N > P`` runs P processes that
   each accumulate ``N / P`` micro-batches per step (the column "how"). The step's gradient is
   that of N GPUs (up to float summation order; GroupNorm does not depend on the batch).
3. ``SCALING.NOISE_SCALE.ENABLED`` in every row that has two batch sizes per step (all but
   1 x 1): the end-of-run B_simple (images) is a column; the linear rows at 2 GPUs give the
   noise scale of the baseline's trajectory, marked on the PNG as the GPU count where the total
   batch reaches it.

All runs of one process count run in one launch (the processes build one trainer after the
other), so process start-up is paid once. Prints the table and the verdict against the seeds'
table, and writes ``table.md``, ``results.json`` and ``scaling_table.png`` to ``--output-dir``.
Runs whose recorded environments differ in what changes numbers (library versions, CPU
capability, numerics variables, GPU, threads, data; a run without one differs) are not put in one
table unless ``--mixed-environments``::

    .venv/bin/python benchmarks/scaling_table.py [--gpus 1 2 4 8 16] [--seeds 0 1]
        [--max-epochs E] [--backbone pretrained|scratch] [--processes P]
        [--overhead-iters N] [--output-dir DIR] [--preset NAME [--only ROW ...] [--record JSON]]
        [--mixed-environments] [KEY VALUE ...]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from _environment import write_results  # benchmarks/: the results file
from _logs import log_to  # benchmarks/: the run logs to a file, stdout for the table
from _timing import Stepper, compare, format_comparison, machine_description

import det_scaling  # first: installs the detectron2 compatibility layer

# isort: split
from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from tabulate import tabulate

from det_scaling.commands.pretrain import pretrained_backbone
from det_scaling.config import config_format, read_recipe
from det_scaling.data import datasets_root
from det_scaling.engine import Run, ScalingTrainer
from det_scaling.engine.failures import RankFailedError
from det_scaling.engine.launch import default_device, launch
from det_scaling.scaling.batch_schedule import schedule_in_epochs
from det_scaling.tasks import build_trainer, register_datasets, training_set_size
from det_scaling.utils.environment import collect_environment, environment_mismatch

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny.yaml"
PRETRAIN_CONFIG = REPO / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny_pretrain.yaml"
SUMMARY_FILE = "summary.json"  # what ScalingTrainer.train() writes to OUTPUT_DIR
# The series of the table: the LR rule (or LARC with the linear rule), in the seeds' order.
SERIES = {
    "linear": "LR scaled (linear)",
    "none": "LR kept (1-GPU LR)",
    "sqrt": "LR scaled (sqrt)",
    "larc": "LARC, linear LR",
    "adascale": "AdaScale (1-GPU LR and schedule)",
}


@dataclass(frozen=True)
class Preset:
    """One table in one command: the full-schedule rows in one setting.

    Every preset trains from scratch at 1, 2, 4 and 8 simulated GPUs of 1 image, on one process
    each (accumulation makes up the batch), so that two presets can run side by side on two
    cores; finished runs are reused. ``epochs``: the config's schedule stretched to this length
    (0: its own). The reference row keeps ``checkpoints`` evenly spaced checkpoints:
    ``noise_scale_over_training.py`` reads them.
    """

    description: str
    overrides: tuple[str, ...] = ()
    epochs: float = 0.0
    gpus: tuple[int, ...] = (1, 2, 4, 8)
    series: tuple[str, ...] = ("linear", "none", "adascale")
    # Seeds of each series; the kept LR is the control the seeds' table has, one seed is enough.
    seeds: tuple[tuple[str, tuple[int, ...]], ...] = (
        ("linear", (0, 1)),
        ("adascale", (0, 1)),
        ("none", (0,)),
    )
    checkpoints: int = 6

    def seeds_of(self, series: str) -> tuple[int, ...]:
        return dict(self.seeds)[series]


# A first candidate for the setting where the linear rule should hold: 16 sampled anchors and 16
# RoIs per image instead of 64, on the idea that 64 samples of 3-6 objects on a 128-pixel image
# are mostly near-duplicate background and keep one image's gradient noise small. Measured, it
# did not raise B_simple and halved the reference's AP50 (docs/scaling-evidence.md, "Full
# schedules").
FEW_SAMPLES = (
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE",
    "16",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "16",
)
PRESETS = {
    "default": Preset("the tiny config as written"),
    # The candidate that holds by the measurement: B_simple passes 8 images between the first
    # and second epoch of the default run, so twice the schedule spends 5/6 of it above 8.
    "long": Preset("the schedule stretched to 12 epochs", epochs=12.0, checkpoints=12),
    "few-samples": Preset("16 sampled anchors and RoIs per image", FEW_SAMPLES),
}


# ---------------------------------------------------------------- configs of the rows ----
@dataclass(frozen=True)
class Row:
    """One row of the table: N simulated GPUs, a series (LR rule, or LARC), its realisation."""

    gpus: int
    series: str  # a key of SERIES
    processes: int
    accumulation: int

    @property
    def name(self) -> str:
        return f"gpus{self.gpus}_{self.series}"

    @property
    def rule(self) -> str:
        return "linear" if self.series == "larc" else self.series

    @property
    def is_reference(self) -> bool:
        return self.gpus == 1 and self.series == "linear"

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


def plan_rows(
    gpu_counts: list[int],
    max_processes: int,
    larc_gpus: list[int],
    series_shown: tuple[str, ...] = tuple(SERIES),
) -> list[Row]:
    """The linear rule at every count; the kept and the square-root LR and AdaScale at every count
    but 1 (at 1 GPU every rule gives the 1-GPU run); LARC at ``larc_gpus``; only the series in
    ``series_shown`` (the linear rule's 1-GPU run always: every series is compared to it)."""
    rows = []
    for series in SERIES:
        for gpus in gpu_counts:
            if (series in ("none", "sqrt", "adascale") and gpus == 1) or (
                series == "larc" and gpus not in larc_gpus
            ):
                continue
            if series not in series_shown and (series, gpus) != ("linear", 1):
                continue
            processes = processes_for(gpus, max_processes)
            rows.append(Row(gpus, series, processes, gpus // processes))
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
    total, steps, warmup = schedule_in_epochs(read_recipe(out))
    epochs = out.SCALING.EPOCHS
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


def row_cfg(
    one_gpu: CfgNode, row: Row, seed: int, output_dir: Path, checkpoints: int = 0
) -> CfgNode:
    """The config a run trains with: ``one_gpu`` scaled to ``row.gpus`` by the row's rule (LARC
    rows: the LARC optimizer), realised on ``row.processes`` by gradient accumulation, with the
    noise scale measured when a step has two batch sizes; the reference row checkpoints
    ``checkpoints`` times in the run (0: at the end only)."""
    base = one_gpu.clone()
    base.defrost()
    base.SEED = seed
    base.OUTPUT_DIR = str(output_dir / f"seed{seed}" / row.name)
    if row.series == "larc":
        base.SOLVER.OPTIMIZER = "LARC"
    if row.is_reference and checkpoints > 0:
        base.SCALING.EPOCHS.CHECKPOINT_PERIOD = base.SCALING.EPOCHS.MAX / checkpoints
    base.SCALING.NOISE_SCALE.ENABLED = row.gpus > 1
    rule = row.rule
    simulated = det_scaling.plan_scaling(base, row.gpus, rule=rule, keep_reference_batch=False).cfg
    if row.processes == row.gpus:
        return simulated
    return det_scaling.plan_scaling(simulated, row.processes, keep_reference_batch=True).cfg


# ---------------------------------------------------------------------------- training ----
def _train_runs(cfgs: list[CfgNode], threads: int) -> None:
    """Trains the runs one after the other in every process of a launch (module level: spawned
    workers import it). Each run's summary is written by rank 0 to ``OUTPUT_DIR/summary.json``."""
    torch.set_num_threads(threads)
    for cfg in cfgs:
        cfg = cfg.clone()
        if cfg.MODEL.DEVICE.startswith("cuda") and default_device() == "cpu":
            cfg.MODEL.DEVICE = "cpu"  # launch fell back to gloo on the CPU
        cfg.freeze()
        rank = comm.get_rank()
        log_to(Path(cfg.OUTPUT_DIR) / "log.txt" if rank == 0 else None)
        # A spawned worker starts with empty catalogs; the data is on disk.
        register_datasets(config_format(cfg))
        trainer = build_trainer(Run.of_scaled(cfg, comm.get_world_size()))
        summary = trainer.train()
        if rank == 0:
            metrics = summary["metrics"]
            noise = summary["gradient_noise"] or {}
            print(
                f"  {_run_name(cfg)}: AP50 "
                f"{metrics.get('bbox/AP50', float('nan')):.2f}, B_simple "
                f"{noise.get('noise_scale')}, {summary['train_time_s']:.0f} s",
                flush=True,
            )
        del trainer
        gc.collect()


def _run_name(cfg: CfgNode) -> str:
    return f"{Path(cfg.OUTPUT_DIR).parent.name}/{Path(cfg.OUTPUT_DIR).name}"


def finished_summary(cfg: CfgNode) -> dict | None:
    """The summary of a run of exactly ``cfg`` in its folder; None if there is none."""
    output = Path(cfg.OUTPUT_DIR)
    config_file, summary_file = output / "config.yaml", output / SUMMARY_FILE
    if summary_file.exists() and config_file.exists() and config_file.read_text() == cfg.dump():
        return json.loads(summary_file.read_text())
    return None


def config_sha256(cfg: CfgNode) -> str:
    """What identifies a run in a record: the hash of the config it trained."""
    return hashlib.sha256(cfg.dump().encode()).hexdigest()


def recorded_result(record: dict[str, Any], key: str, cfg: CfgNode) -> dict[str, Any] | None:
    """The result of run ``key`` ("gpus8_linear/seed0") in a results.json ``record`` (an earlier
    sitting's, kept in the repository when the output folder is not), if it trained exactly
    ``cfg``; None otherwise."""
    run = record.get("runs", {}).get(key)
    if run is None or run.get("config_sha256") != config_sha256(cfg):
        return None
    return run["result"]


def train_runs(
    cfgs: list[CfgNode],
    processes: int,
    threads: int,
    keep: bool | set[str],
    reuse: bool = False,
) -> None:
    """Trains ``cfgs`` on ``processes`` processes (one launch for all); each writes its
    ScalingTrainer summary (read by :func:`finished_summary`). A run whose loss diverges (NaN
    or Inf, on any rank) is a result, ``{"diverged": why}``; the launch goes on with the runs
    after it. ``reuse``: a run whose folder holds a summary of exactly this config is not
    trained again. ``keep``: keep the checkpoints of every run, or of the runs with these
    ``OUTPUT_DIR``s."""
    todo = []
    for cfg in cfgs:
        output = Path(cfg.OUTPUT_DIR)
        output.mkdir(parents=True, exist_ok=True)
        config_file, summary_file = output / "config.yaml", output / SUMMARY_FILE
        if reuse and finished_summary(cfg) is not None:
            continue
        summary_file.unlink(missing_ok=True)  # never report a previous run's numbers
        config_file.write_text(cfg.dump())  # what this run trained, for the record
        todo.append(cfg)
    while todo:
        try:
            launch(_train_runs, processes, dist_url="auto", args=(todo, threads))
            todo = []
        except RankFailedError as error:
            if "FloatingPointError" not in str(error):
                raise
            # The runs before it wrote their summaries; this one is the first without.
            diverged = next(c for c in todo if not (Path(c.OUTPUT_DIR) / SUMMARY_FILE).exists())
            # Made here, as the summary would have been in the run's main process.
            environment = collect_environment(
                world_size=processes,
                seeds={"configured": diverged.SEED},
                datasets=(*diverged.DATASETS.TRAIN, *diverged.DATASETS.TEST),
            )
            record = {"diverged": str(error), "environment": environment}
            (Path(diverged.OUTPUT_DIR) / SUMMARY_FILE).write_text(json.dumps(record, indent=2))
            print(f"  {_run_name(diverged)}: diverged ({error})", flush=True)
            todo = todo[todo.index(diverged) + 1 :]
    for cfg in cfgs:
        if keep is not True and cfg.OUTPUT_DIR not in (keep or set()):
            # The table does not need the weights: about 120 MB per run (model and momentum).
            output = Path(cfg.OUTPUT_DIR)
            for path in (*output.glob("*.pth"), output / "last_checkpoint"):
                path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------- table ----
def run_result(row: Row, cfg: CfgNode, summary: dict[str, Any]) -> dict[str, Any]:
    """What the table keeps of one run; a diverged run has no detector: AP 0."""
    common = {
        "lr": cfg.SOLVER.BASE_LR,
        "total_batch": cfg.SOLVER.IMS_PER_BATCH,
        "steps": cfg.SOLVER.MAX_ITER,
    }
    if "diverged" in summary:
        return {**common, "AP50": 0.0, "AP": 0.0, "noise_scale": None, "diverged": True}
    metrics = summary["metrics"]
    noise = summary["gradient_noise"] or {}
    return {
        **common,
        "AP50": metrics.get("bbox/AP50", float("nan")),
        "AP": metrics.get("bbox/AP", float("nan")),
        "noise_scale": noise.get("noise_scale"),
        # AdaScale's schedule ends on its own clock: fewer steps than MAX_ITER, more epochs.
        "steps_done": (summary.get("adascale") or {}).get("steps", cfg.SOLVER.MAX_ITER),
        "epochs": summary["epochs_seen"],
        "train_time_s": summary["train_time_s"],
        "diverged": False,
    }


def run_entry(
    row: Row, key: str, cfg: CfgNode, record: dict[str, Any], record_name: str
) -> dict[str, Any] | None:
    """The entry of run ``key`` in results.json: its result and the environment it was made in,
    from the summary in its folder when it trained exactly ``cfg`` there, else from the earlier
    sitting's ``record`` (the file ``record_name``); None when neither has it."""
    summary = finished_summary(cfg)
    if summary is not None:
        result, source = run_result(row, cfg, summary), cfg.OUTPUT_DIR
        environment = summary.get("environment")
    else:
        result, source = recorded_result(record, key, cfg), record_name
        environment = record.get("runs", {}).get(key, {}).get("environment")
    if result is None:
        return None
    return {
        "row": asdict(row),
        "config_sha256": config_sha256(cfg),
        "source": source,
        "result": result,
        "environment": environment,
    }


def check_environments(runs: dict[str, dict[str, Any]], mixed: bool = False) -> None:
    """Exits with one line naming two runs and how their environments differ when ``runs``
    (key -> the run's entry in results.json, with its ``environment``) were not all made where
    the numbers are the same (:func:`~det_scaling.utils.environment.numeric_differences`; a run
    without a recorded environment differs from every other); ``mixed`` allows it."""
    mismatch = environment_mismatch({key: run.get("environment") for key, run in runs.items()})
    if mismatch and not mixed:
        raise SystemExit(
            f"scaling_table: runs from different environments: {mismatch}; pass "
            "--mixed-environments to put them in one table"
        )


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(values) if values else None


def table_row(row: Row, runs: list[dict[str, Any]], per_gpu: int) -> dict[str, Any]:
    """A row over its seeds: AP50 of each, the mean and the spread (max - min)."""
    ap50 = [r["AP50"] for r in runs]
    noise = _mean([r["noise_scale"] for r in runs])
    return {
        "series": SERIES[row.series],
        "GPUs (simulated)": row.gpus,
        "total batch": runs[0]["total_batch"],
        "images/GPU": per_gpu,
        "LR": f"{runs[0]['lr']:.4g}",
        "how (processes x accum)": row.how,
        "steps": runs[0].get("steps_done", runs[0]["steps"]),
        "epochs": None if runs[0].get("epochs") is None else round(runs[0]["epochs"], 2),
        "AP50 per seed": " / ".join(
            "diverged" if r["diverged"] else f"{r['AP50']:.1f}" for r in runs
        ),
        "AP50 mean": round(_mean(ap50), 2),
        "AP50 spread": round(max(ap50) - min(ap50), 2),
        "AP mean": round(_mean([r["AP"] for r in runs]), 2),
        "B_simple (end)": None if noise is None else round(noise, 2),
    }


def _seed_ap50(row: dict[str, Any]) -> list[float]:
    """The row's AP50 of each seed (a diverged run: 0, as in its mean)."""
    return [0.0 if v == "diverged" else float(v) for v in row["AP50 per seed"].split(" / ")]


def baseline_noise_scale(rows: list[dict[str, Any]]) -> float | None:
    """B_simple at the end of the linear 2-GPU runs (the baseline's trajectory, measured with
    one image against two), else of the smallest linear multi-GPU row."""
    linear = [r for r in rows if r["series"] == SERIES["linear"] and r["B_simple (end)"]]
    return min(linear, key=lambda r: r["GPUs (simulated)"])["B_simple (end)"] if linear else None


def verdict(rows: list[dict[str, Any]], noise_scale: float | None) -> list[dict[str, Any]]:
    """Row by row against the seeds' table: scaled within 1 AP50 of 1 GPU? kept LR at least 3
    AP50 below the scaled LR? total batch within B_simple?"""
    by = {(r["series"], r["GPUs (simulated)"]): r for r in rows}
    one = by.get((SERIES["linear"], 1))
    out = []
    for (series, gpus), r in sorted(by.items(), key=lambda item: item[0][1]):
        if series != SERIES["linear"] or gpus == 1 or one is None:
            continue
        kept = by.get((SERIES["none"], gpus))
        delta = r["AP50 mean"] - one["AP50 mean"]
        entry = {
            "GPUs": gpus,
            "linear - 1 GPU (AP50)": round(delta, 2),
            "linear within 1 of 1 GPU": "yes" if delta >= -1 else "no",
            "kept - linear (AP50)": None
            if kept is None
            else round(kept["AP50 mean"] - r["AP50 mean"], 2),
            "kept >= 3 below": None
            if kept is None
            else ("yes" if kept["AP50 mean"] <= r["AP50 mean"] - 3 else "no"),
            "total batch <= B_simple": None
            if noise_scale is None
            else ("yes" if r["total batch"] <= noise_scale else "no"),
        }
        out.append(entry)
    return out


def row_verdicts(
    rows: list[dict[str, Any]], late_noise_scale: float | None
) -> list[dict[str, Any]]:
    """Every multi-GPU row against the reference (the 1-GPU row): the linear rule is predicted
    to hold while the total batch is at most B_simple late in the reference run; a row held if
    its AP50 mean is within 1 of the reference's. McCandlish et al.'s epochs-to-batch relation
    E = E_min (1 + B / B_simple) gives the epochs a batch needs for the reference's progress
    (a column beside the epochs each row ran; AdaScale's clock decides them itself). The kept
    LR rows also say whether they are at least 3 AP50 below the linear row of their GPU count,
    as in the seeds' table."""
    by = {(r["series"], r["GPUs (simulated)"]): r for r in rows}
    reference = by.get((SERIES["linear"], 1))
    out = []
    if reference is None:
        return out
    for r in sorted(rows, key=lambda r: (r["GPUs (simulated)"], r["series"])):
        if r["GPUs (simulated)"] == 1:
            continue
        delta = r["AP50 mean"] - reference["AP50 mean"]
        predicted = None if late_noise_scale is None else r["total batch"] <= late_noise_scale
        entry = {
            "series": r["series"],
            "GPUs": r["GPUs (simulated)"],
            "seeds": len(_seed_ap50(r)),
            "AP50 - reference": round(delta, 2),
            "predicted to hold (batch <= B_simple late)": None
            if predicted is None
            else ("yes" if predicted else "no"),
            "held (within 1 AP50)": "yes" if delta >= -1 else "no",
            "steps": r["steps"],
            "epochs": r["epochs"],
            "epochs predicted for the reference's progress": None
            if late_noise_scale is None or reference["epochs"] is None
            else round(
                reference["epochs"]
                * (1 + r["total batch"] / late_noise_scale)
                / (1 + reference["total batch"] / late_noise_scale),
                2,
            ),
        }
        linear = by.get((SERIES["linear"], r["GPUs (simulated)"]))
        if r["series"] == SERIES["none"] and linear is not None:
            entry["kept >= 3 below linear"] = (
                "yes" if r["AP50 mean"] <= linear["AP50 mean"] - 3 else "no"
            )
        out.append(entry)
    return out


def late_noise_scale(path: Path) -> float | None:
    """B_simple late in the reference run, from ``noise_scale_over_training.py``'s points of the
    preset's own setting: the smallest resolved value over the second half of the run. Late in
    training |G|^2 falls towards its noise and single estimates scatter upwards or are not
    resolved at all; the smallest is the conservative reading. None when not measured."""
    if not path.exists():
        return None
    curves = json.loads(path.read_text())["curves"]
    points = next(iter(curves.values()))
    late = [p["B_simple"] for p in points[len(points) // 2 :] if p["B_simple"] is not None]
    return min(late) if late else None


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


def measure_overhead(
    one_gpu: CfgNode, output_dir: Path, iterations: int, chunk: int, warmup: int
) -> dict[str, Any]:
    """Median iteration time of ScalingTrainer and of stock DefaultTrainer on the same config,
    same seed (same initial weights and data order), in this process, side by side
    (:func:`_timing.compare`)."""
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
        built[name] = Stepper(trainer_cls(cfg))
    result = compare(built, iterations, chunk, warmup)
    result["ims_per_batch"] = one_gpu.SOLVER.IMS_PER_BATCH
    return result


def format_overhead(result: dict[str, Any]) -> str:
    """The overhead measurement as a small markdown table and the ratio."""
    return format_comparison(result, f"{result['ims_per_batch']} images per iteration")


# ------------------------------------------------------------------------------ output ----
def plot(
    rows: list[dict[str, Any]], path: Path, title: str, noise_scale: float | None, per_gpu: int
) -> None:
    """AP50 (mean over seeds, bars from the lowest to the highest seed) against the simulated GPU
    count for each series, with the GPU count where the total batch reaches the measured
    B_simple; and each row's end-of-run B_simple against its total batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    one_gpu = [r for r in rows if r["GPUs (simulated)"] == 1]
    fig, (ap_ax, noise_ax) = plt.subplots(1, 2, figsize=(12, 4.6))
    markers = dict(zip(SERIES.values(), "osD^v", strict=True))
    for label, marker in markers.items():
        mine = [r for r in rows if r["series"] == label]
        if label not in (SERIES["linear"], SERIES["larc"]) and all(
            r["GPUs (simulated)"] == 1 for r in mine
        ):
            continue  # a series with no row of its own: not the 1-GPU point alone
        if label != SERIES["larc"]:
            mine = one_gpu + [r for r in mine if r["GPUs (simulated)"] > 1]
        mine = sorted(
            {r["GPUs (simulated)"]: r for r in mine}.values(), key=lambda r: r["GPUs (simulated)"]
        )
        if not mine:
            continue
        gpus = [r["GPUs (simulated)"] for r in mine]
        means = [r["AP50 mean"] for r in mine]
        # max(0, ...): the seeds' AP50 are shown rounded to 0.1, the mean to 0.01.
        lows = [max(0.0, m - min(_seed_ap50(r))) for m, r in zip(means, mine, strict=True)]
        highs = [max(0.0, max(_seed_ap50(r)) - m) for m, r in zip(means, mine, strict=True)]
        ap_ax.errorbar(gpus, means, yerr=[lows, highs], marker=marker, capsize=3, label=label)
        # Log axes: an unresolved estimate (0 or below: |G|^2 under its noise) is left out.
        measured = [
            (r["total batch"], r["B_simple (end)"]) for r in mine if (r["B_simple (end)"] or 0) > 0
        ]
        if measured and label != SERIES["larc"]:
            noise_ax.plot(*zip(*measured, strict=True), marker=marker, label=label)
    if noise_scale is not None:
        limit = noise_scale / per_gpu
        ap_ax.axvline(limit, color="grey", linestyle="--", linewidth=1)
        ap_ax.annotate(
            f"total batch = B_simple ({noise_scale:.3g})",
            (limit, 0.02),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=7,
            color="grey",
            xytext=(3, 0),
            textcoords="offset points",
        )
    all_gpus = sorted({r["GPUs (simulated)"] for r in rows})
    ap_ax.set_xscale("log", base=2)
    ap_ax.set_xticks(all_gpus, [str(g) for g in all_gpus])
    ap_ax.minorticks_off()
    ap_ax.set_xlabel(f"simulated GPUs (total batch = GPUs x {per_gpu} image(s))")
    ap_ax.set_ylabel("AP50 (%), mean over seeds (bar: lowest to highest)")
    batches = sorted({r["total batch"] for r in rows})
    noise_ax.plot(
        batches, batches, color="grey", linestyle="--", linewidth=1, label="B_simple = total batch"
    )
    noise_ax.set_xscale("log", base=2)
    noise_ax.set_yscale("log", base=2)
    noise_ax.set_xticks(batches, [str(b) for b in batches])
    noise_ax.minorticks_off()
    noise_ax.set_xlabel("total batch of the run (images)")
    noise_ax.set_ylabel("B_simple at the end of the run (images)")
    for ax in (ap_ax, noise_ax):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -------------------------------------------------------------------------------- main ----
def load_base(args: argparse.Namespace) -> CfgNode:
    """The config with its data registered (generated if synthetic), its real training-set size,
    the seed, and the device this machine has."""
    cfg = det_scaling.load_cfg(str(args.config), args.overrides)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    names = (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST)
    if any(name.startswith("voc_2007") for name in names):
        voc = datasets_root() / "VOC2007"
        if not voc.is_dir():
            raise SystemExit(f"{args.config} trains on VOC2007, which is not at {voc}")
    register_datasets(config_format(cfg))
    size = training_set_size(config_format(cfg))
    if cfg.SCALING.DATASET_SIZE not in (0, size):
        print(f"note: SCALING.DATASET_SIZE {cfg.SCALING.DATASET_SIZE} -> {size} (registered set)")
    cfg.SCALING.DATASET_SIZE = size
    return cfg


def add_row_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments that choose the rows and their schedule."""
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument(
        "--gpus", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="simulated GPU counts"
    )
    parser.add_argument(
        "--larc-gpus", type=int, nargs="*", default=[8, 16], help="GPU counts of the LARC rows"
    )
    parser.add_argument(
        "--series", nargs="+", choices=list(SERIES), default=list(SERIES), help="rows to run"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="SEED of each run (default 0 1); with --preset: the preset's seeds to train now",
    )
    parser.add_argument(
        "--max-epochs",
        type=float,
        default=1.0,
        help="epochs of every row (the config's schedule compressed to it); "
        "0: the config's own length",
    )
    parser.add_argument(
        "--backbone",
        choices=("pretrained", "scratch"),
        default="pretrained",
        help="pretrained: MODEL.WEIGHTS from det_scaling.commands.pretrain (made once, cached), "
        "stem and res2 frozen as in detectron2's fine-tuning; scratch: the config as it is",
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of how the runs are made and kept."""
    parser.add_argument(
        "--processes",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="real processes at most (gloo on the CPU, NCCL with enough GPUs); "
        "more simulated GPUs accumulate gradients",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument(
        "--overhead-iters",
        type=int,
        default=0,
        help="timed iterations per trainer for the ScalingTrainer / DefaultTrainer ratio (0: skip)",
    )
    parser.add_argument("--overhead-chunk", type=int, default=5)
    parser.add_argument("--keep-checkpoints", action="store_true")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the result of a run whose folder holds a summary of exactly its config",
    )
    parser.add_argument("--output-dir", type=Path, help="default: output/scaling_table[/PRESET]")


def add_table_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of which table, from which runs, and the config overrides."""
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="a full-schedule table in one setting (sets the GPU counts, series, seeds, "
        "--max-epochs, --backbone scratch, --processes 1 and --reuse)",
    )
    parser.add_argument(
        "--only",
        nargs="*",
        metavar="ROW",
        help="train only these rows (e.g. gpus1_linear gpus8_adascale) now, none when empty; "
        "the table shows every other row that has finished",
    )
    parser.add_argument(
        "--record",
        type=Path,
        help="a results.json of earlier sittings: its runs of exactly the same config stand in "
        "for runs whose folders are gone (e.g. benchmarks/results/scaling_table_default.json)",
    )
    parser.add_argument(
        "--mixed-environments",
        action="store_true",
        help="put runs made with other library versions, CPU capability, numerics variables, "
        "GPU, threads or data (or with none recorded) in one table",
    )
    parser.add_argument("overrides", nargs="*", help="KEY VALUE pairs merged into the config")


def parse_args() -> argparse.Namespace:
    """The command line, with a preset's settings applied and the output folder filled in."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_row_arguments(parser)
    add_run_arguments(parser)
    add_table_arguments(parser)
    args = parser.parse_args()
    if args.preset:
        preset = PRESETS[args.preset]
        args.gpus, args.series, args.larc_gpus = list(preset.gpus), list(preset.series), []
        args.max_epochs, args.backbone = preset.epochs, "scratch"
        args.processes, args.reuse = 1, True
        args.overrides = [*preset.overrides, *args.overrides]
    if args.output_dir is None:
        args.output_dir = Path("output/scaling_table") / (args.preset or "")
    return args


def describe(
    args: argparse.Namespace,
    loaded: CfgNode,
    cfg: CfgNode,
    one_gpu: CfgNode,
    preset: Preset | None,
    machine: str,
) -> str:
    """The header of the table: the config as written, its 1-GPU form, the schedule, the machine."""
    reference = loaded.SOLVER.REFERENCE_WORLD_SIZE
    return (
        f"{args.config.name}, backbone {args.backbone}"
        + (f" ({loaded.MODEL.WEIGHTS}, FREEZE_AT 2)" if args.backbone == "pretrained" else "")
        + f": written for {reference} GPU(s) x "
        f"{cfg.SOLVER.IMS_PER_BATCH // max(reference, 1)} images, BASE_LR {cfg.SOLVER.BASE_LR:g};"
        f" 1-GPU form: batch {one_gpu.SOLVER.IMS_PER_BATCH}, LR {one_gpu.SOLVER.BASE_LR:g}; "
        f"{cfg.SCALING.EPOCHS.MAX:g} epochs of {cfg.SCALING.DATASET_SIZE} images "
        f"(LR steps at {', '.join(f'{s:g}' for s in cfg.SCALING.EPOCHS.STEPS)}, warmup "
        f"{cfg.SCALING.EPOCHS.WARMUP:g})"
        + (f", preset {args.preset}: {preset.description}" if preset else "")
        + f"\n{machine}"
    )


def overhead_of(args: argparse.Namespace, loaded: CfgNode) -> dict[str, Any] | None:
    """The ScalingTrainer / DefaultTrainer iteration times, printed; None without
    ``--overhead-iters``."""
    if args.overhead_iters <= 0:
        return None
    log_to(args.output_dir / "overhead" / "log.txt")
    # The config's full schedule: the LR follows the same curve in both trainers, and the
    # timed iterations stay well inside MAX_ITER whatever --max-epochs is.
    full_one_gpu = one_gpu_cfg(epoch_schedule(loaded, None))
    overhead = measure_overhead(
        full_one_gpu, args.output_dir / "overhead", args.overhead_iters, args.overhead_chunk, 3
    )
    print(f"\nOverhead, 1 process:\n{format_overhead(overhead)}", flush=True)
    return overhead


Planned = list[tuple[Row, int, CfgNode]]  # (row, seed, the run's config)


def plan_runs(
    args: argparse.Namespace, one_gpu: CfgNode, preset: Preset | None
) -> tuple[list[Row], Planned, Planned]:
    """The rows, every run of the table, and the runs to train or reuse in this invocation
    (``--only``, ``--seeds``)."""
    rows = plan_rows(args.gpus, args.processes, args.larc_gpus, tuple(args.series))
    checkpoints = preset.checkpoints if preset else 0
    runs = [
        (row, seed, row_cfg(one_gpu, row, seed, args.output_dir, checkpoints))
        for row in rows
        for seed in (preset.seeds_of(row.series) if preset else args.seeds or (0, 1))
    ]
    seeds_now = set(args.seeds) if args.seeds else None
    todo = [
        (row, seed, c)
        for row, seed, c in runs
        if (args.only is None or row.name in args.only) and (seeds_now is None or seed in seeds_now)
    ]
    return rows, runs, todo


def train_planned(args: argparse.Namespace, runs: Planned, todo: Planned) -> None:
    """Trains (or reuses) ``todo``, one launch per process count; the reference runs keep their
    checkpoints."""
    keep = args.keep_checkpoints or {c.OUTPUT_DIR for row, _, c in runs if row.is_reference}
    print(f"\n{len(runs)} runs, {len(todo)} to train or reuse now", flush=True)
    for processes in sorted({row.processes for row, _, _ in todo}):
        mine = [c for row, _, c in todo if row.processes == processes]
        train_runs(mine, processes, args.threads, keep, args.reuse)


def collect_runs(
    args: argparse.Namespace, runs: Planned
) -> tuple[dict[tuple[str, int], list[dict[str, Any]]], dict[str, Any], list[str]]:
    """Each row's results (from its folders or ``--record``), every run's entry by key, and the
    keys of the runs not made yet; refuses runs of differing environments."""
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    per_run, missing = {}, []
    recorded = json.loads(args.record.read_text()) if args.record else {}
    for row, seed, run_cfg in runs:
        key = f"{row.name}/seed{seed}"
        entry = run_entry(row, key, run_cfg, recorded, str(args.record))
        if entry is None:
            missing.append(key)
            continue
        results.setdefault((row.name, row.gpus), []).append(entry["result"])
        per_run[key] = entry
    check_environments(per_run, args.mixed_environments)
    return results, per_run, missing


@dataclass
class Table:
    """The table of one invocation: its rows, the verdicts, and the runs behind them."""

    rows: list[dict[str, Any]]
    noise_scale: float | None  # B_simple of the baseline trajectory
    checks: list[dict[str, Any]]  # against the seeds' table
    late: float | None  # B_simple late in the reference run (a preset)
    verdicts: list[dict[str, Any]]  # row by row against ``late`` (a preset)
    per_run: dict[str, Any]
    missing: list[str]


def build_table(
    args: argparse.Namespace, rows: list[Row], runs: Planned, per_gpu: int, preset: Preset | None
) -> Table:
    """The rows that have results, and their verdicts."""
    results, per_run, missing = collect_runs(args, runs)
    rows = [row for row in rows if (row.name, row.gpus) in results]
    table = [table_row(row, results[row.name, row.gpus], per_gpu) for row in rows]
    noise_scale = baseline_noise_scale(table)
    late = late_noise_scale(args.output_dir / "noise_over_training.json") if preset else None
    return Table(
        rows=table,
        noise_scale=noise_scale,
        checks=verdict(table, noise_scale),
        late=late,
        verdicts=row_verdicts(table, late) if preset else [],
        per_run=per_run,
        missing=missing,
    )


def table_text(
    header: str,
    summary_line: str,
    table: Table,
    per_gpu: int,
    preset: Preset | None,
    overhead: dict[str, Any] | None,
) -> str:
    """table.md: the header, the table, the verdicts (against the seeds' table, or row by row
    for a preset) and the overhead."""
    noise_scale, late = table.noise_scale, table.late
    text = (
        f"{header}\n{summary_line}\n\n"
        f"{tabulate(table.rows, headers='keys', tablefmt='github', floatfmt='g')}\n"
    )
    if preset is None:
        text += (
            f"\nB_simple of the baseline (linear rule, smallest multi-GPU row, end of run): "
            f"{noise_scale if noise_scale is not None else 'not measured'} images; with "
            f"{per_gpu} image(s)/GPU the linear rule is expected to hold up to "
            f"{'?' if noise_scale is None else max(1, int(noise_scale // per_gpu))} GPU(s)\n\n"
            f"Against the seeds' table:\n\n"
            f"{tabulate(table.checks, headers='keys', tablefmt='github')}\n"
        )
    else:
        text += (
            f"\nRow by row (B_simple late in the reference run: "
            f"{'not measured' if late is None else f'{late:.3g} images'}, "
            f"noise_scale_over_training.py):\n\n"
            f"{tabulate(table.verdicts, headers='keys', tablefmt='github')}\n"
            f"\nNot run yet: {', '.join(table.missing) or 'none'}\n"
        )
    if overhead is not None:
        text += f"\nOverhead (1 process, same config):\n\n{format_overhead(overhead)}\n"
    return text


def write_outputs(
    args: argparse.Namespace,
    cfg: CfgNode,
    table: Table,
    runs: Planned,
    per_gpu: int,
    extra: dict[str, Any],
) -> list[str]:
    """Writes results.json (``extra``: the machine at start and end, the times, the overhead)
    and, when a run has finished, scaling_table.png; returns the names of the files written."""
    record = {
        "config": str(args.config),
        "overrides": args.overrides,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": extra["machine"],
        "machine_at_end": extra["machine_at_end"],
        "wall_time_s": extra["wall_time_s"],
        "cpu_time_s": extra["cpu_time_s"],
        "pretrained_backbone_s": extra["pretrained_backbone_s"],
        "rows": table.rows,
        "noise_scale": table.noise_scale,
        "verdict": table.checks,
        "late_noise_scale": table.late,
        "row_verdicts": table.verdicts,
        "runs": table.per_run,
        "not_run_yet": table.missing,
        "overhead": extra["overhead"],
    }
    write_results(
        args.output_dir / "results.json",
        record,
        world_size=args.processes,
        seeds=sorted({seed for _, seed, _ in runs}),
        datasets=(*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST),
    )
    if not table.rows:
        return ["results.json"]  # no finished run to plot
    plot(
        table.rows,
        args.output_dir / "scaling_table.png",
        f"{args.config.stem} ({args.backbone} backbone): {cfg.SCALING.EPOCHS.MAX:g} epoch(s), "
        f"seeds {', '.join(sorted({k.split('/seed')[1] for k in table.per_run}))}",
        table.noise_scale if table.late is None else table.late,
        per_gpu,
    )
    return ["results.json", "scaling_table.png"]


def main() -> None:
    args = parse_args()
    preset = PRESETS[args.preset] if args.preset else None
    start, cpu_start = time.perf_counter(), os.times()
    torch.set_num_threads(args.threads)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    log_to(args.output_dir / "log.txt")
    loaded = load_base(args)
    if args.backbone == "pretrained":
        loaded.MODEL.WEIGHTS = str(pretrained_backbone(PRETRAIN_CONFIG, num_gpus=args.processes))
        loaded.MODEL.BACKBONE.FREEZE_AT = 2
    pretrained_s = time.perf_counter() - start
    cfg = epoch_schedule(loaded, args.max_epochs or None)
    one_gpu = one_gpu_cfg(cfg)
    per_gpu = one_gpu.SOLVER.IMS_PER_BATCH
    machine = machine_description(args.threads, cfg.MODEL.DEVICE)
    header = describe(args, loaded, cfg, one_gpu, preset, machine)
    print(header, flush=True)
    overhead = overhead_of(args, loaded)

    rows, runs, todo = plan_runs(args, one_gpu, preset)
    train_planned(args, runs, todo)
    table = build_table(args, rows, runs, per_gpu, preset)
    wall = time.perf_counter() - start
    end = os.times()
    cpu = (end.user + end.children_user) - (cpu_start.user + cpu_start.children_user)

    summary_line = (
        f"{len(runs)} runs, {wall / 60:.1f} min in all ({cpu / 60:.1f} min of CPU, "
        f"all processes; {pretrained_s / 60:.1f} min getting the pretrained backbone)"
    )
    text = table_text(header, summary_line, table, per_gpu, preset, overhead)
    print(f"\n{text}")
    (args.output_dir / "table.md").write_text(text)
    extra = {
        "machine": machine,
        "machine_at_end": machine_description(args.threads, cfg.MODEL.DEVICE),
        "wall_time_s": wall,
        "cpu_time_s": cpu,
        "pretrained_backbone_s": pretrained_s,
        "overhead": overhead,
    }
    written = ["table.md", *write_outputs(args, cfg, table, runs, per_gpu, extra)]
    print(f"written: {args.output_dir}/{', '.join(written)}")


if __name__ == "__main__":
    main()

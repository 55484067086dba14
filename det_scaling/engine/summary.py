"""The summary a run ends with: the dict ``ScalingTrainer.train()`` returns and writes to
``OUTPUT_DIR/summary.json`` (:func:`build_summary`, :func:`write_summary`), and its lines in the
log (:func:`format_summary`)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from detectron2.evaluation.testing import flatten_results_dict
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from det_scaling.utils.environment import collect_environment

__all__ = ["SUMMARY_FILE", "build_environment", "build_summary", "format_summary", "write_summary"]

SUMMARY_FILE = "summary.json"


def build_summary(trainer: Any, wall_time: float) -> dict[str, Any]:
    """The run of ``trainer`` (a ``ScalingTrainer`` after its steps) in one dict: scaled
    settings, progress, wall time (the whole ``train()``), training time and images/s (up to the
    last step), final LR, evaluation metrics (flattened, e.g. ``bbox/AP50``; empty when nothing
    was evaluated), the batch stages and the gradient noise statistics when measured, and where
    the run was made (``trainer.build_environment()``, main process only; None on the others)."""
    progress, schedule = trainer.progress, trainer.batch_schedule
    images_this_run = progress.images_seen - progress.images_at_start
    results = getattr(trainer, "_last_eval_results", None)
    histories = trainer.storage.histories()
    return {
        "world_size": trainer.world_size,
        "ims_per_batch": schedule.ims_per_batch,
        "grad_accum_steps": schedule.grad_accum_steps,
        "micro_batch_per_process": schedule.micro_batch,
        "base_lr": trainer.recipe.base_lr,
        "scaling_rule": trainer.recipe.rule,
        "max_iter": trainer.max_iter,
        "start_iter": progress.start_iter,
        "iterations_done": progress.iterations_done,
        "images_seen": progress.images_seen,
        "epochs_seen": progress.epochs_seen,
        "wall_time_s": wall_time,
        "train_time_s": progress.train_seconds,
        "images_per_s": images_this_run / progress.train_seconds
        if progress.train_seconds > 0
        else 0.0,
        "final_lr": histories["lr"].latest() if "lr" in histories else None,
        "metrics": {k: float(v) for k, v in flatten_results_dict(results or {}).items()},
        "resumed_from": progress.resumed_from,
        "batch_stages": [dataclasses.asdict(s) for s in schedule.stages],
        "gradient_noise": trainer.gradient_noise and trainer.gradient_noise.summary(),
        "adascale": trainer.adascale and trainer.adascale.summary(),
        "environment": trainer.build_environment() if comm.is_main_process() else None,
    }


def build_environment(trainer: Any) -> dict[str, Any]:
    """:func:`~det_scaling.utils.environment.collect_environment` of ``trainer``'s process: its
    threads, the world size, the seed configured (``SEED``, ``train.seed``) and the one used
    there, and the fingerprints of the run's training and test sets."""
    train, test = trainer.run.adapter.dataset_names()
    seeds = {
        "configured": trainer.settings.seed,
        "used": trainer.seed_used,
    }
    return collect_environment(world_size=trainer.world_size, seeds=seeds, datasets=(*train, *test))


def write_summary(summary: dict[str, Any], output_dir: str) -> str:
    """Writes ``summary`` to :data:`SUMMARY_FILE` in ``output_dir``; returns its path."""
    PathManager.mkdirs(output_dir)
    path = os.path.join(output_dir, SUMMARY_FILE)
    with PathManager.open(path, "w") as f:
        json.dump(summary, f, indent=2)
    return path


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a few readable lines for the log."""
    lines = [
        f"world size {summary['world_size']}, total batch {summary['ims_per_batch']} "
        f"({summary['grad_accum_steps']} micro-batch(es) of {summary['micro_batch_per_process']} "
        f"image(s) per process), base LR {summary['base_lr']:g} ({summary['scaling_rule']} rule)",
        f"iterations {summary['start_iter']} -> {summary['iterations_done']} of "
        f"{summary['max_iter']}, images seen {summary['images_seen']}"
        + (f" ({summary['epochs_seen']:.4g} epochs)" if summary["epochs_seen"] is not None else ""),
        f"wall time {summary['wall_time_s']:.1f} s, training {summary['train_time_s']:.1f} s, "
        f"{summary['images_per_s']:.2f} images/s",
    ]
    stages = summary["batch_stages"]
    if len(stages) > 1:
        stage_texts = [
            f"{s['ims_per_batch']} x {s['num_iters']} steps (LR x{s['lr_factor']:g})"
            for s in stages
        ]
        lines.append("batch stages: " + ", ".join(stage_texts))
    noise = summary.get("gradient_noise")
    if noise and noise["noise_scale"] is not None:
        lines.append(
            f"gradient noise scale B_simple {noise['noise_scale']:.3g} images "
            f"(over {noise['steps_measured']} steps)"
        )
    adascale = summary.get("adascale")
    if adascale and adascale["mean_gain"] is not None:
        lines.append(
            f"AdaScale at S = {adascale['scale']:g}: progress {adascale['progress']:.5g} of "
            f"{adascale['length']} steps of batch {adascale['reference_batch']} in "
            f"{adascale['steps']} steps, mean gain ratio {adascale['mean_gain']:.3g}"
        )
    metrics = summary["metrics"]
    if metrics:
        shown = {k: v for k, v in metrics.items() if k.endswith(("AP", "AP50", "AP75"))} or metrics
        lines.append(", ".join(f"{k} {v:.4g}" for k, v in sorted(shown.items())))
    return "\n".join(lines)

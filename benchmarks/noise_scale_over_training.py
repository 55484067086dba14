"""B_simple over a whole run: the gradient noise scale at the start and at every checkpoint of a
scaling-table preset's reference run (1 GPU of 1 image, the config's full schedule), for one or
more sampling settings measured on the same weights.

The reference run is the one ``scaling_table.py --preset P`` trains first (its folder
``OUTPUT/P/seed0/gpus1_linear`` keeps evenly spaced checkpoints). At each point the measurement
is ``det-scaling noise-scale``'s: ``--num-iter`` steps of the run's own schedule from that
iteration, on one process with two micro-batches of one image per step. Prints a table, and
writes ``noise_over_training.json`` and ``noise_over_training.png`` next to the preset's table::

    .venv/bin/python benchmarks/noise_scale_over_training.py --preset default
        [--settings default few-samples] [--num-iter 60] [--output-dir output/scaling_table]
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

from _environment import write_results  # benchmarks/: the results file
from _logs import log_to  # benchmarks/: the run logs to a file, stdout for the table
from scaling_table import PRESETS

import det_scaling  # first: installs the detectron2 compatibility layer

# isort: split
from detectron2.config import CfgNode
from tabulate import tabulate

from det_scaling.commands.noise_scale import launch_noise_scale
from det_scaling.config import config_format
from det_scaling.tasks import register_datasets

# The per-GPU batch of the table is 1 image: the linear rule is predicted to hold to N GPUs
# while B_simple >= N images: the setting where it should hold keeps B_simple >= 8 over most of
# the run.
TARGET_GPUS = 8


def reference_dir(output_dir: Path, preset: str) -> Path:
    return output_dir / preset / "seed0" / "gpus1_linear"


def measurement_points(run_dir: Path, max_iter: int) -> list[tuple[int, str]]:
    """(iteration, weights) of each point: the initial weights (the config's, random here) at
    0, then every checkpoint, the final weights at ``max_iter`` (measured over the schedule's
    last steps)."""
    points = [(0, "")]
    for path in sorted(run_dir.glob("model_*.pth")):
        match = re.fullmatch(r"model_(\d+)\.pth", path.name)
        if match and int(match.group(1)) + 1 < max_iter:  # the last one is model_final's
            points.append((int(match.group(1)) + 1, str(path)))
        elif path.name == "model_final.pth":
            points.append((max_iter, str(path)))
    return sorted(points)


def measure(
    written: CfgNode, overrides: tuple[str, ...], start: int, weights: str, num_iter: int
) -> dict[str, Any]:
    """B_simple of ``written`` (the reference run's config, 1 image per step) from its step
    ``start`` with ``weights``. One process without accumulation has one batch size per step:
    noise-scale then measures at twice the batch, each measured step spanning two of the run's."""
    cfg = written.clone()
    cfg.defrost()
    cfg.merge_from_list(list(overrides))
    cfg.MODEL.WEIGHTS = weights
    cfg.SCALING.NOISE_SCALE.ENABLED = False  # the command measures; no meter in a hook too
    doubled = 2 if written.SCALING.GRAD_ACCUM_STEPS == 1 else 1
    began = time.perf_counter()
    start_at = min(start, written.SOLVER.MAX_ITER - doubled * num_iter)
    result = launch_noise_scale(cfg, 1, num_iter=num_iter, start_iter=start_at)
    overall = result.overall
    return {
        "start_iter": start,
        "epoch": start * written.SOLVER.IMS_PER_BATCH / written.SCALING.DATASET_SIZE,
        "weights": weights or "initial (random)",
        "B_simple": overall.noise_scale,
        "standard_error": overall.standard_error,
        "sq_grad_norm": overall.sq_grad_norm,
        "trace_sigma": overall.trace_sigma,
        "loss": sum(result.losses) / len(result.losses),
        "seconds": time.perf_counter() - began,
    }


def _format(point: dict[str, Any]) -> str:
    if point["B_simple"] is None:
        return "not resolved (|G|^2 <= 0)"
    error = point["standard_error"]
    return f"{point['B_simple']:.3g}" + ("" if error is None else f" +- {error:.2g}")


def plot(curves: dict[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.4))
    for label, points in curves.items():
        epochs = [p["epoch"] for p in points]
        values = [p["B_simple"] or float("nan") for p in points]
        errors = [p["standard_error"] or 0.0 for p in points]
        ax.errorbar(epochs, values, yerr=errors, marker="o", capsize=3, label=label)
    for gpus in (2, 4, TARGET_GPUS):
        ax.axhline(gpus, color="grey", linestyle="--", linewidth=0.8)
        ax.annotate(f"{gpus} GPUs x 1 image", (0, gpus), fontsize=7, color="grey")
    ax.set_yscale("log", base=2)
    ax.set_xlabel("epoch of the reference run (1 GPU, 1 image per step)")
    ax.set_ylabel("B_simple (images), +- standard error")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=list(PRESETS), default="default")
    parser.add_argument(
        "--settings",
        nargs="+",
        choices=list(PRESETS),
        help="sampling settings measured on the run's weights (default: the preset's own)",
    )
    parser.add_argument("--num-iter", type=int, default=60, help="steps per measurement")
    parser.add_argument("--output-dir", type=Path, default=Path("output/scaling_table"))
    args = parser.parse_args()
    settings = args.settings or [args.preset]

    run_dir = reference_dir(args.output_dir, args.preset)
    if not (run_dir / "config.yaml").exists():
        raise SystemExit(
            f"{run_dir}: no reference run; train it with: benchmarks/scaling_table.py "
            f"--preset {args.preset} --only gpus1_linear --seeds 0"
        )
    written = det_scaling.load_cfg(str(run_dir / "config.yaml"), [])
    written.defrost()
    written.OUTPUT_DIR = str(args.output_dir / args.preset / "noise_over_training")
    register_datasets(config_format(written))
    log_to(Path(written.OUTPUT_DIR) / "log.txt")
    points = measurement_points(run_dir, written.SOLVER.MAX_ITER)
    print(f"{run_dir}: {len(points)} points x {len(settings)} setting(s)", flush=True)

    curves: dict[str, list[dict[str, Any]]] = {}
    for setting in settings:
        label = f"{setting}: {PRESETS[setting].description}"
        for start, weights in points:
            point = measure(written, PRESETS[setting].overrides, start, weights, args.num_iter)
            curves.setdefault(label, []).append(point)
            print(
                f"  {setting} @ epoch {point['epoch']:.2f}: B_simple {_format(point)}, "
                f"loss {point['loss']:.3f}, {point['seconds']:.0f} s",
                flush=True,
            )
    table = [
        {
            "setting": label.split(":")[0],
            "epoch": round(p["epoch"], 2),
            "B_simple": None if p["B_simple"] is None else round(p["B_simple"], 2),
            "+-": None if p["standard_error"] is None else round(p["standard_error"], 2),
            f">= {TARGET_GPUS}": p["B_simple"] is not None and p["B_simple"] >= TARGET_GPUS,
            "loss": round(p["loss"], 3),
        }
        for label, points_of in curves.items()
        for p in points_of
    ]
    print(tabulate(table, headers="keys", tablefmt="github"))
    out = args.output_dir / args.preset
    record = {"run": str(run_dir), "num_iter": args.num_iter, "curves": curves}
    datasets = (*written.DATASETS.TRAIN, *written.DATASETS.TEST)
    write_results(out / "noise_over_training.json", record, world_size=1, datasets=datasets)
    plot(
        curves,
        out / "noise_over_training.png",
        f"B_simple over the {args.preset} reference run ({written.SCALING.EPOCHS.MAX:g} epochs), "
        f"{args.num_iter} steps per point",
    )
    print(f"written: {out}/noise_over_training.json, noise_over_training.png")


if __name__ == "__main__":
    main()

"""What measuring the gradient noise scale in training costs: iteration time with
``SCALING.NOISE_SCALE.ENABLED`` against without, side by side in the same processes.

Both trainers are ``ScalingTrainer`` on the same config and seed; their loops alternate in
chunks (``benchmarks/_timing.py``), every hook included (the noise scale is read on the host and
logged every ``SCALING.NOISE_SCALE.PERIOD`` steps). Two geometries, the two ways the meter reads
the small batch:

* ``1 x 2``: one process accumulating 2 micro-batches: the first micro-batch's squared norm
  after its backward, against the step's;
* ``2 x 1``: two gloo processes (NCCL with 2 GPUs): the per-process squared norm in DDP's
  communication hook before the all-reduce, one scalar all-reduce, against the step's.

Prints both tables and ratios (target: under 1.05) and writes ``results.json`` to
``--output-dir``::

    .venv/bin/python benchmarks/noise_scale_cost.py [--iterations 40] [--chunk 5]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from _environment import write_results  # benchmarks/: the results file
from _logs import log_to  # benchmarks/: the run logs to a file, stdout for the table
from _timing import Stepper, compare, format_comparison, machine_description

import det_scaling  # first: installs the detectron2 compatibility layer

# isort: split
from detectron2.utils import comm

from det_scaling.engine import Run
from det_scaling.engine.launch import default_device, launch
from det_scaling.tasks import build_trainer, prepare_run

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny.yaml"
WARMUP = 3


def geometry_run(
    config: Path, processes: int, accumulation: int, output_dir: Path, noise_scale: bool
) -> Run:
    """The config as written for ``processes`` x ``accumulation`` micro-batches of 1 image,
    scaled to this process group, the noise scale measured or not; no evaluation or checkpoint
    during the timed steps."""
    written = det_scaling.load_cfg(
        str(config),
        [
            "SOLVER.REFERENCE_WORLD_SIZE", str(processes),
            "SOLVER.IMS_PER_BATCH", str(processes * accumulation),
            "SCALING.GRAD_ACCUM_STEPS", str(accumulation),
            "TEST.EVAL_PERIOD", "0",
            "SOLVER.CHECKPOINT_PERIOD", "100000",
            "OUTPUT_DIR", str(output_dir),
            "SCALING.NOISE_SCALE.ENABLED", str(noise_scale),
        ],
    )  # fmt: skip
    return prepare_run(written, comm.get_world_size())


def _worker(config: str, processes: int, accumulation: int, args: dict[str, Any]) -> None:
    """In every process: both trainers, compared; rank 0 writes the result."""
    torch.set_num_threads(args["threads"])
    output = Path(args["output_dir"]) / f"{processes}x{accumulation}"
    log_to(output / "log.txt" if comm.is_main_process() else None)
    steppers = {}
    for name, enabled in (("noise scale on", True), ("noise scale off", False)):
        run = geometry_run(
            Path(config), processes, accumulation, output / name.split()[-1], enabled
        )
        steppers[name] = Stepper(build_trainer(run))
    result = compare(steppers, args["iterations"], args["chunk"], WARMUP)
    measured = steppers["noise scale on"].trainer.gradient_noise.summary()
    if comm.is_main_process():
        result.update(geometry=f"{processes} x {accumulation}", noise_scale=measured)
        (output / "result.json").write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--iterations", type=int, default=40, help="timed iterations each")
    parser.add_argument("--chunk", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--output-dir", type=Path, default=Path("output/noise_scale_cost"))
    args = parser.parse_args()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    print(machine_description(args.threads, default_device()), flush=True)
    start, cpu_start = time.perf_counter(), os.times()
    results = []
    for processes, accumulation in ((1, 2), (2, 1)):
        call = (str(args.config), processes, accumulation, settings)
        if processes == 1:
            log_to(args.output_dir / f"{processes}x{accumulation}" / "log.txt")
            _worker(*call)
        else:
            launch(_worker, processes, dist_url="auto", args=call)
        path = args.output_dir / f"{processes}x{accumulation}" / "result.json"
        result = json.loads(path.read_text())
        results.append(result)
        what = f"{processes} process(es) x {accumulation} micro-batch(es) of 1 image"
        print(f"\n{result['geometry']}:\n{format_comparison(result, what)}", flush=True)
        print(f"measured: {result['noise_scale']}", flush=True)
    end = os.times()
    cpu = (end.user + end.children_user) - (cpu_start.user + cpu_start.children_user)
    record = {
        "config": str(args.config),
        "args": settings,
        "machine": machine_description(args.threads, default_device()),
        "wall_time_s": time.perf_counter() - start,
        "cpu_time_s": cpu,
        "results": results,
    }
    write_results(args.output_dir / "results.json", record, world_size=2)
    print(f"\n{record['wall_time_s']:.0f} s wall, {cpu:.0f} s CPU; {record['machine']}")


if __name__ == "__main__":
    main()

"""Where two runs of the demo's detector part: the same short run in fresh processes under
different CPU settings, and the first iteration at which any loss differs from the first run's.

    python benchmarks/first_divergence.py --json benchmarks/results/first_divergence.json

Each variant trains the demo config (``make demo``'s, on 1 process: 1 image a step) for
``--iterations`` steps from ``SEED`` 0 and records every step's losses and the final weights. The
variants: the same settings twice, the same beside CPU burners, torch's kernels for another CPU
capability (``ATEN_CPU_CAPABILITY``), oneDNN's convolutions for another instruction set
(``ONEDNN_MAX_CPU_ISA``), MKL's conditional numerical reproducibility (``MKL_CBWR``) and 2 threads
instead of 1. A variant that repeats the first run is bit-identical at every step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _environment import write_results  # benchmarks/: the results file

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny.yaml"
# name -> (environment changes, CPU burners beside the run)
VARIANTS: dict[str, tuple[dict[str, str], int]] = {
    "first": ({}, 0),
    "again": ({}, 0),
    "beside 4 CPU burners": ({}, 4),
    "ATEN_CPU_CAPABILITY=default": ({"ATEN_CPU_CAPABILITY": "default"}, 0),
    "ONEDNN_MAX_CPU_ISA=SSE41": ({"ONEDNN_MAX_CPU_ISA": "SSE41"}, 0),
    "MKL_CBWR=COMPATIBLE": ({"MKL_CBWR": "COMPATIBLE"}, 0),
    "2 threads": ({"OMP_NUM_THREADS": "2"}, 0),
    "2 threads again": ({"OMP_NUM_THREADS": "2"}, 0),
}


def train(iterations: int, output: Path) -> dict[str, Any]:
    """In this process: the demo config on 1 process for ``iterations`` steps; every step's
    losses, the final weights' digest and the CPU settings torch used."""
    import hashlib

    import torch

    import det_scaling
    from det_scaling.tasks import build_trainer, prepare_run

    cfg = det_scaling.load_cfg(
        str(CONFIG),
        [
            "SOLVER.REFERENCE_WORLD_SIZE", "0", "SOLVER.IMS_PER_BATCH", "1",
            "SOLVER.BASE_LR", "0.005", "SOLVER.MAX_ITER", str(iterations),
            "SOLVER.STEPS", f"({iterations * 3 // 4},)",
            "SOLVER.WARMUP_ITERS", str(iterations // 4),
            "SOLVER.CHECKPOINT_PERIOD", "100000",
            "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "OUTPUT_DIR", str(output),
        ],
    )  # fmt: skip
    trainer = build_trainer(prepare_run(cfg, 1))
    trainer.train()
    histories = trainer.storage.histories()
    losses = {
        name: [value for value, _ in history.values()]
        for name, history in histories.items()
        if name.startswith("loss_") or name == "total_loss"
    }
    digest = hashlib.sha256()
    for name, tensor in sorted(trainer.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return {
        "losses": losses,
        "weights_sha256": digest.hexdigest(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }


@contextlib.contextmanager
def cpu_burners(count: int) -> Iterator[None]:
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


def run_variant(name: str, iterations: int, folder: Path) -> dict[str, Any]:
    changes, burners = VARIANTS[name]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **changes}
    env["DETECTRON2_DATASETS"] = str(folder / "datasets")
    out = folder / name.replace(" ", "_").replace("=", "_")
    command = [sys.executable, __file__, "--worker", str(out), "--iterations", str(iterations)]
    start = time.perf_counter()
    with cpu_burners(burners):
        done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"variant {name!r} failed:\n{done.stderr[-3000:]}")
    result = json.loads((out / "result.json").read_text())
    return {**result, "seconds": round(time.perf_counter() - start, 1)}


def first_difference(a: dict[str, list[float]], b: dict[str, list[float]]) -> dict | None:
    """The first step at which any loss of ``b`` differs from ``a``'s, with both values."""
    steps = min(len(values) for values in a.values())
    for step in range(steps):
        for name in sorted(a):
            if a[name][step] != b[name][step]:
                return {"step": step, "loss": name, "values": [a[name][step], b[name][step]]}
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        out = Path(args.worker)
        result = train(args.iterations, out)
        (out / "result.json").write_text(json.dumps(result))
        return 0
    variants = ["first", *(name for name in args.variants if name != "first")]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="det_scaling_divergence_") as tmp:
        for name in variants:
            results[name] = run_variant(name, args.iterations, Path(tmp))
    first = results["first"]
    print(
        "| variant | CPU capability | threads | first differing step | loss there | final weights |"
    )
    print("|---|---|---|---|---|---|")
    for name, result in results.items():
        where = first_difference(first["losses"], result["losses"])
        same = result["weights_sha256"] == first["weights_sha256"]
        result["first_difference"] = where
        step = "-" if where is None else str(where["step"])
        values = "-" if where is None else "{loss} {values[0]!r} vs {values[1]!r}".format(**where)
        print(f"| {name} | {result['cpu_capability']} | {result['threads']} | {step} | "
              f"{values} | {'identical' if same else 'differ'} |")  # fmt: skip
    if args.json:
        record = {"iterations": args.iterations, "variants": results}
        write_results(Path(args.json), record, indent=1, world_size=1, seeds=[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Same numbers before and after a change: the tiny detector trained 60 iterations on 1 and on 2
processes, its final weights hashed and its LRs listed.

    python benchmarks/equivalence.py -o before.json            # record
    python benchmarks/equivalence.py --compare before.json     # exit 1 unless bit-identical

Runs ``tools/train.py`` (the public path) with ``OMP_NUM_THREADS=1``; compares, for every
checkpoint of the run (one halfway, the final one), the sha256 of its model tensors, the LRs
in metrics.json and the summary's images seen. Records are
comparable only on the same machine and versions: each run keeps its summary's environment, and
``--compare`` refuses a record whose runs were made in another (or none recorded) unless
``--mixed-environments``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from _environment import write_results  # benchmarks/: the results file

from det_scaling.utils.environment import environment_mismatch

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs/VOC07-Detection/faster_rcnn_synthetic_tiny.yaml"
# 60 steps with a warmup, both LR decays and a checkpoint inside; evaluation off (no test set).
OVERRIDES = [
    "SOLVER.MAX_ITER", "60", "SOLVER.STEPS", "(30, 45)", "SOLVER.WARMUP_ITERS", "10",
    "SOLVER.CHECKPOINT_PERIOD", "30", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()",
]  # fmt: skip


def weights_digest(path: Path) -> str:
    """The sha256 of a checkpoint's model tensors, by name."""
    model = torch.load(path, map_location="cpu", weights_only=False)["model"]
    digest = hashlib.sha256()
    for name in sorted(model):
        digest.update(name.encode())
        digest.update(model[name].detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def run(num_gpus: int, output_dir: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    command = [
        sys.executable, str(ROOT / "tools/train.py"), "--config-file", str(CONFIG),
        "--num-gpus", str(num_gpus), *OVERRIDES, "OUTPUT_DIR", str(output_dir),
    ]  # fmt: skip
    subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    lrs = []
    for line in (output_dir / "metrics.json").read_text().splitlines():
        record = json.loads(line)
        if "lr" in record:
            lrs.append([record["iteration"], record["lr"]])
    summary = json.loads((output_dir / "summary.json").read_text())
    return {
        "checkpoints": {p.name: weights_digest(p) for p in sorted(output_dir.glob("*.pth"))},
        "lrs": lrs,
        "images_seen": summary["images_seen"],
        "environment": summary.get("environment"),
    }


def numbers(record: dict) -> dict:
    """A record without its environments: what must be bit-identical."""
    return {
        n: {key: value for key, value in result.items() if key != "environment"}
        for n, result in record.items()
        if n != "environment"
    }


def environments_differ(expected: dict, record: dict, name: str) -> str | None:
    """One line naming the first process count whose run in ``expected`` (the record ``name``)
    and in ``record`` were made in environments that differ in what changes numbers."""
    for n, result in record.items():
        if n == "environment":
            continue
        runs = {
            f"{name} ({n} process(es))": (expected.get(n) or {}).get("environment"),
            f"this run ({n} process(es))": result.get("environment"),
        }
        mismatch = environment_mismatch(runs)
        if mismatch:
            return mismatch
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", help="write the record here")
    parser.add_argument("--compare", help="a record to compare with: exit 1 unless identical")
    parser.add_argument(
        "--mixed-environments",
        action="store_true",
        help="compare with a record made in another environment (or with none recorded)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        record = {str(n): run(n, Path(tmp) / f"gpus{n}") for n in (1, 2)}
    for n, result in record.items():
        final = result["checkpoints"]["model_final.pth"]
        print(f"{n} process(es): final weights {final[:16]}, "
              f"{len(result['checkpoints'])} checkpoints, {len(result['lrs'])} logged LRs, "
              f"images seen {result['images_seen']}")  # fmt: skip
    if args.output:
        write_results(Path(args.output), record, indent=1)
    if args.compare:
        expected = json.loads(Path(args.compare).read_text())
        mismatch = environments_differ(expected, record, args.compare)
        if mismatch and not args.mixed_environments:
            print(
                f"equivalence: runs from different environments: {mismatch}; pass "
                "--mixed-environments to compare them",
                file=sys.stderr,
            )
            return 2
        same = numbers(expected) == numbers(record)
        print("identical to " + args.compare if same else "DIFFERENT from " + args.compare)
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

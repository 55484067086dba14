"""How long ``import det_scaling`` takes in a fresh interpreter, and how long its first use (the
name that loads torch and detectron2) takes after it; ``import torch`` alone for scale.

    python benchmarks/import_time.py [--repeats 7] [--tree CHECKOUT] [--output JSON]

``--tree`` times another checkout's ``det_scaling`` (a ``git worktree`` of an older commit) with
this environment's packages.

Each figure is the median over fresh interpreters, with the machine's load average beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _environment import write_results

# Each prints the seconds its timed part took.
PROGRAMS = {
    "import det_scaling": "import det_scaling",
    "import det_scaling, then det_scaling.scale_cfg": "import det_scaling\ndet_scaling.scale_cfg",
    "import torch": "import torch",
}


def seconds(code: str, tree: Path) -> float:
    timed = (
        "import time\nstart = time.perf_counter()\n" + code + "\nprint(time.perf_counter() - start)"
    )
    out = subprocess.run(
        [sys.executable, "-c", timed], capture_output=True, text=True, check=True, cwd=tree
    )
    return float(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).parent / "results" / "import_time.json"
    )
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    medians = {}
    for name, code in PROGRAMS.items():
        runs = [seconds(code, args.tree) for _ in range(args.repeats)]
        medians[name] = statistics.median(runs)
        print(f"{name:50s} {medians[name]:7.3f} s  (median of {args.repeats}; min {min(runs):.3f})")
    load = (load_before, os.getloadavg()[0])
    print(f"load average {load[0]:.2f} before, {load[1]:.2f} after")
    write_results(
        args.output,
        {
            "tree": str(args.tree),
            "median_seconds": medians,
            "repeats": args.repeats,
            "load_average": load,
        },
    )


if __name__ == "__main__":
    main()

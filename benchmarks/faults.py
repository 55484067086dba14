"""Faults injected into real torchrun runs, compared with an uninterrupted run.

    python benchmarks/faults.py --seeds 0 1 2 3 4 --faults 4      # 20 faults

Each seed runs the tests' tiny model (``tests/helpers/tiny_run.py``: ``tools/train.py`` with
fault triggers) under ``torchrun --standalone --nproc-per-node 2 --max-restarts K`` with K faults,
one per restart attempt, each of a random kind at a random step of its attempt: SIGKILL of a
worker, SIGKILL of the main process halfway through a checkpoint write, SIGTERM to a worker
(preemption; torchrun then restarts the group, which resumes by itself), or the last checkpoint
truncated before a SIGKILL. It checks the run against one without faults: the images seen, the LR
of every step each attempt ran, and the final checkpoint's schedule state (images seen, iteration,
the LR scheduler's state); and counts the steps each fault cost (begun again after the restart).
A run that does not end within ``--timeout`` is a hang: a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from _environment import write_results  # benchmarks/: the results file

ROOT = Path(__file__).resolve().parent.parent
TINY_RUN = ROOT / "tests" / "helpers" / "tiny_run.py"
KINDS = ("kill", "kill-in-checkpoint", "term", "truncate")
# Written for 1 GPU x 2 images: 96 steps, a checkpoint every 8; on 2 workers, 48 steps of 4
# images and a checkpoint every 4 steps.
MAX_ITER, CHECKPOINT_PERIOD, WORKER_STEPS, WORKER_PERIOD = 96, 8, 48, 4
# The main process writes the checkpoints, so it is the one killed while writing or truncating.
MAIN_ONLY = {"kill-in-checkpoint", "truncate"}


def tiny_setup(
    folder: Path, max_iter: int = MAX_ITER, **solver: object
) -> tuple[Path, dict[str, str]]:
    """The faulty tiny model's config (written for 1 GPU x 2 images) with this benchmark's
    schedule, or with ``max_iter`` and the ``SOLVER`` keys given, and the environment of
    tests/helpers/tiny_run.py."""
    from det_scaling.testing.tiny import write_tiny_run

    default = {"WARMUP_ITERS": 4, "STEPS": (48, 80), "CHECKPOINT_PERIOD": CHECKPOINT_PERIOD}
    config, data = write_tiny_run(
        folder, max_iter=max_iter, meta_architecture="TinyFaultyRegressor", **(solver or default)
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),  # tiny_run.py's helpers
        "TINY_RUN_DATA": str(data),
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }
    return config, env


def torchrun_command(max_restarts: int) -> list[str]:
    """``torchrun`` with 2 workers on this machine, up to ``max_restarts`` restarts."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    return [*command, f"--max-restarts={max_restarts}", "--monitor-interval=0.5"]


def run_logged(
    command: list[str], env: dict[str, str], log: Path, timeout: float
) -> tuple[int | str, float]:
    """Runs ``command`` with its output in ``log``; returns its exit status (``"hang"`` when it
    did not end within ``timeout`` seconds: its whole process tree is then killed) and the wall
    time."""
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            status: int | str = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(process.pid)
            process.wait()
            status = "hang"
    return status, time.perf_counter() - start


def kill_tree(pid: int) -> None:
    """SIGKILL to ``pid`` and every process below it, found before any is killed: workers may
    have left its process group (det-scaling's spawned workers do)."""
    children: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            # The fields after the command name, which may hold spaces: state, ppid, ...
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children[parent].append(int(stat.parent.name))
    tree, pending = [], [pid]
    while pending:
        tree.append(pending.pop())
        pending += children.get(tree[-1], [])
    for member in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


def torchrun(folder: Path, faults: list[str], timeout: float) -> dict:
    """One run with ``faults`` (``RANK:STEP:KIND@ATTEMPT``); its outcome and records."""
    config, env = tiny_setup(folder)
    out, lrs = folder / "out", folder / "lrs.txt"
    env.update(TINY_RUN_FAULT=",".join(faults), TINY_RUN_LRS=str(lrs), TINY_RUN_OUTPUT=str(out))
    command = [*torchrun_command(len(faults)), str(TINY_RUN), "--config-file", str(config)]
    command += ["--dist-timeout", "120"]
    status, seconds = run_logged(command, env, folder / "torchrun.log", timeout)
    record = {"status": status, "seconds": seconds, "steps": {}}
    for line in lrs.read_text().splitlines() if lrs.exists() else []:
        attempt, iteration, lr = line.split()
        record["steps"].setdefault(int(attempt), []).append((int(iteration), float(lr)))
    if status == 0:
        record["summary"] = json.loads((out / "summary.json").read_text())
        final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
        hooks = final["trainer"]["hooks"]
        progress = hooks["ScalingProgress"]
        record["final_state"] = {
            "images_seen": progress["images_seen"],
            "iteration": final["iteration"],
            "scheduler": hooks["LRScheduler"],
        }
    return record


def plan_faults(seed: int, count: int) -> list[tuple[int, int, str]]:
    """(rank, step of its attempt, kind) for attempts 0 .. count - 1."""
    rng = random.Random(seed)
    faults = []
    for _ in range(count):
        kind = rng.choice(KINDS)
        rank = 0 if kind in MAIN_ONLY else rng.randrange(2)
        # A truncated checkpoint needs an older one to fall back to: two periods into the attempt.
        first = 2 * WORKER_PERIOD if kind == "truncate" else 1
        faults.append((rank, rng.randrange(first, first + WORKER_PERIOD + 1), kind))
    return faults


def compare(run: dict, reference: dict, faults: list[tuple[int, int, str]]) -> list[dict]:
    """Per fault: survived (the run ended as the reference, every LR the reference's) and the
    steps begun again after its restart."""
    ok = run["status"] == 0 and run["final_state"] == reference["final_state"]
    ok = ok and run["summary"]["images_seen"] == reference["summary"]["images_seen"]
    expected = dict(reference["steps"][0])
    lrs_match = all(expected.get(i) == lr for steps in run["steps"].values() for i, lr in steps)
    results = []
    for attempt, (_, _, kind) in enumerate(faults):
        before, after = run["steps"].get(attempt, []), run["steps"].get(attempt + 1, [])
        lost = before[-1][0] - after[0][0] + 1 if before and after else None
        results.append({"kind": kind, "survived": ok and lrs_match, "steps_lost": lost})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--faults", type=int, default=4, help="faults per run (one per attempt)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before a hang")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--keep", help="run in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    started = time.perf_counter()
    folder = tempfile.TemporaryDirectory(prefix="det_scaling_faults_")
    with folder if args.keep is None else contextlib.nullcontext(args.keep) as tmp:
        reference = torchrun(Path(tmp) / "reference", [], args.timeout)
        if reference["status"] != 0:
            print(f"the run without faults failed: see {tmp}/reference/torchrun.log")
            return 1
        results = []
        for seed in args.seeds:
            faults = plan_faults(seed, args.faults)
            specs = [f"{rank}:{step}:{kind}@{i}" for i, (rank, step, kind) in enumerate(faults)]
            run = torchrun(Path(tmp) / f"seed{seed}", specs, args.timeout)
            outcome = compare(run, reference, faults)
            print(f"seed {seed}: {', '.join(specs)} -> status {run['status']}, "
                  f"{run['seconds']:.0f} s, steps lost "
                  f"{[o['steps_lost'] for o in outcome]}")  # fmt: skip
            results += [{"seed": seed, **o} for o in outcome]
    by_kind = defaultdict(list)
    for result in results:
        by_kind[result["kind"]].append(result)
    print("\n| fault | injected | survived | steps lost (max, mean) |\n|---|---|---|---|")
    for kind in KINDS:
        rows = by_kind.get(kind, [])
        lost = [r["steps_lost"] for r in rows if r["steps_lost"] is not None]
        spread = f"{max(lost)}, {sum(lost) / len(lost):.2f}" if lost else "-"
        print(f"| {kind} | {len(rows)} | {sum(r['survived'] for r in rows)} | {spread} |")
    survived = sum(r["survived"] for r in results)
    wall = time.perf_counter() - started
    print(f"\nfaults injected {len(results)} / survived {survived} / steps lost "
          f"{sum(r['steps_lost'] or 0 for r in results)} / wall time {wall:.0f} s "
          f"(checkpoint every {WORKER_PERIOD} steps of {WORKER_STEPS})")  # fmt: skip
    if args.json:
        write_results(Path(args.json), {"faults": results}, indent=1, seeds=args.seeds)
    return 0 if survived == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())

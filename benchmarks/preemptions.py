"""Preemptions at random steps in three launch modes: every process of a run should exit with
status 143 after a checkpoint of the step it stopped at.

    python benchmarks/preemptions.py --json benchmarks/results/preemptions.json

Each run trains the tests' tiny model (``tests/helpers/tiny_run.py``: ``tools/train.py`` with
fault triggers), 48 steps of 2 images on 1 process or 24 steps of 4 images on 2, a checkpoint
every 8 or 4 steps, and is sent SIGTERM at a random step (seeded):

* ``single``: ``--num-gpus 1``, SIGTERM to the process;
* ``launcher``: ``--num-gpus 2`` (det-scaling's launcher), SIGTERM to the launcher (which passes
  it on to both workers) or to one worker, chosen at random;
* ``torchrun``: ``torchrun --standalone --nproc-per-node 2 --max-restarts 0``, SIGTERM to one
  worker. torchrun treats a worker's non-zero exit as a failure and exits 1; its error summary
  names each worker's exit code, which should be 143.

A run is clean when its processes exited 143 (torchrun: 1, with every worker it names at 143), no
log says ``terminate called``, ``core dumped`` or ``Aborted`` (an abort; so is a SIGABRT or exit
code -6), and the checkpoint of the step it stopped at exists and is the last one. A run that does
not end within ``--timeout`` is a hang (its process tree is killed). The runs use the code of
the checkout the script is in: to measure another one (a ``git worktree`` of an older commit),
copy this script and ``faults.py`` into its ``benchmarks/`` and run them there.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from _environment import write_results  # benchmarks/: the results file
from _timing import machine_description
from faults import ROOT, TINY_RUN, run_logged, tiny_setup, torchrun_command

MODES = ("single", "launcher", "torchrun")
# Written for 1 GPU x 2 images: 48 steps, a checkpoint every 8 (on 2 processes: 24 steps of 4
# images, a checkpoint every 4).
MAX_ITER, CHECKPOINT_PERIOD = 48, 8
SOLVER = {"WARMUP_ITERS": 4, "STEPS": (24, 40), "CHECKPOINT_PERIOD": CHECKPOINT_PERIOD}
PREEMPTED = re.compile(r"preempted at iteration (\d+), images seen \d+, checkpoint (\S+\.pth)")
ABORT = re.compile(r"terminate called|core dumped|Aborted|SIGABRT|exitcode\s*: -6\b")
# torchrun's error summary: one block per failed worker.
WORKER_EXIT = re.compile(r"rank\s*: (\d+) \(local_rank: \d+\)\s+exitcode\s*: (-?\d+)")
PREEMPTED_STATUS = 143


@dataclass(frozen=True)
class Preemption:
    """One planned run: its mode, which process gets SIGTERM (``process``, ``launcher`` or
    ``worker``), the rank that sends it (to itself, or to its parent: the launcher) and at which
    of its steps."""

    mode: str
    index: int
    target: str
    rank: int
    step: int

    @property
    def fault(self) -> str:
        """The trigger in tiny_run.py's ``TINY_RUN_FAULT`` form."""
        kind = "term-parent" if self.target == "launcher" else "term"
        return f"{self.rank}:{self.step}:{kind}"

    def stops_in_time(self, iteration: int) -> bool:
        """Whether stopping at ``iteration`` follows the signal: a process that signals itself
        stops at that step; a signal that the launcher passes on reaches the workers a few steps
        later when the launcher waits for the CPU (steps of the tiny model take milliseconds)."""
        return iteration >= self.step if self.target == "launcher" else iteration == self.step


def plan(seed: int, runs: dict[str, int]) -> list[Preemption]:
    """``runs[mode]`` preemptions per mode, at random steps, the modes interleaved."""
    rng = random.Random(seed)
    planned: dict[str, list[Preemption]] = {}
    for mode in MODES:
        processes = 1 if mode == "single" else 2
        steps = MAX_ITER // processes
        planned[mode] = []
        for index in range(runs.get(mode, 0)):
            target = {"single": "process", "torchrun": "worker"}.get(mode)
            target = target or rng.choice(("launcher", "worker"))
            rank = rng.randrange(processes)
            # Two steps short of the end: a stop a step later is still before the last.
            step = rng.randrange(1, steps - 2)
            planned[mode].append(Preemption(mode, index, target, rank, step))
    return [run for group in _interleaved(list(planned.values())) for run in group]


def _interleaved(groups: list[list[Preemption]]) -> Iterator[list[Preemption]]:
    for position in range(max(map(len, groups), default=0)):
        yield [group[position] for group in groups if position < len(group)]


def command_for(run: Preemption, config: Path) -> list[str]:
    if run.mode == "torchrun":
        return [*torchrun_command(0), str(TINY_RUN), "--config-file", str(config)]
    processes = "1" if run.mode == "single" else "2"
    command = [sys.executable, str(TINY_RUN), "--config-file", str(config)]
    return [*command, "--num-gpus", processes, "--dist-url", "auto"]


def prepare(run: Preemption, folder: Path) -> tuple[list[str], dict[str, str]]:
    """The command and environment of ``run`` in ``folder``."""
    config, env = tiny_setup(folder, max_iter=MAX_ITER, **SOLVER)
    env["TINY_RUN_FAULT"] = run.fault
    return command_for(run, config), env


def outcome(run: Preemption, status: int | str, logs: str, out: Path) -> dict:
    """What a finished run shows: the exit codes torchrun names, abort lines, the stop step and
    its checkpoint, and the verdict (``clean``, ``abort``, ``hang`` or ``other``, with why)."""
    workers = {int(rank): int(code) for rank, code in WORKER_EXIT.findall(logs)}
    aborts = sorted({line.strip() for line in logs.splitlines() if ABORT.search(line)})
    stop = PREEMPTED.search(logs)
    iteration = int(stop.group(1)) if stop else None
    name = f"model_{iteration:07d}.pth" if stop else None
    pointer = out / "last_checkpoint"
    checkpoint = bool(
        stop
        and (out / name).is_file()
        and pointer.is_file()
        and pointer.read_text().strip() == name
    )
    if run.mode == "torchrun":
        exited = status == 1 and bool(workers) and set(workers.values()) == {PREEMPTED_STATUS}
    else:
        exited = status == PREEMPTED_STATUS
    if status == "hang":
        verdict, why = "hang", "did not end in time"
    elif aborts or status in (-6, 134) or -6 in workers.values():
        verdict, why = "abort", "; ".join(aborts) or f"status {status}, workers {workers}"
    elif not exited:
        verdict, why = "other", f"status {status}, workers {workers}"
    elif not checkpoint:
        verdict, why = "other", f"no checkpoint of the stop step (stopped at {iteration})"
    elif not run.stops_in_time(iteration):
        verdict, why = "other", f"stopped at step {iteration}, signalled at {run.step}"
    else:
        verdict, why = "clean", ""
    return {
        "status": status,
        "worker_exitcodes": workers,
        "exited_143": exited,
        "stop_iteration": iteration,
        "checkpoint": checkpoint,
        "abort_lines": aborts,
        "verdict": verdict,
        "why": why,
    }


def execute(
    run: Preemption, folder: Path, command: list[str], env: dict[str, str], timeout: float
) -> dict:
    """Runs ``run`` in ``folder`` (:func:`prepare` made its command and environment there)."""
    status, seconds = run_logged(command, env, folder / "run.log", timeout)
    out = folder / "out"
    logs = "\n".join(
        path.read_text(errors="replace")
        for path in [folder / "run.log", *sorted(out.glob("log.txt*"))]
        if path.is_file()
    )
    record = {**asdict(run), "fault": run.fault, "seconds": seconds}
    return {**record, **outcome(run, status, logs, out)}


def table(results: list[dict]) -> str:
    """Per mode: runs, exited 143, aborts, hangs, other, checkpoints, wall time."""
    lines = [
        "| mode | runs | exited 143 | aborts | hangs | other | checkpoint of the stop step "
        "| wall s (median, max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        rows = [r for r in results if r["mode"] == mode]
        if not rows:
            continue
        count = {v: sum(r["verdict"] == v for r in rows) for v in ("abort", "hang", "other")}
        seconds = [r["seconds"] for r in rows]
        lines.append(
            f"| {mode} | {len(rows)} | {sum(r['exited_143'] for r in rows)} | {count['abort']} "
            f"| {count['hang']} | {count['other']} | {sum(r['checkpoint'] for r in rows)} "
            f"| {statistics.median(seconds):.0f}, {max(seconds):.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--runs", type=int, nargs=3, default=[12, 24, 24], help="runs per mode: " + " ".join(MODES)
    )
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time")
    parser.add_argument("--timeout", type=float, default=180, help="seconds before a hang")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--keep", help="run in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    runs = plan(args.seed, dict(zip(MODES, args.runs, strict=True)))
    started = time.perf_counter()
    folder = tempfile.TemporaryDirectory(prefix="det_scaling_preemptions_")
    if args.keep is not None:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
    with folder if args.keep is None else contextlib.nullcontext(args.keep) as tmp:
        folders = {run: Path(tmp) / f"{run.mode}{run.index:02d}" for run in runs}
        # Here, not in the pool's threads: tiny_setup imports detectron2.
        prepared = {run: prepare(run, folders[run]) for run in runs}
        machine = machine_description(threads=1, device="cpu")
        print(machine, flush=True)
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            futures = [
                pool.submit(execute, run, folders[run], *prepared[run], args.timeout)
                for run in runs
            ]
            results = []
            for future in futures:
                result = future.result()
                results.append(result)
                print(f"{result['mode']} {result['index']:2d}: SIGTERM to {result['target']} "
                      f"({result['fault']}) -> status {result['status']}, stopped at "
                      f"{result['stop_iteration']}, {result['seconds']:.0f} s, "
                      f"{result['verdict']} {result['why']}", flush=True)  # fmt: skip
    wall = time.perf_counter() - started
    clean = sum(r["verdict"] == "clean" for r in results)
    print(f"\n{table(results)}\n\n{len(results)} preemptions, {clean} clean, wall time "
          f"{wall:.0f} s ({args.parallel} runs at a time; code of {ROOT}); load average at the "
          "end {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))  # fmt: skip
    if args.json:
        report = {"seed": args.seed, "tree": str(ROOT), "machine": machine, "wall_s": wall}
        report["runs"] = results
        write_results(Path(args.json), report, indent=1, seeds=[args.seed])
    return 0 if clean == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())

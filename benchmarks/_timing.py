"""Side-by-side iteration timing shared by the benchmark scripts: two trainers built in one process,
their loops driven by hand in alternating chunks, so that both see the same machine load; and
the machine the figures come from."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import det_scaling  # noqa: F401  (first: the detectron2 compatibility layer)

# isort: split
import detectron2
from detectron2.utils.events import EventStorage
from tabulate import tabulate


class Stepper:
    """Drives a trainer's loop by hand, a few iterations at a time, so that two trainers can
    alternate in one process: what ``TrainerBase.train`` does per iteration (``before_step``,
    ``run_step``, ``after_step``: all hooks included), each with its own ``EventStorage``
    (re-entered around every chunk, as ``train()`` holds it around the loop)."""

    def __init__(self, trainer: Any) -> None:
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


def compare(
    steppers: dict[str, Stepper], iterations: int, chunk: int, warmup: int
) -> dict[str, Any]:
    """Median iteration time of two steppers, alternating chunks of ``chunk`` iterations (ABBA
    order, so neither always runs first after the other) until each has ``iterations`` timed
    ones, after ``warmup`` untimed ones each. ``ratio`` is the first's median over the second's.
    In several processes, call it in every one: they step in lockstep."""
    if len(steppers) != 2:
        raise ValueError(f"compare takes two steppers, got {len(steppers)}")
    for stepper in steppers.values():
        stepper.steps(warmup)
    times: dict[str, list[float]] = {name: [] for name in steppers}
    order = list(steppers)
    while min(len(t) for t in times.values()) < iterations:
        for name in order:
            times[name] += steppers[name].steps(min(chunk, iterations - len(times[name])))
        order.reverse()
    medians = {name: statistics.median(t) for name, t in times.items()}
    quartiles = {name: statistics.quantiles(t, n=4) for name, t in times.items()}
    first, second = steppers
    return {
        "iterations": iterations,
        "chunk": chunk,
        "warmup": warmup,
        "median_s": medians,
        "quartiles_s": {name: [q[0], q[2]] for name, q in quartiles.items()},
        "ratio": medians[first] / medians[second],
        "times_s": times,
    }


def format_comparison(result: dict[str, Any], what: str) -> str:
    """A :func:`compare` result as a small markdown table and the ratio line (``what`` says
    which images an iteration has)."""
    rows = [
        {
            "trainer": name,
            "median iteration (s)": round(result["median_s"][name], 4),
            "25-75% (s)": "-".join(f"{q:.4f}" for q in result["quartiles_s"][name]),
        }
        for name in result["median_s"]
    ]
    first, second = result["median_s"]
    return (
        f"{tabulate(rows, headers='keys', tablefmt='github')}\n\n"
        f"ratio {first} / {second}: {result['ratio']:.3f} (median of {result['iterations']} "
        f"iterations each, {what}, chunks of {result['chunk']} alternating, after "
        f"{result['warmup']} untimed)"
    )


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

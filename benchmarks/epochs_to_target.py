"""Epochs to a target at 2x, 4x and 8x the reference batch, measured against `advise`'s prediction.

Shallue et al. (2019)'s protocol on one task: for each batch, full schedules at budgets around the
predicted epochs (0.75x, 1x, 1.33x), the LR steps at the same fractions of each budget and the
warmup at the reference's epochs; the target is the reference's mean final metric minus 1 (AP50
for the detector, top-1 for digits); a batch's epochs-to-target is the smallest budget whose mean
over seeds reaches it, interpolated between the budgets around the crossing. Then
``fit_critical_batch`` on the measured points, beside the prediction's B_crit.

Every run is the task's config scaled by ``plan_scaling`` to m times the reference's GPUs (linear
rule), its schedule written in epochs, trained by ``python -m det_scaling train --num-gpus 1``
with ``SCALING.KEEP_REFERENCE_BATCH`` (one process accumulates the m GPUs' micro-batches), two
runs at a time. Controls: the reference at the longest budget used, and AdaScale at 4x and 8x
with linear at AdaScale's measured epochs (equal budget).

Verdicts compare each row with the reference, paired by seed: it holds when the 90% interval of
the paired difference lies above -1, breaks when it lies below, and is undecided otherwise.

    python benchmarks/epochs_to_target.py --task digits [--run] [--jobs 2]

Without ``--run`` it prints the table from the results file; with it, it trains the runs the
file lacks first. Results: ``benchmarks/results/epochs_to_target_<task>.json`` (every run's
result, keyed by the hash of its config: a later sitting trains only what is missing).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _environment import write_results  # benchmarks/: the results file
from tabulate import tabulate

import det_scaling  # first: installs the detectron2 compatibility layer

# isort: split
from detectron2.config import CfgNode

from det_scaling.config import read_recipe
from det_scaling.scaling.batch_schedule import schedule_in_epochs
from det_scaling.scaling.critical_batch import fit_critical_batch

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
BUDGETS = (0.75, 1.0, 4 / 3)
# A batch whose smallest budget already reaches the target gets one 0.75x below it (one 4/3x
# above its largest when none does), up to this many times: the crossing must be bracketed.
EXTENSIONS = 3
MARGIN = 1.0  # the target: the reference's mean final metric minus this
Z_LEVEL = 0.90


@dataclass(frozen=True)
class Task:
    config: str
    metric: str
    multiples: tuple[int, ...]  # batch multiples of the reference's
    seeds: dict[int, tuple[int, ...]]  # multiple -> seeds (1: the reference)
    adascale: tuple[int, ...]  # multiples with the AdaScale control


TASKS = {
    "digits": Task(
        "configs/ImageNet-Classification/resnet18_digits_sweep.yaml",
        "classification/top1",
        (2, 4, 8),
        {1: (0, 1, 2, 3, 4), 2: (0, 1, 2), 4: (0, 1, 2), 8: (0, 1, 2, 3, 4)},
        (4, 8),
    ),
    "detector": Task(
        "configs/VOC07-Detection/faster_rcnn_synthetic_tiny_long.yaml",
        "bbox/AP50",
        (2, 4, 8),
        {1: (0, 1, 2, 3, 4), 2: (0, 1, 2), 4: (0, 1, 2), 8: (0, 1, 2, 3, 4)},
        (4, 8),
    ),
}


@dataclass(frozen=True)
class Run:
    """One training run: ``multiple`` x the reference batch, ``epochs`` long, by ``rule``."""

    multiple: int
    epochs: float
    rule: str  # "linear" or "adascale"
    seed: int

    @property
    def key(self) -> str:
        return f"x{self.multiple}_{self.rule}_{self.epochs:.3f}ep/seed{self.seed}"

    @classmethod
    def from_key(cls, key: str) -> Run:
        head, seed = key.split("/seed")
        multiple, rule, epochs = head.split("_")
        return cls(int(multiple[1:]), float(epochs.removesuffix("ep")), rule, int(seed))


def metrics_by_row(record: dict[str, Any]) -> dict[tuple[int, str, float], dict[int, float]]:
    """(multiple, rule, epochs) -> seed -> final metric, of the finished runs in ``record``."""
    rows: dict[tuple[int, str, float], dict[int, float]] = {}
    for key, result in record.get("runs", {}).items():
        run = Run.from_key(key)
        rows.setdefault((run.multiple, run.rule, run.epochs), {})[run.seed] = result["metric"]
    return rows


def reference_target(predictions: dict[str, Any], rows: dict) -> float | None:
    """The reference's mean final metric minus the margin; None before it has a run."""
    reference = rows.get((1, "linear", round(predictions["reference_epochs"], 3)))
    return statistics.mean(reference.values()) - MARGIN if reference else None


def bracket_extensions(task: Task, grid: list[Run], rows: dict, target: float) -> list[Run]:
    """The budgets beyond ``grid`` that bracket each batch's crossing of ``target``: those run so
    far (every seed), and one more below the smallest budget when its mean reaches the target, or
    above the largest when none does (up to ``EXTENSIONS`` each way)."""
    extra = []
    for multiple in (1, *task.multiples):
        seeds = task.seeds[multiple]
        planned = {r.epochs for r in grid if r.multiple == multiple and r.rule == "linear"}
        run = {e for m, rule, e in rows if m == multiple and rule == "linear"}
        budgets = sorted(planned | run)
        extra += [Run(multiple, e, "linear", s) for e in budgets if e not in planned for s in seeds]
        means = {
            e: statistics.mean(rows[(multiple, "linear", e)].values())
            for e in budgets
            if len(rows.get((multiple, "linear", e), {})) >= len(seeds)
        }
        lower = sum(e < min(planned) for e in budgets)
        upper = sum(e > max(planned) for e in budgets)
        if means.get(budgets[0], -math.inf) >= target and lower < EXTENSIONS:
            epochs = round(budgets[0] * BUDGETS[0], 3)  # the crossing lies below every budget
        elif len(means) == len(budgets) and max(means.values()) < target and upper < EXTENSIONS:
            epochs = round(budgets[-1] * BUDGETS[-1], 3)  # above every budget
        else:
            continue
        extra += [Run(multiple, epochs, "linear", s) for s in seeds]
    return extra


def run_cfg(base: CfgNode, run: Run, output: Path) -> CfgNode:
    """``base`` (as written) at ``run.multiple`` times its GPUs, ``run.epochs`` long: LR steps at
    the reference's fractions of the run, the warmup at its epochs, evaluated at the end only."""
    cfg = base.clone()
    cfg.defrost()
    length, steps, warmup = schedule_in_epochs(read_recipe(cfg))
    written = cfg.SCALING.EPOCHS
    written.MAX = float(run.epochs)
    written.STEPS = tuple(step / length * run.epochs for step in steps)
    written.WARMUP = float(warmup)
    written.CHECKPOINT_PERIOD = 2.0 * run.epochs  # model_final only
    written.EVAL_PERIOD = 0.0
    cfg.SEED = run.seed
    cfg.OUTPUT_DIR = str(output / run.key)
    gpus = (cfg.SOLVER.REFERENCE_WORLD_SIZE or 1) * run.multiple
    return det_scaling.plan_scaling(cfg, gpus, rule=run.rule).cfg


def config_sha256(cfg: CfgNode) -> str:
    return hashlib.sha256(cfg.dump().encode()).hexdigest()


def train(cfg: CfgNode, metric: str) -> dict[str, Any]:
    """Trains ``cfg`` on one process (accumulating its GPUs' micro-batches) in a process of its
    own; the run's final ``metric``, epochs and time."""
    output = Path(cfg.OUTPUT_DIR)
    output.mkdir(parents=True, exist_ok=True)
    (output / "run.yaml").write_text(cfg.dump())
    command = [sys.executable, "-m", "det_scaling", "train", "--config-file", "run.yaml"]
    command += ["--num-gpus", "1", "SCALING.KEEP_REFERENCE_BATCH", "True"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with open(output / "stdout.txt", "w") as log:
        done = subprocess.run(command, cwd=output, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"{output}: training exited {done.returncode} (see stdout.txt)")
    summary = json.loads((output / "summary.json").read_text())
    return {
        "metric": summary["metrics"][metric],
        "epochs": summary["epochs_seen"],
        "steps": summary["iterations_done"],
        "train_time_s": summary["train_time_s"],
        "adascale_epochs": summary["epochs_seen"] if cfg.SCALING.RULE == "adascale" else None,
    }


def planned_runs(task: Task, predictions: dict[str, Any], record: dict[str, Any]) -> list[Run]:
    """The budgets around each prediction, those that bracket each batch's crossing of the target
    (once the runs around it are in ``record``), then the controls: the reference at the longest
    budget, AdaScale, and linear at AdaScale's measured epochs (once those are)."""
    reference_epochs = round(predictions["reference_epochs"], 3)
    # The reference below its length too: its own epochs to the target.
    runs = [
        Run(1, round(reference_epochs * b, 3), "linear", s)
        for b in BUDGETS[:2]
        for s in task.seeds[1]
    ]
    for multiple in task.multiples:
        predicted = predictions["multiples"][str(multiple)]["epochs"]
        for budget in BUDGETS:
            epochs = round(predicted * budget, 3)
            runs += [Run(multiple, epochs, "linear", s) for s in task.seeds[multiple]]
    # The grid's longest budget: the reference's control, fixed whatever the extensions add.
    longest = max(run.epochs for run in runs)  # does the reference gain too?
    rows = metrics_by_row(record)
    target = reference_target(predictions, rows)
    if target is not None:
        runs += bracket_extensions(task, runs, rows, target)
    # The controls last: they answer questions of their own, and cost the most.
    runs += [Run(1, longest, "linear", s) for s in task.seeds[1]]
    for multiple in task.adascale:
        seeds = task.seeds[multiple]
        runs += [Run(multiple, reference_epochs, "adascale", s) for s in seeds]
        equal = adascale_epochs(record, multiple, len(seeds))
        if equal is not None:
            runs += [Run(multiple, equal, "linear", s) for s in seeds]
    return list(dict.fromkeys(runs))


def adascale_epochs(record: dict[str, Any], multiple: int, seeds: int) -> float | None:
    """The mean epochs AdaScale's runs at ``multiple`` took, once all ``seeds`` have: the budget of
    the linear runs it is compared with."""
    measured = [
        result["epochs"]
        for key, result in record.get("runs", {}).items()
        if key.startswith(f"x{multiple}_adascale_")
    ]
    return round(statistics.mean(measured), 3) if len(measured) == seeds else None


def equal_budget(task: Task, record: dict[str, Any], by_run: dict) -> list[dict[str, Any]]:
    """AdaScale against linear at AdaScale's mean epochs, paired by seed, per batch."""
    rows = []
    for multiple in task.adascale:
        epochs = adascale_epochs(record, multiple, len(task.seeds[multiple]))
        if epochs is None:
            continue
        adascale = next(
            v for (m, rule, _), v in by_run.items() if (m, rule) == (multiple, "adascale")
        )
        linear = by_run.get((multiple, "linear", epochs), {})
        rows.append(
            {
                "multiple": multiple,
                "epochs": epochs,
                "adascale": statistics.mean(adascale.values()),
                "linear": statistics.mean(linear.values()) if linear else None,
                "seeds": len(linear),
                "adascale - linear": paired_interval(
                    [adascale[s] - linear[s] for s in adascale if s in linear]
                ),
            }
        )
    return rows


def paired_interval(differences: list[float]) -> tuple[float, float, float] | None:
    """Mean and 90% t-interval of paired differences; None with fewer than two."""
    if len(differences) < 2:
        return None
    from scipy.stats import t as student_t

    mean = statistics.mean(differences)
    half = (
        student_t.ppf(0.5 + Z_LEVEL / 2, len(differences) - 1)
        * statistics.stdev(differences)
        / math.sqrt(len(differences))
    )
    return mean, mean - half, mean + half


def verdict(interval: tuple[float, float, float] | None) -> str:
    if interval is None:
        return "too few seeds"
    _, low, high = interval
    if low > -MARGIN:
        return "holds"
    return "breaks" if high < -MARGIN else "undecided"


def epochs_to_target(budgets: dict[float, float], target: float) -> tuple[float | None, str]:
    """The smallest budget whose mean reaches ``target``, interpolated with the budget below it;
    with how it was found ("interpolated", "at most": the smallest budget already reaches it,
    "more than": none does, and the largest is returned)."""
    points = sorted(budgets.items())
    for index, (epochs, value) in enumerate(points):
        if value >= target:
            if index == 0:
                return epochs, "at most"
            low_epochs, low_value = points[index - 1]
            share = (target - low_value) / (value - low_value)
            return low_epochs + share * (epochs - low_epochs), "interpolated"
    return (points[-1][0] if points else None), "more than"


def analyse(task: Task, predictions: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The tables: each row's mean and paired verdict, each batch's epochs to target against the
    prediction, the critical batch fitted to them."""
    by_run = metrics_by_row(record)
    reference_epochs = round(predictions["reference_epochs"], 3)
    reference = by_run.get((1, "linear", reference_epochs), {})
    target = reference_target(predictions, by_run)
    if target is None:
        return {"rows": [], "batches": []}
    rows = []
    for (multiple, rule, epochs), values in sorted(by_run.items()):
        paired = [values[s] - reference[s] for s in values if s in reference]
        interval = paired_interval(paired)
        rows.append(
            {
                "multiple": multiple,
                "rule": rule,
                "epochs": epochs,
                "seeds": len(values),
                "mean": statistics.mean(values.values()),
                "vs reference": interval,
                "verdict": "reference"
                if (multiple, epochs) == (1, reference_epochs)
                else verdict(interval),
            }
        )
    batches: list[dict[str, Any]] = []
    reference_crossing = None
    for multiple in (1, *task.multiples):
        budgets = {
            row["epochs"]: row["mean"]
            for row in rows
            if row["multiple"] == multiple and row["rule"] == "linear"
        }
        measured, how = epochs_to_target(budgets, target)
        predicted = (
            reference_epochs if multiple == 1 else predictions["multiples"][str(multiple)]["epochs"]
        )
        crossed = how == "interpolated"
        if multiple == 1:
            reference_crossing = measured if crossed else None
        batches.append(
            {
                "multiple": multiple,
                "batch": predictions["reference_batch"] * multiple,
                "predicted": predicted,
                "measured": measured,
                "how": how,
                "crossed": crossed,
                # Against the bound itself for "at most" and "more than": a bound on the error.
                "error": None if measured is None else predicted / measured - 1,
                # The law predicts a ratio to the reference's epochs: measured, both crossings.
                "predicted_factor": predicted / reference_epochs,
                "measured_factor": measured / reference_crossing
                if crossed and reference_crossing
                else None,
            }
        )
    # A bound ("at most", "more than") is no point of the curve: only crossings are fitted.
    fitted = [(b["batch"], b["measured"]) for b in batches if b["crossed"]]
    fit = None
    if len({batch for batch, _ in fitted}) >= 2:
        try:
            result = fit_critical_batch(*zip(*fitted, strict=True))
            fit = {
                "e_min": result.e_min,
                "b_crit": result.b_crit,
                "interval": result.b_crit_interval,
            }
        except det_scaling.errors.ConfigError as error:
            fit = {"error": str(error)}
    return {
        "target": target,
        "rows": rows,
        "batches": batches,
        "fit": fit,
        "equal_budget": equal_budget(task, record, by_run),
    }


def print_tables(analysis: dict[str, Any], metric: str) -> None:
    if not analysis["rows"]:
        print("no reference runs yet")
        return
    print(f"target: {analysis['target']:.2f} {metric} (the reference's mean minus {MARGIN:g})")
    table = []
    for row in analysis["rows"]:
        shown = _interval(row["vs reference"])
        table.append(
            [
                row["multiple"],
                row["rule"],
                row["epochs"],
                row["seeds"],
                f"{row['mean']:.2f}",
                shown,
                row["verdict"],
            ]
        )
    print(
        tabulate(
            table,
            headers=["x batch", "rule", "epochs", "seeds", "mean", "paired diff, 90%", "verdict"],
            tablefmt="github",
        )
    )
    batches = [
        [
            b["multiple"],
            b["batch"],
            f"{b['predicted']:.2f}",
            _measured(b),
            _error(b),
            f"{b['predicted_factor']:.2f}",
            "" if b.get("measured_factor") is None else f"{b['measured_factor']:.2f}",
        ]
        for b in analysis["batches"]
    ]
    headers = ["x batch", "batch", "predicted", "measured", "error", "x ref, predicted", "measured"]
    print(tabulate(batches, headers=headers, tablefmt="github"))
    print(f"fit of the measured points: {analysis['fit']}")
    equal = [
        [
            row["multiple"],
            f"{row['epochs']:.2f}",
            f"{row['adascale']:.2f}",
            "" if row["linear"] is None else f"{row['linear']:.2f}",
            row["seeds"],
            _interval(row["adascale - linear"]),
        ]
        for row in analysis.get("equal_budget", [])
    ]
    if equal:
        headers = ["x batch", "epochs", "AdaScale", "linear", "pairs", "AdaScale - linear, 90%"]
        print(tabulate(equal, headers=headers, tablefmt="github"))


def _interval(interval: tuple[float, float, float] | None) -> str:
    return (
        "" if interval is None else f"{interval[0]:+.2f} [{interval[1]:+.2f}, {interval[2]:+.2f}]"
    )


def _measured(batch: dict[str, Any]) -> str:
    if batch["measured"] is None:
        return ""
    shown = f"{batch['measured']:.2f}"
    return shown if batch["how"] == "interpolated" else f"{batch['how']} {shown}"


def _error(batch: dict[str, Any]) -> str:
    """The prediction's error; a bound when the measured epochs are one (at most E: the error is
    at least the one against E; more than E: below it)."""
    if batch["error"] is None:
        return ""
    bound = {"interpolated": "", "at most": ">= ", "more than": "< "}[batch["how"]]
    return f"{bound}{100 * batch['error']:+.0f}%"


def train_missing(
    task: Task,
    predictions: dict[str, Any],
    record: dict[str, Any],
    base: CfgNode,
    output: Path,
    jobs: int,
    path: Path,
) -> None:
    """Trains the planned runs ``record`` lacks, ``jobs`` at a time, writing ``path`` after each;
    again while AdaScale's measured epochs add equal-budget runs."""
    start, lock = time.perf_counter(), threading.Lock()

    def one(item: tuple[Run, CfgNode]) -> None:
        run, cfg = item
        result = train(cfg, task.metric)
        with lock:  # the results file holds every finished run, for a later sitting
            record["runs"][run.key] = {**result, "config_sha256": config_sha256(cfg)}
            write_results(path, {**record, "task": record.get("task"), "config": task.config})
            print(
                f"  {run.key}: {task.metric} {result['metric']:.2f}, "
                f"{result['epochs']:.2f} epochs, {result['train_time_s']:.0f} s "
                f"({time.perf_counter() - start:.0f} s in)",
                flush=True,
            )

    while True:
        todo = []
        for run in planned_runs(task, predictions, record):
            cfg = run_cfg(base, run, output)
            stored = record["runs"].get(run.key)
            if stored is None or stored.get("config_sha256") != config_sha256(cfg):
                todo.append((run, cfg))
        if not todo:
            return
        print(f"{len(todo)} runs to train, {jobs} at a time", flush=True)
        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(one, todo))


def predictions_from(advice: dict[str, Any], task: Task) -> dict[str, Any]:
    """The pre-registered predictions: `advise`'s epochs (and band) at each batch multiple."""
    reference_batch, rows = advice["reference_batch"], advice["rows"]
    by_batch = {row["total_batch"]: row for row in rows}
    missing = [m for m in task.multiples if reference_batch * m not in by_batch]
    if missing:
        raise SystemExit(f"the advice has no row at {missing} x the reference batch")
    return {
        "reference_batch": reference_batch,
        "reference_epochs": advice["reference_epochs"],
        "dataset_size": round(
            advice["reference_iterations"] * reference_batch / advice["reference_epochs"]
        ),
        "b_crit": advice["critical_batch"]["value"],
        "b_crit_interval": advice["critical_batch"]["interval"],
        "b_crit_source": advice["critical_batch"]["source"],
        "multiples": {
            str(m): {
                "batch": reference_batch * m,
                "epochs": by_batch[reference_batch * m]["epochs"],
                "band": [
                    advice["reference_epochs"] * f if f is not None else None
                    for f in by_batch[reference_batch * m]["factor_band"]
                ],
                "rule": by_batch[reference_batch * m]["rule"],
            }
            for m in task.multiples
        },
        "advice": advice,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument(
        "--predict-from",
        type=Path,
        metavar="ADVICE_JSON",
        help="write the predictions file from `advise --json` of the task's config, then stop",
    )
    parser.add_argument("--run", action="store_true", help="train the runs the results lack")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    parser.add_argument("--output", type=Path, default=REPO / "output" / "epochs_to_target")
    args = parser.parse_args()
    task = TASKS[args.task]
    predicted = RESULTS / f"predictions_{args.task}.json"
    if args.predict_from:
        record = predictions_from(json.loads(args.predict_from.read_text()), task)
        write_results(predicted, {"task": args.task, "config": task.config, **record})
        print(f"wrote {predicted}")
        return
    predictions = json.loads(predicted.read_text())
    path = RESULTS / f"epochs_to_target_{args.task}.json"
    record = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    record["task"] = args.task
    base = det_scaling.load_cfg(str(REPO / task.config))
    base.SCALING.DATASET_SIZE = predictions["dataset_size"]
    if args.run:
        train_missing(task, predictions, record, base, args.output / args.task, args.jobs, path)
    analysis = analyse(task, predictions, record)
    print_tables(analysis, task.metric)
    write_results(path, {**record, "task": args.task, "config": task.config, "analysis": analysis})


if __name__ == "__main__":
    main()

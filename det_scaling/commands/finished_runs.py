"""What ``advise --from-runs`` reads from finished runs: each run's batch, data set size and
evaluation curve in epochs, the epochs it took to reach a target, and the critical batch fitted
to those epochs (:func:`~det_scaling.scaling.critical_batch.fit_critical_batch`).

A run's output directory holds, from ``train``:

* ``summary.json`` (written at the end): ``ims_per_batch`` (images per optimizer step, all
  processes), ``iterations_done``, ``images_seen``, ``epochs_seen`` (None when the data set size
  was unknown) and ``batch_stages`` (more than one: the batch grew, AdaBatch);
* ``metrics.json``, detectron2's JSON lines: one per iteration written, ``{"iteration": i, ...}``
  with the scalars put at that iteration, evaluation results among them (``bbox/AP50``,
  ``classification/top1``). An evaluation during training is put after step ``i`` (i + 1 steps
  done); the final one after the loop, at ``i = iterations_done``. Training lines also hold
  ``images_seen``; an evaluation written between two writes has a line of its own without it.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from det_scaling.commands.run_plot import metrics_lines
from det_scaling.errors import ConfigError
from det_scaling.scaling.critical_batch import CriticalBatchFit, fit_critical_batch

__all__ = [
    "CLASSIFICATION_METRIC",
    "DETECTION_METRIC",
    "FinishedRun",
    "RunsFit",
    "epochs_to_target",
    "fit_from_runs",
    "read_finished_run",
]

DETECTION_METRIC = "bbox/AP50"
CLASSIFICATION_METRIC = "classification/top1"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class FinishedRun:
    """One finished run: its total batch per step, training set size in images, and its
    evaluations of ``metric`` as (epochs, value) points in increasing epochs."""

    output_dir: Path
    batch: int
    dataset_size: int
    metric: str
    curve: tuple[tuple[float, float], ...]
    batch_grows: bool  # AdaBatch: ``batch`` is the starting batch only

    @property
    def final_value(self) -> float:
        """The metric at the last evaluation."""
        return self.curve[-1][1]


class RunsFit(NamedTuple):
    """What :func:`fit_from_runs` found: the target, the (batch, mean epochs-to-target) points
    fitted, the fit, and the runs left out because they never reached the target."""

    target: float
    points: list[tuple[float, float]]
    fit: CriticalBatchFit
    unreached: list[FinishedRun]


def read_finished_run(
    output_dir: str | Path, metric: str | None = None, *, dataset_size: int | None = None
) -> FinishedRun:
    """The run whose ``train`` output is ``output_dir``. ``metric``: the evaluation to read;
    None: ``bbox/AP50``, else ``classification/top1``, whichever metrics.json has.
    ``dataset_size`` (images) serves a run whose summary has no ``epochs_seen``."""
    output_dir = Path(output_dir)
    summary = _read_summary(output_dir)
    size = _dataset_size(output_dir, summary, dataset_size)
    rows = _read_metrics(output_dir)
    metric = metric or _default_metric(output_dir, rows, summary)
    images_at = _images_at_steps(summary)
    done = int(summary["iterations_done"])
    by_steps: dict[int, tuple[float, float]] = {}
    for row in rows:
        value = row.get(metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):  # a NaN AP: nothing of the kind was detected
            continue
        iteration = int(row["iteration"])
        steps = iteration if iteration >= done else iteration + 1
        images = row.get("images_seen", images_at(steps))
        # A resumed run writes its steps again: the later line is the one of the weights kept.
        by_steps[steps] = (images / size, float(value))
    if not by_steps:
        raise ConfigError(
            f"{output_dir / METRICS_FILE}: no evaluation of {metric!r}; {_available(summary)}"
        )
    return FinishedRun(
        output_dir=output_dir,
        batch=int(summary["ims_per_batch"]),
        dataset_size=size,
        metric=metric,
        curve=tuple(sorted(by_steps.values())),
        batch_grows=len(summary.get("batch_stages") or ()) > 1,
    )


def epochs_to_target(curve: Sequence[tuple[float, float]], target: float) -> float | None:
    """The first epochs at which ``curve`` ((epochs, value) points in increasing epochs) reaches
    ``target``, linear between the evaluations either side of the crossing (the first
    evaluation's epochs if it is already there); None when no evaluation reaches it."""
    previous = None
    for epochs, value in curve:
        if value >= target:
            if previous is None:
                return float(epochs)
            before_epochs, before_value = previous
            share = (target - before_value) / (value - before_value)
            return float(before_epochs + share * (epochs - before_epochs))
        previous = (epochs, value)
    return None


def fit_from_runs(
    runs: Sequence[FinishedRun], reference: float | None = None, margin: float = 1.0
) -> RunsFit:
    """Fits the critical batch to the epochs ``runs`` took to reach a target: the mean final
    value of the runs at batch ``reference`` (None: the smallest batch) minus ``margin``. Runs at
    one batch (seeds) give that batch their mean epochs-to-target; runs that never reach the
    target are left out, and returned."""
    if not runs:
        raise ConfigError("runs: give finished runs at two or more batch sizes")
    if not (margin >= 0 and math.isfinite(margin)):
        raise ConfigError(f"margin must be a number >= 0, got {margin!r}")
    first = runs[0]
    for run in runs:
        if run.batch_grows:
            raise ConfigError(
                f"{run.output_dir}: its batch grows during training (AdaBatch), so its epochs "
                "belong to no one batch size; leave it out"
            )
        if run.metric != first.metric:
            raise ConfigError(
                f"{run.output_dir} is read by {run.metric!r} but {first.output_dir} by "
                f"{first.metric!r}: read all runs by one metric"
            )
        if run.dataset_size != first.dataset_size:
            raise ConfigError(
                f"{run.output_dir} trained on {run.dataset_size} images but {first.output_dir} "
                f"on {first.dataset_size}: compare runs on one training set"
            )
    batches = sorted({run.batch for run in runs})
    reference = batches[0] if reference is None else reference
    reference_runs = [run for run in runs if run.batch == reference]
    if not reference_runs:
        raise ConfigError(
            f"reference: no run at batch {reference:g}; the runs' batches are "
            f"{', '.join(map(str, batches))}"
        )
    target = sum(run.final_value for run in reference_runs) / len(reference_runs) - margin
    reached: dict[int, list[float]] = defaultdict(list)
    unreached = []
    for run in runs:
        epochs = epochs_to_target(run.curve, target)
        if epochs is None:
            unreached.append(run)
        else:
            reached[run.batch].append(epochs)
    if len(reached) < 2:
        raise ConfigError(
            f"runs at {len(reached)} batch size(s) reach the target {first.metric} {target:g} "
            f"(reference {reference:g}'s final {target + margin:g} minus margin {margin:g}); "
            f"{len(unreached)} run(s) never do: a larger margin, or runs trained longer, are needed"
        )
    points = [(float(batch), sum(e) / len(e)) for batch, e in sorted(reached.items())]
    fit = fit_critical_batch([b for b, _ in points], [e for _, e in points])
    return RunsFit(target, points, fit, unreached)


def _read_summary(output_dir: Path) -> dict[str, Any]:
    path = output_dir / SUMMARY_FILE
    if not path.is_file():
        raise ConfigError(
            f"{output_dir}: no {SUMMARY_FILE}; give the output directory of a finished run "
            "(train writes it when training ends)"
        )
    try:
        summary = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: not a run's summary ({error})") from None
    keys = ("ims_per_batch", "iterations_done", "images_seen")
    if not isinstance(summary, dict) or any(key not in summary for key in keys):
        raise ConfigError(f"{path}: not a run's summary (it needs {', '.join(keys)})")
    return summary


def _dataset_size(output_dir: Path, summary: dict[str, Any], given: int | None) -> int:
    """The training set's size: images seen over epochs seen, or ``given``."""
    epochs = summary.get("epochs_seen")
    if epochs:
        return round(summary["images_seen"] / epochs)
    if given is not None:
        if not (isinstance(given, int) and given > 0):
            raise ConfigError(f"dataset_size must be a positive number of images, got {given!r}")
        return given
    raise ConfigError(
        f"{output_dir / SUMMARY_FILE}: no dataset size (epochs_seen is null: the run's "
        "SCALING.DATASET_SIZE was 0); give the training set's size in images"
    )


def _read_metrics(output_dir: Path) -> list[dict[str, Any]]:
    path = output_dir / METRICS_FILE
    if not path.is_file():
        raise ConfigError(f"{output_dir}: no {METRICS_FILE}, so no evaluation to read")
    return metrics_lines(path)


def _default_metric(output_dir: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    for metric in (DETECTION_METRIC, CLASSIFICATION_METRIC):
        if any(metric in row for row in rows):
            return metric
    raise ConfigError(
        f"{output_dir / METRICS_FILE}: no evaluation of {DETECTION_METRIC} or "
        f"{CLASSIFICATION_METRIC} (the run evaluates with DATASETS.TEST and TEST.EVAL_PERIOD); "
        f"{_available(summary)}"
    )


def _available(summary: dict[str, Any]) -> str:
    """The metrics the run's last evaluation had, to name one instead."""
    names = sorted(summary.get("metrics") or {})
    if not names:
        return "the run's summary has no evaluation either"
    return f"name one of the run's metrics: {', '.join(names)}"


def _images_at_steps(summary: dict[str, Any]) -> Callable[[int], int]:
    """Images seen after a number of steps, by the run's batch stages, placed so that the last
    step gives the summary's ``images_seen`` (a resume from another geometry shifts them)."""
    stages = summary.get("batch_stages") or [
        {
            "start_iter": 0,
            "num_iters": 0,
            "start_images": 0,
            "ims_per_batch": summary["ims_per_batch"],
        }
    ]

    def schedule(steps: int) -> int:
        stage = stages[-1]
        for candidate in stages:
            if steps < candidate["start_iter"] + candidate["num_iters"]:
                stage = candidate
                break
        return stage["start_images"] + (steps - stage["start_iter"]) * stage["ims_per_batch"]

    offset = summary["images_seen"] - schedule(int(summary["iterations_done"]))
    return lambda steps: schedule(steps) + offset

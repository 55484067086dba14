"""The LR a run trained with, from its ``metrics.json`` (what ``lr-plot --metrics`` draws): against
iterations, against AdaScale's progress (steps of the reference batch) or the images seen, and
AdaScale's gain ratio r, the factor each step put on the schedule's LR.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from det_scaling.commands.lr_plot import finish_lr_figure
from det_scaling.errors import ConfigError

__all__ = ["RunMetrics", "metrics_lines", "plot_run_metrics", "read_run_metrics"]


@dataclass
class RunMetrics:
    """The scalars of one run at each iteration written (detectron2 writes every 20 by default)."""

    name: str
    iterations: list[int]
    lrs: list[float]
    images: list[float | None]
    progress: list[float | None]  # AdaScale's tau after the step; None: not an AdaScale run
    gains: list[float | None]

    @property
    def adascale(self) -> bool:
        return any(value is not None for value in self.gains)


def metrics_lines(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a metrics.json (detectron2's ``JSONWriter`` output) that have an iteration, in
    file order; ``ConfigError`` naming the line that is not JSON."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; give a run's metrics.json") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}:{number}: not a metrics.json line ({error})") from None
        if isinstance(row, dict) and isinstance(row.get("iteration"), int):
            rows.append(row)
    return rows


def read_run_metrics(path: str | Path, name: str | None = None) -> RunMetrics:
    """The lines of ``path`` (detectron2's ``JSONWriter`` output) that have an LR; a resumed run's
    later lines replace the earlier ones of the same iteration. ``ConfigError`` when none has."""
    path = Path(path)
    by_iteration = {row["iteration"]: row for row in metrics_lines(path) if "lr" in row}
    if not by_iteration:
        raise ConfigError(f"{path}: no line with an 'lr' (is it a detectron2 metrics.json?)")
    rows = [by_iteration[i] for i in sorted(by_iteration)]
    return RunMetrics(
        name=name or str(path.parent.name or path),
        iterations=sorted(by_iteration),
        lrs=[row["lr"] for row in rows],
        images=[row.get("images_seen") for row in rows],
        progress=[row.get("adascale_progress") for row in rows],
        gains=[row.get("adascale_gain") for row in rows],
    )


def plot_run_metrics(runs: list[RunMetrics], path: str, *, title: str = "") -> Any:
    """Writes a PNG: the LR against iterations (left), against AdaScale's progress when every run
    has it, else the images seen (middle), and the gain ratio when a run has one (right)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    adascale = [run for run in runs if run.adascale]
    by_progress = len(adascale) == len(runs)
    figure = Figure(figsize=(18 if adascale else 12, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    by_iteration, by_x, *gain_panel = figure.subplots(1, 3 if adascale else 2)
    for run in runs:
        by_iteration.plot(run.iterations, run.lrs, marker=".", label=run.name, linewidth=1.2)
        x = run.progress if by_progress else run.images
        points = [(a, lr) for a, lr in zip(x, run.lrs, strict=True) if a is not None]
        if points:
            by_x.plot(*zip(*points, strict=True), marker=".", label=run.name, linewidth=1.2)
        if gain_panel and run.adascale:
            gains = [
                (i, r) for i, r in zip(run.iterations, run.gains, strict=True) if r is not None
            ]
            gain_panel[0].plot(*zip(*gains, strict=True), marker=".", label=run.name)
    by_iteration.set(xlabel="iteration", ylabel="learning rate", title="LR against iterations")
    by_x.set(
        xlabel="AdaScale progress (steps of the reference batch)" if by_progress else "images seen",
        ylabel="learning rate",
        title="LR against the schedule's clock" if by_progress else "LR against images seen",
    )
    if gain_panel:
        gain_panel[0].set(
            xlabel="iteration", ylabel="gain ratio r", title="AdaScale: r = LR factor"
        )
        gain_panel[0].grid(alpha=0.3)
        gain_panel[0].legend(fontsize="small")
    return finish_lr_figure(figure, (by_iteration, by_x), path, title)

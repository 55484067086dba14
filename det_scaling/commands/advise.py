"""What to run on N GPUs, and for how long: the critical batch of a config, and what follows.

McCandlish et al. (2018): a batch B needs (1 + B / B_crit) / (1 + B_ref / B_crit) times the
epochs of the reference batch B_ref for the same progress
(:func:`~det_scaling.scaling.critical_batch.epochs_factor`). :func:`advise` turns a critical batch
(with its interval) into the batch, epochs, iterations, rule and, given step times, the wall time
and GPU-hours of each GPU count. The critical batch comes from one of:

* :func:`probe`: a short run of the reference schedule (by default a tenth of its images) that
  measures B_simple as the model trains, on one process and, for the step time of a multi-GPU
  step, on two; the estimate of its second half is the one used (B_simple grows as a model
  trains; the first steps' value is the lowest);
* :func:`from_run`: B_simple measured at a finished run's last checkpoint, in the last steps of
  its schedule;
* :func:`~det_scaling.commands.finished_runs.fit_from_runs`: finished runs at several batch
  sizes, their epochs to a target fitted to the law.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from det_scaling.commands.noise_scale import NoiseScaleEstimate, estimate, launch_noise_scale
from det_scaling.config import Recipe, config_format, load_cfg
from det_scaling.errors import ConfigError
from det_scaling.scaling.batch_schedule import BatchSchedule
from det_scaling.scaling.critical_batch import epochs_factor
from det_scaling.scaling.plan import scale_cfg
from det_scaling.scaling.rules import ADASCALE_RULE, NOISE_SCHEDULE
from det_scaling.tasks import prepare_run

__all__ = [
    "DEFAULT_PROBE_FRACTION",
    "Advice",
    "CriticalBatch",
    "GpuAdvice",
    "Probe",
    "advise",
    "from_run",
    "probe",
    "write_configs",
]

DEFAULT_PROBE_FRACTION = 0.1  # of the reference run's images
_Z90 = 1.6449  # a two-sided 90% normal interval
# Steps timed on two processes for the step time of a multi-GPU step.
_TIMING_STEPS = 12


@dataclass(frozen=True)
class CriticalBatch:
    """B_crit in images, its 90% interval (``None``: unknown) and where it comes from."""

    value: float
    interval: tuple[float, float] | None
    source: str

    @classmethod
    def from_estimate(cls, estimate: NoiseScaleEstimate, source: str) -> CriticalBatch:
        """The estimate's B_simple with a normal 90% interval from its standard error."""
        if estimate.noise_scale is None or estimate.noise_scale <= 0:
            raise ConfigError(
                f"{source}: the gradient signal |G|^2 was not resolved over steps "
                f"{estimate.first}-{estimate.last}; probe longer (--probe-fraction) or later"
            )
        interval = None
        if estimate.standard_error is not None:
            half = _Z90 * estimate.standard_error
            interval = (max(estimate.noise_scale - half, 0.0), estimate.noise_scale + half)
        return cls(estimate.noise_scale, interval, source)


@dataclass(frozen=True)
class GpuAdvice:
    """What to run on ``num_gpus`` GPUs."""

    num_gpus: int
    total_batch: int
    epochs_factor: float
    factor_band: tuple[float, float]  # from B_crit's interval (inf: not bounded)
    epochs: float | None  # None when the data set's size is unknown
    iterations: int
    rule: str  # "linear + noise schedule", "adascale" or "as written"
    why: str
    step_time_s: float | None = None
    wall_time_s: float | None = None
    gpu_hours: float | None = None


@dataclass(frozen=True)
class Probe:
    """What the probe cost and measured: steps, seconds, its share of the reference run's images,
    the B_simple of each window and of each module, the step time on 1 and 2 processes."""

    steps: int
    seconds: float
    fraction: float
    windows: list[NoiseScaleEstimate]
    modules: dict[str, NoiseScaleEstimate]
    step_times: dict[int, float]
    notes: list[str] = field(default_factory=list)


@dataclass
class Advice:
    """The advice for each GPU count, with what it rests on."""

    config: str
    reference_gpus: int
    reference_batch: int
    reference_iterations: int
    reference_epochs: float | None
    critical_batch: CriticalBatch
    rows: list[GpuAdvice]
    probe: Probe | None = None

    def fastest(self) -> GpuAdvice | None:
        """The GPU count with the shortest predicted wall time (None without step times)."""
        timed = [row for row in self.rows if row.wall_time_s is not None]
        return min(timed, key=lambda row: row.wall_time_s) if timed else None

    def cheapest(self) -> GpuAdvice | None:
        """The GPU count with the fewest predicted GPU-hours (None without step times)."""
        timed = [row for row in self.rows if row.gpu_hours is not None]
        return min(timed, key=lambda row: row.gpu_hours) if timed else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (an unbounded band end as None)."""
        fastest, cheapest = self.fastest(), self.cheapest()
        record = asdict(self)
        record["fastest"] = fastest.num_gpus if fastest else None
        record["cheapest"] = cheapest.num_gpus if cheapest else None
        return _finite(record)


def advise(
    cfg: Any,
    gpu_counts: Sequence[int],
    critical: CriticalBatch,
    *,
    step_times: dict[int, float] | None = None,
    config: str = "",
) -> Advice:
    """The advice for each of ``gpu_counts`` for ``cfg`` (as written: its reference batch and
    schedule) given the critical batch; ``step_times`` (GPU count -> seconds per step) give the
    wall time and GPU-hours, a count without its own time taking that of the nearest count."""
    if not gpu_counts:
        raise ConfigError("give at least one GPU count")
    recipe, schedule = _reference(cfg)
    reference_gpus = recipe.reference_world_size or 1
    reference_batch = recipe.ims_per_batch
    reference_epochs = schedule.epochs(schedule.total_images)
    rows = [
        _row(recipe, num_gpus, critical, schedule.total_images, reference_epochs, step_times)
        for num_gpus in gpu_counts
    ]
    return Advice(
        config,
        reference_gpus,
        reference_batch,
        schedule.total_iterations,
        reference_epochs,
        critical,
        rows,
    )


def _reference(cfg: Any) -> tuple[Recipe, BatchSchedule]:
    """The config's recipe and batch schedule as written, with the data set's size and a
    schedule in epochs resolved (from the registered training data) where the config needs it."""
    recipe = config_format(cfg).recipe()
    gpus = recipe.reference_world_size or 1
    if recipe.dataset_size <= 0 or recipe.epochs.max > 0:
        recipe = prepare_run(cfg, gpus, keep_reference_batch=True).recipe
    return recipe, BatchSchedule.from_recipe(recipe, gpus)


def _row(
    recipe: Recipe,
    num_gpus: int,
    critical: CriticalBatch,
    reference_images: int,
    reference_epochs: float | None,
    step_times: dict[int, float] | None,
) -> GpuAdvice:
    reference_batch = recipe.ims_per_batch
    per_gpu = reference_batch // (recipe.reference_world_size or 1)
    batch = per_gpu * num_gpus
    factor = epochs_factor(batch, reference_batch, critical.value)
    band = _factor_band(batch, reference_batch, critical.interval)
    if batch == reference_batch:
        rule, why = "as written", "the reference batch"
    elif math.isinf(max(band)):
        rule = ADASCALE_RULE
        why = (
            f"B_crit's interval reaches 0 images, so the epochs are not predictable; AdaScale "
            f"measures the batch's worth in training (1x to {batch / reference_batch:g}x steps)"
        )
    else:
        rule = f"linear + {NOISE_SCHEDULE} schedule"
        banded = "" if math.isnan(band[0]) else f" ({band[0]:.2f}-{band[1]:.2f})"
        why = f"epochs x{factor:.2f}{banded} for batch {batch} against {reference_batch}"
    iterations = round(reference_images * factor / batch)
    step_time = _nearest(step_times, num_gpus)
    wall = iterations * step_time if step_time is not None else None
    return GpuAdvice(
        num_gpus,
        batch,
        factor,
        band,
        None if reference_epochs is None else reference_epochs * factor,
        iterations,
        rule,
        why,
        step_time,
        wall,
        None if wall is None else wall * num_gpus / 3600,
    )


def _factor_band(
    batch: int, reference_batch: int, interval: tuple[float, float] | None
) -> tuple[float, float]:
    """The epochs factor at the two ends of B_crit's interval, low first (a B_crit of 0: inf)."""
    if interval is None:
        return (math.nan, math.nan)
    if batch == reference_batch:
        return (1.0, 1.0)
    factors = [
        epochs_factor(batch, reference_batch, b) if b > 0 else batch / reference_batch * math.inf
        for b in interval
    ]
    if batch < reference_batch and interval[0] <= 0:
        factors[0] = batch / reference_batch  # the limit of the law as B_crit -> 0
    return (min(factors), max(factors))


def _nearest(step_times: dict[int, float] | None, num_gpus: int) -> float | None:
    if not step_times:
        return None
    count = min(step_times, key=lambda c: (abs(c - num_gpus), -c))
    return step_times[count]


def probe(
    cfg: Any,
    *,
    fraction: float = DEFAULT_PROBE_FRACTION,
    time_two_processes: bool = True,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[CriticalBatch, Probe]:
    """Trains the first ``fraction`` of the reference schedule's images on one process,
    measuring B_simple at every step (by module too), then times a few steps on two processes;
    returns B_crit (the second half's B_simple, or the whole probe's where the second half
    alone does not resolve |G|^2) and what the probe measured."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"--probe-fraction must be in (0, 1], got {fraction}")
    gpus = config_format(cfg).recipe().reference_world_size or 1
    reference = prepare_run(cfg, gpus, keep_reference_batch=True)  # the data set's size known
    cfg, recipe = reference.cfg, reference.recipe
    reference_steps = BatchSchedule.from_recipe(recipe, gpus)
    # One process without accumulation measures at twice the batch (noise_scale's module).
    micro_batches = recipe.grad_accum_steps * (recipe.reference_world_size or 1)
    probe_batch = recipe.ims_per_batch * (2 if micro_batches == 1 else 1)
    start = time.perf_counter()
    result = launch_noise_scale(
        cfg,
        1,
        num_iter=max(4, round(fraction * reference_steps.total_images / probe_batch)),
        by_module=True,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    steps = len(result.norms)
    images = steps * result.ims_per_batch
    late = estimate(result.norms[steps // 2 :])
    if late.noise_scale is None or late.noise_scale <= 0:
        late = result.overall  # |G|^2 not resolved over the second half alone: every step
    critical = CriticalBatch.from_estimate(
        late, f"B_simple over steps {late.first}-{late.last} of the probe"
    )
    # A GPU's step is the config's accumulation of micro-batches of the probe's size; on two
    # processes, the step of the config scaled to 2 GPUs.
    timed = {1: result}
    if time_two_processes:
        two_gpus = scale_cfg(cfg, 2, keep_reference_batch=False)
        timed[2] = launch_noise_scale(two_gpus, 2, num_iter=_TIMING_STEPS)
    step_times = {
        count: run.micro_batch_seconds * recipe.grad_accum_steps
        for count, run in timed.items()
        if run.micro_batch_seconds is not None
    }
    return critical, Probe(
        steps,
        seconds,
        images / reference_steps.total_images,
        result.windows(),
        result.module_estimates(first=late.first),
        step_times,
        list(result.notes),
    )


def from_run(output_dir: str | os.PathLike, *, num_iter: int = 50) -> tuple[Any, CriticalBatch]:
    """The run's config and B_simple measured at its last checkpoint over ``num_iter`` steps
    near the end of its schedule (from ``2 num_iter`` steps before it: one process without
    accumulation measures at twice the batch, on a schedule half as long)."""
    folder = Path(output_dir)
    config_file = folder / "config.yaml"
    pointer = folder / "last_checkpoint"
    if not config_file.is_file() or not pointer.is_file():
        raise ConfigError(
            f"--from-run {folder}: needs the run's config.yaml and last_checkpoint (a folder "
            "det-scaling train wrote)"
        )
    checkpoint = folder / pointer.read_text().strip()
    cfg = load_cfg(str(config_file), ["MODEL.WEIGHTS", str(checkpoint)])
    recipe = config_format(cfg).recipe()
    total = BatchSchedule.from_recipe(recipe, recipe.reference_world_size or 1).total_iterations
    num_iter = max(2, min(num_iter, total // 2))
    start_iter = max(0, total - 2 * num_iter)
    result = launch_noise_scale(cfg, 1, num_iter=num_iter, start_iter=start_iter)
    steps = f"{result.norms[0].iteration}-{result.norms[-1].iteration}"
    return cfg, CriticalBatch.from_estimate(
        result.overall, f"B_simple at {checkpoint.name}, steps {steps} of the measurement"
    )


def write_configs(
    advice: Advice, config_file: str, overrides: Sequence[str], folder: str | os.PathLike
) -> list[Path]:
    """Writes the config of each row to ``folder``, named ``<stem>_<N>gpu`` and scaled to N GPUs:
    linear with the noise schedule and B_crit, or AdaScale where that is the advice. A YAML
    config is written whole; a LazyConfig as a ``.py`` file that loads and scales the original."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_cfg(config_file, overrides)
    adapter = config_format(cfg)
    stem, keys = Path(config_file).stem, adapter.keys
    written = []
    for row in advice.rows:
        adascale = row.rule == ADASCALE_RULE
        settings = {
            keys.schedule: "images" if adascale else NOISE_SCHEDULE,
            keys.b_crit: float(advice.critical_batch.value),
            **({keys.rule: ADASCALE_RULE} if adascale else {}),
        }
        path = out / f"{stem}_{row.num_gpus}gpu{'.py' if adapter.is_lazy else '.yaml'}"
        if adapter.is_lazy:
            lazy = [*overrides, *(f"{key}={value}" for key, value in settings.items())]
            path.write_text(_scaled_lazy_config(config_file, lazy, row))
        else:
            yacs = [*overrides, *(str(item) for pair in settings.items() for item in pair)]
            path.write_text(scale_cfg(load_cfg(config_file, yacs), row.num_gpus).dump())
        written.append(path)
    return written


def _scaled_lazy_config(config_file: str, overrides: list[str], row: GpuAdvice) -> str:
    """A LazyConfig file whose config is ``config_file`` with ``overrides``, scaled to the row's
    GPU count (LazyConfig.load keeps its top-level config objects)."""
    return (
        f'"""{Path(config_file).name} on {row.num_gpus} GPU(s), as `det-scaling advise` '
        f'advises: {row.rule}."""\n\n'
        "from det_scaling.config import load_cfg\n"
        "from det_scaling.scaling import scale_cfg\n\n"
        f"_scaled = scale_cfg(load_cfg({os.path.abspath(config_file)!r}, {overrides!r}), "
        f"{row.num_gpus})\n"
        "globals().update({_name: _scaled[_name] for _name in _scaled})\n"
    )


def _finite(value: Any) -> Any:
    """JSON has no inf or nan: as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value

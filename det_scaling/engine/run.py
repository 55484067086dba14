"""A config resolved once for the run's world size: the :class:`Run` every process works from.

A run is made from a :class:`~det_scaling.scaling.plan.ScalingPlan` (what
:func:`det_scaling.tasks.resolve_run` does, with the data checked) or from a config already
scaled (:meth:`Run.of_scaled`, for a trainer built on a user's config). Training, ``lr-find``,
``noise-scale`` and the benchmarks take it; nothing after it asks a raw config which format it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from det_scaling.config import ConfigFormat, Recipe, RunSettings, adapter_of
from det_scaling.errors import ConfigError
from det_scaling.scaling.batch_schedule import BatchSchedule
from det_scaling.scaling.plan import ScalingPlan

__all__ = ["Run", "check_scaled"]


@dataclass(frozen=True)
class Run:
    """A scaled config in its format's adapter, with what is read from it once: the recipe, the
    run settings and the batch schedule of ``world_size`` processes; ``plan`` is the record of
    the scaling (None for a config that came scaled)."""

    adapter: ConfigFormat
    recipe: Recipe
    settings: RunSettings
    schedule: BatchSchedule
    world_size: int
    plan: ScalingPlan | None = None

    @property
    def cfg(self) -> Any:
        """The scaled config (a CfgNode or a LazyConfig)."""
        return self.adapter.cfg

    @classmethod
    def of_scaled(cls, cfg: Any, world_size: int) -> Run:
        """The run of a config already scaled for ``world_size`` processes (its reference GPU
        count equal to it, or 0); ``ConfigError`` otherwise (see :func:`check_scaled`)."""
        adapter = adapter_of(cfg)
        recipe = adapter.recipe()
        check_scaled(recipe, world_size)
        schedule = BatchSchedule.from_recipe(recipe, world_size)
        return cls(adapter, recipe, adapter.run_settings(), schedule, world_size)

    @classmethod
    def from_plan(cls, plan: ScalingPlan, world_size: int) -> Run:
        """The run of a :class:`ScalingPlan` for ``world_size`` processes; ``ConfigError`` naming
        the key when the scaled config's batch schedule cannot run on them."""
        recipe = plan.recipe
        schedule = BatchSchedule.from_recipe(recipe, world_size)
        return cls(plan.adapter, recipe, plan.adapter.run_settings(), schedule, world_size, plan)


def check_scaled(recipe: Recipe, world_size: int) -> None:
    """Raises ``ConfigError`` unless the recipe is written for ``world_size`` processes (its
    reference GPU count, ``SOLVER.REFERENCE_WORLD_SIZE`` or ``train.reference_world_size``, equal
    to it, or 0: "as written, whatever the count")."""
    key, reference = recipe.keys.reference_world_size, recipe.reference_world_size
    if reference not in (0, world_size):
        raise ConfigError(
            f"{key} is {reference} but this run has {world_size} process(es): scale the config "
            f"first with det_scaling.plan_scaling(cfg, {world_size}) (tools/train.py does), or "
            f"set {key} 0 to use it as written"
        )

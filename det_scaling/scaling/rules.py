"""The scaling rules: how the LR follows the total batch, one :class:`ScalingRule` per value of
``SCALING.RULE`` (``train.scaling.rule``), looked up once from the config's string
(:func:`rule_of`) and asked what it does.

* ``linear`` (Goyal et al. 2017; detectron2's ``auto_scale_workers``): the LR times the batch
  ratio;
* ``sqrt`` (Krizhevsky 2014; Adam-like optimizers, with ``ADAM_SDE`` Malladi et al. 2022): the LR
  times its square root;
* ``none``: the LR kept;
* ``auto``: ``sqrt`` for an Adam-like optimizer, ``linear`` otherwise (:func:`choose_rule`);
* ``adascale`` (Johnson et al. 2020): the LR and the schedule's clock follow the gain ratio
  measured in training (:mod:`det_scaling.engine.adascale`); the plan keeps the LR and the
  schedule of the reference batch.

Also the values of ``SCALING.SCHEDULE``: how the schedule follows the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from det_scaling.config import Recipe, RecipeKeys
from det_scaling.errors import ConfigError

__all__ = [
    "ADASCALE",
    "ADASCALE_RULE",
    "AUTO",
    "AUTO_RULE",
    "IMAGES_SCHEDULE",
    "LINEAR",
    "NOISE_SCHEDULE",
    "NONE",
    "RULES",
    "SCHEDULES",
    "SQRT",
    "ScalingRule",
    "applied_rule",
    "choose_rule",
    "is_adam_like",
    "rule_of",
]

# The names users write (SCALING.RULE) of the rules that compare elsewhere as values.
AUTO_RULE = "auto"
ADASCALE_RULE = "adascale"

# How the schedule follows the batch (SCALING.SCHEDULE): the same images, or the same progress by
# the critical-batch law (scaling/critical_batch.py).
IMAGES_SCHEDULE = "images"
NOISE_SCHEDULE = "noise"
SCHEDULES = (IMAGES_SCHEDULE, NOISE_SCHEDULE)

# Optimizers whose step divides by a running root mean square of the gradient (Adam, AdamW,
# NAdam, RAdam, Adamax, LAMB, RMSprop): their LR follows the square root of the batch.
_ADAPTIVE_NAMES = ("adam", "lamb", "rmsprop")


def _kept(batch_ratio: float) -> float:
    return 1.0


def _linear(batch_ratio: float) -> float:
    return batch_ratio


@dataclass(frozen=True)
class ScalingRule:
    """One value of ``SCALING.RULE``: ``name`` as users write it, the LR factor it plans for a
    batch ratio, and what else it implies.

    ``adascale``: the LR and schedule follow the gain ratio measured in training (the planned LR
    factor is 1). ``adam_sde``: ``SCALING.ADAM_SDE`` belongs to it (the square-root rule, or a
    choice that may be it). ``large_batch_risk``: a NaN loss may come from the large batch's LR,
    so the advice offers the square root or a longer warmup."""

    name: str
    factor: Callable[[float], float] = field(repr=False, compare=False)
    adascale: bool = False
    adam_sde: bool = False
    large_batch_risk: bool = False

    def lr_factor(self, batch_ratio: float) -> float:
        """The factor on every absolute LR for a total batch ``batch_ratio`` times the
        reference's."""
        return self.factor(batch_ratio)

    def applied_to(self, recipe: Recipe) -> tuple[ScalingRule, str]:
        """The rule that scales ``recipe``, and why when it was chosen (``auto``); this rule and
        "" otherwise."""
        return self, ""

    def nan_advice(self, keys: RecipeKeys) -> str:
        """What this rule adds to the advice for a loss that became NaN or infinite ("" or
        ``"; ..."``), under the config's keys."""
        if self.large_batch_risk:
            return f"; for a large batch, {keys.rule} sqrt or a longer {keys.warmup}"
        return ""


@dataclass(frozen=True)
class _ChosenRule(ScalingRule):
    """``auto``: the rule of the optimizer (:func:`choose_rule`)."""

    def lr_factor(self, batch_ratio: float) -> float:
        raise TypeError("the auto rule has no LR factor of its own: ask applied_to(recipe)")

    def applied_to(self, recipe: Recipe) -> tuple[ScalingRule, str]:
        name, why = choose_rule(recipe)
        return RULES[name], why


LINEAR = ScalingRule("linear", _linear, large_batch_risk=True)
SQRT = ScalingRule("sqrt", math.sqrt, adam_sde=True)
NONE = ScalingRule("none", _kept)
AUTO = _ChosenRule(AUTO_RULE, _kept, adam_sde=True)
ADASCALE = ScalingRule(ADASCALE_RULE, _kept, adascale=True)
RULES: dict[str, ScalingRule] = {rule.name: rule for rule in (LINEAR, SQRT, NONE, AUTO, ADASCALE)}


def rule_of(name: str, key: str = "SCALING.RULE") -> ScalingRule:
    """The rule named ``name`` (a config's ``key``); ``ConfigError`` naming ``key`` when there is
    none."""
    rule = RULES.get(name) if isinstance(name, str) else None
    if rule is None:
        raise ConfigError(f"{key}: unknown scaling rule {name!r}; choose one of {sorted(RULES)}")
    return rule


def applied_rule(recipe: Recipe) -> tuple[ScalingRule, str]:
    """The rule that scales ``recipe`` (``auto`` resolved for its optimizer), and why it was
    chosen ("" when the config names it)."""
    return rule_of(recipe.rule, recipe.keys.rule).applied_to(recipe)


def is_adam_like(optimizer: str) -> bool:
    """Whether the optimizer named ``optimizer`` normalises its step by the gradient's second
    moment, as Adam does."""
    return any(name in optimizer.lower() for name in _ADAPTIVE_NAMES)


def choose_rule(recipe: Recipe) -> tuple[str, str]:
    """The name of the rule ``auto`` applies to ``recipe``'s optimizer, and why."""
    key, optimizer = recipe.keys.optimizer, recipe.optimizer or "unnamed"
    if is_adam_like(optimizer):
        return SQRT.name, (
            f"{key} {optimizer} is Adam-like: its step is normalised by the gradient's second "
            "moment, so the LR follows the square root of the batch (Malladi et al. 2022)"
        )
    return LINEAR.name, (
        f"{key} {optimizer} is not Adam-like (SGD, LARS, LARC): the LR follows the batch "
        "(Goyal et al. 2017)"
    )

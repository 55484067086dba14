"""LR schedules as fvcore ``ParamScheduler``\\ s: pure functions of training progress.

A schedule maps progress ``where = iteration / MAX_ITER`` in [0, 1] to a multiplier of
``BASE_LR``. Because ``scale_cfg`` keeps the images seen (it divides MAX_ITER, STEPS and
WARMUP_ITERS by the same factor), the same ``where`` is the same point of training in epochs at
every GPU count, and the scaled schedules are one curve in epoch space.

fvcore's schedulers are used where they have the shape (multistep, cosine, exponential, step
with a fixed gamma, linear and constant warmup); the classes here add what they lack: a
polynomial decay towards an end value, inverse-time decay, exponential warmup, and a constant and
a fixed-gamma step that are defined at ``where = 1``.
"""

from __future__ import annotations

import inspect

from detectron2.solver.lr_scheduler import WarmupParamScheduler
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    ExponentialParamScheduler,
    LinearParamScheduler,
    ParamScheduler,
    StepWithFixedGammaParamScheduler,
)

from det_scaling.errors import ConfigError

__all__ = [
    "WARMUP_METHODS",
    "FixedGammaStepParamScheduler",
    "FlatParamScheduler",
    "InverseTimeParamScheduler",
    "PolynomialParamScheduler",
    "with_warmup",
]

WARMUP_METHODS = ("linear", "constant", "exponential")

# Upstream detectron2's WarmupParamScheduler takes rescale_interval (SOLVER.RESCALE_INTERVAL);
# v0.6's does not, so with_warmup composes that case itself there.
_DETECTRON2_WARMUP_RESCALES = (
    "rescale_interval" in inspect.signature(WarmupParamScheduler).parameters
)


class FlatParamScheduler(ParamScheduler):
    """``value`` everywhere, including ``where = 1`` (the LR scheduler asks for it after the last
    step; fvcore's ``ConstantParamScheduler`` rejects it)."""

    def __init__(self, value: float = 1.0) -> None:
        self._value = value

    def __call__(self, where: float) -> float:
        return self._value


class FixedGammaStepParamScheduler(StepWithFixedGammaParamScheduler):
    """fvcore's ``StepWithFixedGammaParamScheduler`` (upstream detectron2's
    "WarmupStepWithFixedGammaLR"): ``base_value * gamma ** k`` on the k-th of ``num_decays + 1``
    equal parts of training. fvcore's raises IndexError at ``where = 1``, which the LR scheduler
    asks for after the last step; this one keeps the last part's value there."""

    def __call__(self, where: float) -> float:
        if where >= 1.0:
            # The middle of the last part: fvcore's own value for it, rounding included.
            where = 1.0 - 0.5 / (self.num_decays + 1)
        return super().__call__(where)


class PolynomialParamScheduler(ParamScheduler):
    """``end + (start - end) * (1 - where) ** power``: the LARS paper's polynomial decay (power 2)
    towards ``end``. fvcore's ``PolynomialDecayParamScheduler`` always decays to 0."""

    def __init__(self, start_value: float, end_value: float, power: float) -> None:
        if power < 0:
            raise ConfigError(f"polynomial decay power must be >= 0, got {power}")
        self._start = start_value
        self._end = end_value
        self._power = power

    def __call__(self, where: float) -> float:
        return self._end + (self._start - self._end) * (1.0 - where) ** self._power


class InverseTimeParamScheduler(ParamScheduler):
    """``start / (1 + k * where)``: inverse-time decay, with time measured as progress (so ``k``
    says how far it decays over the whole run: ``start / (1 + k)`` at the end)."""

    def __init__(self, start_value: float, k: float) -> None:
        if k < 0:
            raise ConfigError(f"inverse-time decay rate k must be >= 0, got {k}")
        self._start = start_value
        self._k = k

    def __call__(self, where: float) -> float:
        return self._start / (1.0 + self._k * where)


def with_warmup(
    scheduler: ParamScheduler,
    warmup_factor: float,
    warmup_length: float,
    method: str = "linear",
    rescale_interval: bool = False,
) -> ParamScheduler:
    """``scheduler`` with a warmup over the first ``warmup_length`` of training (a fraction in
    [0, 1]) that starts at ``warmup_factor * scheduler(0)``, as detectron2's
    ``WarmupParamScheduler``.

    ``method``: "linear" and "constant" are detectron2's own; "exponential" grows geometrically
    from the start value to the joining value (``warmup_factor`` must be positive).

    ``rescale_interval`` (upstream detectron2's ``SOLVER.RESCALE_INTERVAL``): False, the warmup
    joins ``scheduler`` at ``scheduler(warmup_length)`` and ``scheduler`` then runs on the global
    progress; True, it joins at ``scheduler(0)`` and ``scheduler`` runs over the rest of training
    as if it were the whole (its progress rescaled to [0, 1]). Both hold for every method.
    """
    if not 0.0 <= warmup_length <= 1.0:
        raise ConfigError(
            f"warmup length must be a fraction of training in [0, 1], got {warmup_length}"
        )
    if method not in WARMUP_METHODS:
        raise ConfigError(
            f"SOLVER.WARMUP_METHOD: unknown warmup method {method!r}; choose one of "
            f"{list(WARMUP_METHODS)}"
        )
    if rescale_interval and warmup_length >= 1.0:
        # Nothing is left to rescale the schedule to: upstream divides by zero at the last step.
        raise ConfigError(
            "SOLVER.RESCALE_INTERVAL True needs SOLVER.WARMUP_ITERS < SOLVER.MAX_ITER: the warmup "
            "covers the whole run; shorten the warmup or set SOLVER.RESCALE_INTERVAL False"
        )
    if method != "exponential" and (_DETECTRON2_WARMUP_RESCALES or not rescale_interval):
        rescale = {"rescale_interval": rescale_interval} if _DETECTRON2_WARMUP_RESCALES else {}
        return WarmupParamScheduler(scheduler, warmup_factor, warmup_length, method, **rescale)
    # Exponential warmup, or linear/constant with RESCALE_INTERVAL on v0.6: the same
    # composition as upstream's class.
    start = warmup_factor * scheduler(0.0)
    end = scheduler(0.0) if rescale_interval else scheduler(warmup_length)
    if method == "linear":
        warmup: ParamScheduler = LinearParamScheduler(start, end)
    elif method == "constant":
        warmup = ConstantParamScheduler(start)
    else:
        if not warmup_factor > 0:
            raise ConfigError(
                f"SOLVER.WARMUP_FACTOR must be > 0 for exponential warmup, got {warmup_factor}"
            )
        if not start > 0:
            raise ConfigError("exponential warmup needs a schedule that starts above 0")
        warmup = ExponentialParamScheduler(start, end / start)
    return CompositeParamScheduler(
        [warmup, scheduler],
        lengths=[warmup_length, 1.0 - warmup_length],
        interval_scaling=["rescaled", "rescaled" if rescale_interval else "fixed"],
    )

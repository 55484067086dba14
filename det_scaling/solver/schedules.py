"""LR schedules as fvcore ``ParamScheduler``\\ s: pure functions of training progress.

A schedule maps progress ``where = iteration / MAX_ITER`` in [0, 1] to a multiplier of
``BASE_LR``. Because ``scale_cfg`` keeps the images seen (it divides MAX_ITER, STEPS and
WARMUP_ITERS by the same factor), the same ``where`` is the same point of training in epochs at
every GPU count, and the scaled schedules are one curve in epoch space.

fvcore's schedulers are used where they have the shape (multistep, cosine, exponential, linear
and constant warmup); the classes here add what they lack: a polynomial decay towards an end
value, inverse-time decay, exponential warmup, and a constant that is defined at ``where = 1``.
"""

from __future__ import annotations

from detectron2.solver.lr_scheduler import WarmupParamScheduler
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    ExponentialParamScheduler,
    ParamScheduler,
)

__all__ = [
    "WARMUP_METHODS",
    "FlatParamScheduler",
    "InverseTimeParamScheduler",
    "PolynomialParamScheduler",
    "with_warmup",
]

WARMUP_METHODS = ("linear", "constant", "exponential")


class FlatParamScheduler(ParamScheduler):
    """``value`` everywhere, including ``where = 1`` (the LR scheduler asks for it after the last
    step; fvcore's ``ConstantParamScheduler`` rejects it)."""

    def __init__(self, value: float = 1.0) -> None:
        self._value = value

    def __call__(self, where: float) -> float:
        return self._value


class PolynomialParamScheduler(ParamScheduler):
    """``end + (start - end) * (1 - where) ** power``: the LARS paper's polynomial decay (power 2)
    towards ``end``. fvcore's ``PolynomialDecayParamScheduler`` always decays to 0."""

    def __init__(self, start_value: float, end_value: float, power: float) -> None:
        if power < 0:
            raise ValueError(f"polynomial decay power must be >= 0, got {power}")
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
            raise ValueError(f"inverse-time decay rate k must be >= 0, got {k}")
        self._start = start_value
        self._k = k

    def __call__(self, where: float) -> float:
        return self._start / (1.0 + self._k * where)


def with_warmup(
    scheduler: ParamScheduler, warmup_factor: float, warmup_length: float, method: str = "linear"
) -> ParamScheduler:
    """``scheduler`` with a warmup over the first ``warmup_length`` of training (a fraction in
    [0, 1]) that starts at ``warmup_factor * scheduler(0)`` and joins ``scheduler`` where the
    warmup ends, as detectron2's ``WarmupParamScheduler``.

    ``method``: "linear" and "constant" are detectron2's own (its class is used), "exponential"
    grows geometrically from the start value to the joining value (``warmup_factor`` must be
    positive). After the warmup, ``scheduler`` runs on the global progress, not a rescaled one.
    """
    if not 0.0 <= warmup_length <= 1.0:
        raise ValueError(
            f"warmup length must be a fraction of training in [0, 1], got {warmup_length}"
        )
    if method in ("linear", "constant"):
        return WarmupParamScheduler(scheduler, warmup_factor, warmup_length, method)
    if method != "exponential":
        raise ValueError(
            f"SOLVER.WARMUP_METHOD: unknown warmup method {method!r}; choose one of "
            f"{list(WARMUP_METHODS)}"
        )
    if not warmup_factor > 0:
        raise ValueError(
            f"SOLVER.WARMUP_FACTOR must be > 0 for exponential warmup, got {warmup_factor}"
        )
    start = warmup_factor * scheduler(0.0)
    end = scheduler(warmup_length)
    if not start > 0:
        raise ValueError("exponential warmup needs a schedule that starts above 0")
    warmup = ExponentialParamScheduler(start, end / start)
    return CompositeParamScheduler(
        [warmup, scheduler],
        lengths=[warmup_length, 1.0 - warmup_length],
        interval_scaling=["rescaled", "fixed"],
    )

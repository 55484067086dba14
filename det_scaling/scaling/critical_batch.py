"""How many epochs a batch needs: McCandlish et al. (2018)'s law E = E_min (1 + B / B_crit).

Below the critical batch B_crit, k times the batch takes about k times fewer steps for the same
images (the linear rule's premise); past it, each extra image buys less, and a run needs more
epochs to reach the same loss. The gradient noise scale B_simple estimates B_crit
(:mod:`det_scaling.scaling.gradient_noise`); :func:`fit_critical_batch` fits it to the epochs
finished runs took to reach a target.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from det_scaling.errors import ConfigError

__all__ = ["CriticalBatchFit", "epochs_factor", "fit_critical_batch"]

# Two-sided confidence of CriticalBatchFit.b_crit_interval.
CONFIDENCE = 0.90
# Reweighting passes of the weighted least squares (the weights converge in two or three).
_REWEIGHTS = 5


def epochs_factor(batch: float, reference_batch: float, b_crit: float) -> float:
    """The epochs a run at ``batch`` needs, as a multiple of those of one at ``reference_batch``,
    for the same progress: ``(1 + batch / b_crit) / (1 + reference_batch / b_crit)``.
    ``b_crit`` may be ``math.inf`` (no critical batch: the factor is 1)."""
    for name, value in (("batch", batch), ("reference_batch", reference_batch)):
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{name} must be a positive number, got {value!r}")
    if not b_crit > 0:
        raise ConfigError(f"b_crit must be a positive number or inf, got {b_crit!r}")
    return (1 + batch / b_crit) / (1 + reference_batch / b_crit)


@dataclass(frozen=True)
class CriticalBatchFit:
    """E = e_min (1 + B / b_crit) fitted to ``points``, the (batch, epochs) pairs measured.

    ``b_crit`` is ``math.inf`` when the epochs do not grow with the batch at all: no critical
    batch shows below the largest batch measured, so scaling the batch up to there costs no
    epochs. ``b_crit_interval`` is its 90% confidence interval (Fieller's), None for an exact
    fit through two points; its upper end is ``math.inf`` when the growth of the epochs with the
    batch is within the noise (measure a larger batch to bound it).
    """

    e_min: float
    b_crit: float
    b_crit_interval: tuple[float, float] | None
    points: tuple[tuple[float, float], ...]

    def epochs(self, batch: float) -> float:
        """The epochs the law gives at ``batch``."""
        if not (batch > 0 and math.isfinite(batch)):
            raise ConfigError(f"batch must be a positive number, got {batch!r}")
        return self.e_min * (1 + batch / self.b_crit)


def fit_critical_batch(batch_sizes: Sequence[float], epochs: Sequence[float]) -> CriticalBatchFit:
    """Fits E = E_min (1 + B / B_crit) to the ``epochs`` measured at ``batch_sizes`` (a batch may
    repeat, e.g. one point per seed).

    The law is linear in B, E = a + b B with a = E_min and b = E_min / B_crit. The fit is
    weighted least squares with weights 1 / E_fitted^2: the spread of epochs-to-target between
    seeds grows with the epochs (multiplicative noise), so each point counts by its relative
    error. B_crit = a / b; its interval (3+ points) is Fieller's for the ratio b / a = 1 / B_crit
    with Student's t on n - 2 degrees of freedom, which, unlike the delta method, stays right
    when b is poorly known and can be unbounded above.
    """
    batch, epoch = _checked(batch_sizes, epochs)
    points = tuple(zip(batch.tolist(), epoch.tolist(), strict=True))
    design = np.stack([np.ones_like(batch), batch], axis=1)
    weights = 1 / epoch**2
    for _ in range(_REWEIGHTS):
        (a, b), _ = _weighted_fit(design, epoch, weights)
        fitted = a + b * batch
        if not np.all(fitted > 0):
            break
        weights = 1 / fitted**2
    (a, b), normal = _weighted_fit(design, epoch, weights)
    if not a > 0:
        raise ConfigError(
            "epochs grow faster than the law E_min (1 + B / B_crit) allows (the fitted E_min is "
            f"{a:.3g} <= 0): leave out the largest batch sizes, past where runs reach the target "
            "reliably"
        )
    # The epochs do not grow with the batch: the slope is 0 up to rounding.
    flat = b * batch.max() <= 1e-12 * a
    b_crit = math.inf if flat else float(a / b)
    interval = None
    if len(batch) > 2:
        residuals = epoch - (a + b * batch)
        # Weighted by 1 / E^2, the residuals are relative: below 1e-12 they are rounding.
        variance = float(np.sum(weights * residuals**2)) / (len(batch) - 2)
        variance = 0.0 if variance < 1e-24 else variance
        covariance = variance * np.linalg.inv(normal)
        interval = _fieller_interval(a, 0.0 if flat else b, covariance, len(batch) - 2)
    return CriticalBatchFit(float(a), b_crit, interval, points)


def _checked(batch_sizes: Sequence[float], epochs: Sequence[float]) -> tuple[np.ndarray, ...]:
    """The inputs as float arrays, or ConfigError saying what is wrong with them."""
    if len(batch_sizes) != len(epochs):
        raise ConfigError(
            f"batch_sizes and epochs must have the same length, got {len(batch_sizes)} and "
            f"{len(epochs)}"
        )
    for name, values in (("batch_sizes", batch_sizes), ("epochs", epochs)):
        for index, value in enumerate(values):
            real = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if not (real and value > 0 and math.isfinite(value)):
                raise ConfigError(
                    f"{name}[{index}] must be a positive finite number, got {value!r}"
                )
    batch = np.asarray(batch_sizes, dtype=float)
    epoch = np.asarray(epochs, dtype=float)
    distinct = np.unique(batch)
    if len(distinct) < 2:
        raise ConfigError(
            f"batch_sizes must hold at least two distinct batch sizes to fit B_crit, got "
            f"{sorted(set(batch.tolist()))}"
        )
    # Seeds at one batch scatter: the law needs the mean epochs of each batch non-decreasing.
    means = [float(epoch[batch == size].mean()) for size in distinct]
    for (small, small_epochs), (large, large_epochs) in itertools.pairwise(
        zip(distinct.tolist(), means, strict=True)
    ):
        if large_epochs < small_epochs:
            raise ConfigError(
                f"epochs fall as the batch grows: {small_epochs:g} at batch {small:g} but "
                f"{large_epochs:g} at batch {large:g}; the law needs epochs non-decreasing in the "
                "batch (rerun the noisier one with more seeds, or leave it out)"
            )
    return batch, epoch


def _weighted_fit(
    design: np.ndarray, target: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The weighted least-squares coefficients, and the normal matrix X^T W X."""
    normal = design.T @ (weights[:, None] * design)
    return np.linalg.solve(normal, design.T @ (weights * target)), normal


def _fieller_interval(a: float, b: float, covariance: np.ndarray, dof: int) -> tuple[float, float]:
    """The confidence interval of B_crit = a / b from Fieller's set for theta = b / a: the theta
    with (b - theta a)^2 <= t^2 Var(b - theta a), a quadratic in theta, bounded while a is
    significantly positive; B_crit's ends are 1 / theta's (inf for theta <= 0)."""
    from scipy.stats import t as student_t  # on use: importing scipy.stats takes seconds

    t2 = float(student_t.ppf(0.5 + CONFIDENCE / 2, dof)) ** 2
    var_a, cov_ab, var_b = covariance[0, 0], covariance[0, 1], covariance[1, 1]
    quadratic = a * a - t2 * var_a
    if quadratic <= 0:
        return (0.0, math.inf)  # E_min itself is within noise of 0: the points bound nothing
    linear = -2 * (a * b - t2 * cov_ab)
    constant = b * b - t2 * var_b
    root = math.sqrt(max(linear * linear - 4 * quadratic * constant, 0.0))
    low = (-linear - root) / (2 * quadratic)
    high = (-linear + root) / (2 * quadratic)
    return (_reciprocal(float(high)), _reciprocal(float(low)))


def _reciprocal(theta: float) -> float:
    return 1 / theta if theta > 0 else math.inf

"""Gradient noise statistics from squared gradient norms measured at two batch sizes.

Two uses share them: the gradient noise scale B_simple = tr(Sigma) / |G|^2 of McCandlish et al.
(2018, "An Empirical Model of Large-Batch Training", appendix A), which predicts the batch up to
which the linear scaling rule holds, and the gain ratio of AdaScale SGD (Johnson et al. 2020).

Notation: G is the true (full-data) gradient, Sigma the covariance of one example's gradient, and
G_B the gradient of the mean loss over a batch of B examples, so E|G_B|^2 = |G|^2 + tr(Sigma) / B.
Batch sizes count whatever the loss averages over (images, for detectron2). A trainer has two
such batches at every optimizer step: one process's gradient before DDP's all-reduce (b = micro-
batch x accumulation) and the all-reduced one (B = b x world size), or one micro-batch's gradient
and the step's accumulated one. Norms must be of unscaled gradients (after AMP's unscale).

Nothing reads a tensor value on the host until a statistic is asked for: :func:`squared_grad_norm`
and :meth:`GradientNoiseStats.update` take and keep tensors, so they can run at every step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, TypeAlias

import torch

from det_scaling.errors import ConfigError

__all__ = [
    "GradientNoiseStats",
    "SquaredNorm",
    "gain_ratio",
    "squared_grad_norm",
    "two_batch_estimates",
]

SquaredNorm: TypeAlias = float | torch.Tensor
"""A squared norm or an estimate made of them: a Python float, or a 0-dim tensor on any device."""


def squared_grad_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """|grad|^2 over all parameters that have a ``.grad`` (on one device), as a 0-dim tensor there.

    One multi-tensor norm call and no host-device synchronization. Accumulates in float32 (float64
    if any gradient is float64), so half-precision gradients do not overflow.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        raise ConfigError("no parameter has a gradient")
    dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    return torch.stack(torch._foreach_norm(grads, 2, dtype=dtype)).square().sum()


def two_batch_estimates(
    small_sq_norm: SquaredNorm, small_batch: float, big_sq_norm: SquaredNorm, big_batch: float
) -> tuple[SquaredNorm, SquaredNorm]:
    """Unbiased one-step estimates ``(|G|^2, tr(Sigma))`` from |G_b|^2 and |G_B|^2 (b < B).

    From E|G_B|^2 = |G|^2 + tr(Sigma) / B at the two sizes:
    |G|^2 ~ (B |G_B|^2 - b |G_b|^2) / (B - b) and tr(Sigma) ~ (|G_b|^2 - |G_B|^2) / (1/b - 1/B).
    ``small_sq_norm`` may be the mean of several squared norms of batches of ``small_batch``
    examples (one per process or per micro-batch): still unbiased, less noisy. The small batches
    may be part of the big one. Either estimate can be negative on a single step.
    """
    if not 0 < small_batch < big_batch:
        raise ConfigError(
            f"need 0 < small_batch < big_batch, got small_batch={small_batch}, "
            f"big_batch={big_batch}"
        )
    sq_grad_norm = (big_batch * big_sq_norm - small_batch * small_sq_norm) / (
        big_batch - small_batch
    )
    trace_sigma = (small_sq_norm - big_sq_norm) / (1 / small_batch - 1 / big_batch)
    return sq_grad_norm, trace_sigma


def gain_ratio(variance: float, sq_grad_norm: float, scale: float) -> float | None:
    """AdaScale's gain ratio r = (s2 + m2) / (s2 / S + m2) at ``scale`` S; None if m2 <= 0.

    ``variance`` s2 is the gradient variance of one reference batch, E|G_ref - G|^2 =
    tr(Sigma) / B_ref, with B_ref the batch at S = 1 (the batch is S x B_ref); ``sq_grad_norm``
    m2 is |G|^2. r is how many reference-batch steps one step at S x B_ref is worth (AdaScale
    multiplies the LR by it and advances the schedule by it): in [1, S] for S >= 1, [S, 1] below.
    A negative s2 estimate is clamped to 0 (a variance cannot be negative; left as is it would
    give r outside that range, or a zero denominator). With m2 <= 0 (signal not resolved yet) r
    is not measurable: the caller picks a fallback.
    """
    _check_positive("scale", scale)
    if not sq_grad_norm > 0:
        return None
    s2 = max(variance, 0.0)
    ratio = (s2 + sq_grad_norm) / (s2 / scale + sq_grad_norm)
    if not math.isfinite(ratio):
        return None
    # Only rounding can leave [1, S] here.
    return min(max(ratio, min(1.0, scale)), max(1.0, scale))


class GradientNoiseStats:
    """Exponential moving averages of the two-batch estimates of |G|^2 and tr(Sigma).

    The two are averaged separately and B_simple is the ratio of the averages, as McCandlish et
    al. recommend: single-step |G|^2 estimates are noisy and often near or below 0, so an average
    of per-step ratios is biased and unstable. Averages are bias-corrected (divided by the
    average's total weight, as in Adam), so the first steps are not pulled towards 0.

    ``decay`` is the weight kept per step (0: the latest step only). Statistics return None
    before the first update and whenever they are not measurable; never a negative or infinite
    value. Call :meth:`update` only for steps whose gradients are finite (skip the steps AMP's
    GradScaler skips): a NaN would stay in the averages.
    """

    def __init__(self, decay: float = 0.99) -> None:
        if not 0 <= decay < 1:
            raise ConfigError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self._steps = 0
        self._weight = 0.0
        self._sq_grad_norm: SquaredNorm = 0.0
        self._trace_sigma: SquaredNorm = 0.0

    def update(
        self,
        small_sq_norm: SquaredNorm,
        small_batch: float,
        big_sq_norm: SquaredNorm,
        big_batch: float,
    ) -> None:
        """Adds one step's squared norms (see :func:`two_batch_estimates`); sync-free on tensors."""
        sq_grad_norm, trace_sigma = two_batch_estimates(
            _as_float64(small_sq_norm), small_batch, _as_float64(big_sq_norm), big_batch
        )
        keep, add = self.decay, 1 - self.decay
        self._sq_grad_norm = keep * self._sq_grad_norm + add * sq_grad_norm
        self._trace_sigma = keep * self._trace_sigma + add * trace_sigma
        self._weight = keep * self._weight + add
        self._steps += 1

    @property
    def steps(self) -> int:
        """Number of updates so far (restored by :meth:`load_state_dict`)."""
        return self._steps

    @property
    def sq_grad_norm(self) -> float | None:
        """Smoothed |G|^2; None before the first update or while the estimate is <= 0."""
        value = self._average(self._sq_grad_norm)
        return value if value is not None and value > 0 else None

    @property
    def trace_sigma(self) -> float | None:
        """Smoothed tr(Sigma) per example (None before any update); an estimate < 0 reads as 0."""
        value = self._average(self._trace_sigma)
        return None if value is None else max(value, 0.0)

    @property
    def noise_scale(self) -> float | None:
        """B_simple = tr(Sigma) / |G|^2 in examples, from the smoothed values; None if unknown."""
        sq_grad_norm, trace_sigma = self.sq_grad_norm, self.trace_sigma
        if sq_grad_norm is None or trace_sigma is None:
            return None
        value = trace_sigma / sq_grad_norm
        return value if math.isfinite(value) else None

    def gain_ratio(self, scale: float, reference_batch: float) -> float | None:
        """AdaScale's r at a batch of ``scale`` x ``reference_batch`` (see :func:`gain_ratio`)."""
        _check_positive("scale", scale)
        _check_positive("reference_batch", reference_batch)
        sq_grad_norm, trace_sigma = self.sq_grad_norm, self.trace_sigma
        if sq_grad_norm is None or trace_sigma is None:
            return None
        return gain_ratio(trace_sigma / reference_batch, sq_grad_norm, scale)

    def state_dict(self) -> dict[str, Any]:
        """Plain Python numbers for a checkpoint (reads tensor values: one synchronization)."""
        return {
            "steps": self._steps,
            "weight": self._weight,
            "sq_grad_norm": float(self._sq_grad_norm),
            "trace_sigma": float(self._trace_sigma),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from :meth:`state_dict`'s averages (the decay is this object's own)."""
        self._steps = int(state["steps"])
        self._weight = float(state["weight"])
        self._sq_grad_norm = float(state["sq_grad_norm"])
        self._trace_sigma = float(state["trace_sigma"])

    def _average(self, total: SquaredNorm) -> float | None:
        """The bias-corrected average, or None before any update or when not finite."""
        if self._steps == 0:
            return None
        value = float(total) / self._weight
        return value if math.isfinite(value) else None


def _as_float64(value: SquaredNorm) -> SquaredNorm:
    """Tensors to float64 on their own device (no host copy): the estimates subtract close terms."""
    return value.detach().to(torch.float64) if isinstance(value, torch.Tensor) else float(value)


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be positive, got {value}")

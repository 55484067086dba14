"""Gradient noise statistics: the two-batch estimators against a closed-form problem, the smoothing,
AdaScale's gain ratio, the sync-free gradient norm, checkpoints and the non-measurable cases."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

import pytest
import torch
from helpers.host_sync import host_reads_forbidden
from hypothesis import given
from hypothesis import strategies as st

from det_scaling.scaling.gradient_noise import (
    GradientNoiseStats,
    gain_ratio,
    squared_grad_norm,
    two_batch_estimates,
)

# ---- the closed-form problem ----
# Linear regression y = x.w* + e, x ~ N(0, I_d), e ~ N(0, s^2), loss (x.w - y)^2 / 2. At w with
# u = w - w*, one example's gradient is g = x (x.u - e), so G = E[x x^T] u = u and |G|^2 = |u|^2.
# E[g g^T] = E[(x.u)^2 x x^T] + s^2 I = |u|^2 I + 2 u u^T + s^2 I (Isserlis' theorem; the cross
# term has E[e] = 0), so Sigma = E[g g^T] - u u^T = (|u|^2 + s^2) I + u u^T and
# tr(Sigma) = d (|u|^2 + s^2) + |u|^2.
# With d = 8, |u|^2 = 1, s^2 = 1: tr(Sigma) = 17 and B_simple = 17.
DIM, NOISE_VAR = 8, 1.0
EXACT_SQ_GRAD_NORM = 1.0
EXACT_TRACE = DIM * (EXACT_SQ_GRAD_NORM + NOISE_VAR) + EXACT_SQ_GRAD_NORM
EXACT_NOISE_SCALE = EXACT_TRACE / EXACT_SQ_GRAD_NORM
# 8 processes of 4 examples: b = 4 before the all-reduce, B = 32 after it.
SMALL, BIG, STEPS, DECAY = 4, 32, 4000, 0.999


@dataclass(frozen=True)
class Sampled:
    grads: torch.Tensor  # (STEPS, BIG, DIM) per-example gradients
    small: torch.Tensor  # (STEPS,) |G_b|^2: the mean over the 8 processes, or process 0's alone
    big: torch.Tensor  # (STEPS,) |G_B|^2 of the all-reduced gradient


@functools.cache
def sample(per_process_mean: bool) -> Sampled:
    generator = torch.Generator().manual_seed(0)
    u = torch.zeros(DIM, dtype=torch.float64)
    u[0] = math.sqrt(EXACT_SQ_GRAD_NORM)
    x = torch.randn(STEPS, BIG, DIM, generator=generator, dtype=torch.float64)
    noise = torch.randn(STEPS, BIG, generator=generator, dtype=torch.float64)
    grads = x * (x @ u - math.sqrt(NOISE_VAR) * noise).unsqueeze(-1)
    per_process = grads.view(STEPS, BIG // SMALL, SMALL, DIM).mean(2).square().sum(-1)
    small = per_process.mean(1) if per_process_mean else per_process[:, 0]
    return Sampled(grads, small, grads.mean(1).square().sum(-1))


def feed(sampled: Sampled) -> GradientNoiseStats:
    stats = GradientNoiseStats(decay=DECAY)
    for small, big in zip(sampled.small.tolist(), sampled.big.tolist(), strict=True):
        stats.update(small, SMALL, big, BIG)
    return stats


def ema_weights() -> torch.Tensor:
    """The weight each step has in the bias-corrected average after STEPS updates (sum 1)."""
    weights = DECAY ** torch.arange(STEPS - 1, -1, -1, dtype=torch.float64)
    return weights / weights.sum()


def standard_error(values: torch.Tensor) -> float:
    """Standard error of the weighted average of i.i.d. per-step values."""
    return math.sqrt(ema_weights().square().sum() * values.var())


def noise_scale_error(sampled: Sampled) -> float:
    """Standard error of the ratio of averages (delta method: the error of T - R |G|^2)."""
    sq_grad_norm, trace = two_batch_estimates(sampled.small, SMALL, sampled.big, BIG)
    residual = trace - EXACT_NOISE_SCALE * sq_grad_norm
    return standard_error(residual) / EXACT_SQ_GRAD_NORM


def test_the_derivation_matches_the_sampled_gradients() -> None:
    grads = sample(per_process_mean=True).grads.reshape(-1, DIM)
    mean = grads.mean(0)
    deviation = (grads - mean).square().sum(1)  # its mean estimates tr(Sigma)
    trace_error = math.sqrt(deviation.var() / len(deviation))
    assert abs(deviation.mean() - EXACT_TRACE) < 4 * trace_error
    assert trace_error < 0.01 * EXACT_TRACE
    expected_mean = torch.zeros(DIM, dtype=torch.float64)
    expected_mean[0] = math.sqrt(EXACT_SQ_GRAD_NORM)
    assert ((mean - expected_mean).abs() < 4 * grads.std(0) / math.sqrt(len(grads))).all()


@pytest.mark.parametrize("per_process_mean", [True, False], ids=["mean-of-8", "one-process"])
def test_noise_scale_matches_the_closed_form(per_process_mean: bool) -> None:
    sampled = sample(per_process_mean)
    stats = feed(sampled)
    error = noise_scale_error(sampled)
    # Observed: 17.06 +- 0.22 (mean of the 8 per-process norms), 15.90 +- 0.85 (one process's).
    assert abs(stats.noise_scale - EXACT_NOISE_SCALE) < 4 * error
    assert error < 0.06 * EXACT_NOISE_SCALE

    sq_grad_norm, trace = two_batch_estimates(sampled.small, SMALL, sampled.big, BIG)
    assert abs(stats.sq_grad_norm - EXACT_SQ_GRAD_NORM) < 4 * standard_error(sq_grad_norm)
    assert abs(stats.trace_sigma - EXACT_TRACE) < 4 * standard_error(trace)


def test_wrong_formulas_fall_outside_the_tolerance() -> None:
    """The tolerance above is tight enough to catch the usual mistakes (observed: 11.13, 21.06,
    22.06 against 17, with a tolerance of 0.88)."""
    sampled = sample(per_process_mean=True)
    tolerance = 4 * noise_scale_error(sampled)
    weights = ema_weights()
    sq_grad_norm, trace = two_batch_estimates(sampled.small, SMALL, sampled.big, BIG)
    wrong = {
        # |G_B|^2 as |G|^2: biased up by tr(Sigma) / B.
        "biased |G|^2": (weights @ trace) / (weights @ sampled.big),
        # b |G_b|^2 as tr(Sigma): biased up by b |G|^2.
        "biased tr(Sigma)": SMALL * (weights @ sampled.small) / (weights @ sq_grad_norm),
        # The average of per-step ratios: single-step |G|^2 estimates come near 0.
        "average of ratios": weights @ (trace / sq_grad_norm),
    }
    assert abs(feed(sampled).noise_scale - EXACT_NOISE_SCALE) < tolerance
    for name, value in wrong.items():
        assert abs(float(value) - EXACT_NOISE_SCALE) > tolerance, name


def test_gain_ratio_matches_the_closed_form() -> None:
    """AdaScale at 8 times a reference batch of 4: s2 = tr(Sigma) / 4, r = 5.25 / 1.53125."""
    sampled = sample(per_process_mean=True)
    scale, reference = 8, SMALL
    exact = gain_ratio(EXACT_TRACE / reference, EXACT_SQ_GRAD_NORM, scale)
    assert exact == pytest.approx((EXACT_TRACE / reference + 1) / (EXACT_TRACE / 32 + 1))
    # r = S (k + 1) / (k + S) with k = B_simple / reference: dr/dB_simple bounds its error.
    k = EXACT_NOISE_SCALE / reference
    slope = scale * (scale - 1) / (k + scale) ** 2 / reference
    estimated = feed(sampled).gain_ratio(scale, reference)
    assert abs(estimated - exact) < 4 * noise_scale_error(sampled) * slope


# ---- the estimators and the smoothing, on exact numbers ----
def norms_for(sq_grad_norm: float, trace: float, small: int, big: int) -> tuple[float, float]:
    """The expected |G_b|^2 and |G_B|^2 for given |G|^2 and tr(Sigma)."""
    return sq_grad_norm + trace / small, sq_grad_norm + trace / big


def update_exactly(stats: GradientNoiseStats, sq_grad_norm: float, trace: float) -> None:
    """One update with the expected norms at b = 2 and B = 8, so its estimates are exact."""
    small_norm, big_norm = norms_for(sq_grad_norm, trace, 2, 8)
    stats.update(small_norm, 2, big_norm, 8)


def test_two_batch_estimates_invert_the_expected_norms() -> None:
    small_norm, big_norm = norms_for(2.5, 40.0, 2, 16)
    assert two_batch_estimates(small_norm, 2, big_norm, 16) == pytest.approx((2.5, 40.0))
    as_tensors = two_batch_estimates(torch.tensor(small_norm), 2, torch.tensor(big_norm), 16)
    assert [float(t) for t in as_tensors] == pytest.approx([2.5, 40.0])


def test_averages_are_bias_corrected_and_divided_after_averaging() -> None:
    stats = GradientNoiseStats(decay=0.5)
    update_exactly(stats, 1.0, 10.0)
    # One step: the step's own estimates, not (1 - decay) times them.
    assert (stats.sq_grad_norm, stats.trace_sigma) == pytest.approx((1.0, 10.0))
    assert stats.noise_scale == pytest.approx(10.0)
    update_exactly(stats, 0.25, 20.0)
    # Weights 1/3 and 2/3 (0.5 x 0.5 and 0.5, over 0.75): |G|^2 = 0.5, tr = 50/3.
    assert stats.sq_grad_norm == pytest.approx(0.5)
    assert stats.trace_sigma == pytest.approx(50 / 3)
    # The ratio of the averages, 100/3; the average of the ratios would be 10/3 + 160/3.
    assert stats.noise_scale == pytest.approx(100 / 3)
    assert stats.steps == 2


def test_update_accepts_tensors_and_agrees_with_floats() -> None:
    with_floats, with_tensors = GradientNoiseStats(0.9), GradientNoiseStats(0.9)
    for step in range(5):
        small_norm, big_norm = norms_for(1.0 + step, 30.0 - step, 4, 16)
        with_floats.update(small_norm, 4, big_norm, 16)
        as_float32 = (torch.tensor(small_norm), torch.tensor(big_norm))
        with_tensors.update(as_float32[0], 4, as_float32[1], 16)
    assert with_tensors.noise_scale == pytest.approx(with_floats.noise_scale, rel=1e-6)
    assert with_tensors.gain_ratio(4, 4) == pytest.approx(with_floats.gain_ratio(4, 4), rel=1e-6)


def test_batch_sizes_and_decay_are_checked() -> None:
    with pytest.raises(ValueError, match="small_batch < big_batch"):
        two_batch_estimates(1.0, 8, 1.0, 8)
    with pytest.raises(ValueError, match="small_batch < big_batch"):
        GradientNoiseStats().update(1.0, 0, 1.0, 8)
    with pytest.raises(ValueError, match="decay"):
        GradientNoiseStats(decay=1.0)
    with pytest.raises(ValueError, match=r"^reference_batch must be positive"):
        GradientNoiseStats().gain_ratio(2, 0)
    with pytest.raises(ValueError, match=r"^scale must be positive"):
        GradientNoiseStats().gain_ratio(0, 2)
    with pytest.raises(ValueError, match=r"^scale must be positive"):
        gain_ratio(1.0, 1.0, 0)


def test_decay_0_keeps_the_latest_step_only() -> None:
    stats = GradientNoiseStats(decay=0.0)
    update_exactly(stats, 1.0, 10.0)
    update_exactly(stats, 0.25, 20.0)
    assert (stats.sq_grad_norm, stats.trace_sigma) == pytest.approx((0.25, 20.0))


def test_float32_tensor_norms_are_combined_in_float64() -> None:
    # |G_b|^2 = 1 + 2^-20 and |G_B|^2 = 1, both exact in float32, at b = 2 and B = 8:
    # |G|^2 = (8 - 2 (1 + 2^-20)) / 6 = 1 - 2^-19 / 6 and tr = 2^-20 / (1/2 - 1/8) = 2^-20 * 8 / 3,
    # which float32 arithmetic would round at about 1e-7.
    stats = GradientNoiseStats(decay=0.0)
    small, big = torch.tensor(1.0 + 2.0**-20), torch.tensor(1.0)
    assert small.dtype == torch.float32
    stats.update(small, 2, big, 8)
    assert stats.sq_grad_norm == pytest.approx(1.0 - 2.0**-19 / 6, rel=1e-14)
    assert stats.trace_sigma == pytest.approx(2.0**-20 * 8 / 3, rel=1e-14)


# ---- not measurable: None, never negative or infinite ----
def test_nothing_is_reported_before_the_first_update() -> None:
    stats = GradientNoiseStats()
    assert stats.steps == 0
    assert stats.sq_grad_norm is None
    assert stats.trace_sigma is None
    assert stats.noise_scale is None
    assert stats.gain_ratio(8, 2) is None


def test_unresolved_signal_gives_none() -> None:
    stats = GradientNoiseStats()
    # |G_B|^2 far below what |G_b|^2 implies: the |G|^2 estimate is negative.
    stats.update(10.0, 2, 1.0, 8)
    assert stats.sq_grad_norm is None
    assert stats.noise_scale is None
    assert stats.gain_ratio(4, 2) is None
    assert stats.trace_sigma == pytest.approx(24.0)  # (10 - 1) / (1/2 - 1/8)
    zero_signal = GradientNoiseStats()
    update_exactly(zero_signal, 0.0, 8.0)
    assert zero_signal.noise_scale is None


def test_unresolved_noise_reads_as_zero() -> None:
    stats = GradientNoiseStats()
    stats.update(1.0, 2, 1.5, 8)  # the small batch's norm below the big one's: tr estimate < 0
    assert stats.trace_sigma == 0.0
    assert stats.noise_scale == 0.0
    assert stats.gain_ratio(4, 2) == 1.0


def test_overflowing_and_non_finite_values_give_none() -> None:
    tiny_signal = GradientNoiseStats()
    update_exactly(tiny_signal, 1e-300, 1e300)  # tr / |G|^2 = 1e600 overflows
    assert tiny_signal.noise_scale is None
    poisoned = GradientNoiseStats()
    poisoned.update(float("nan"), 2, 1.0, 8)
    assert (poisoned.sq_grad_norm, poisoned.trace_sigma, poisoned.noise_scale) == (None,) * 3
    assert gain_ratio(float("inf"), 1.0, 4) is None
    assert gain_ratio(1.0, float("inf"), 4) is None


# ---- AdaScale's gain ratio ----
def test_gain_ratio_limits() -> None:
    assert gain_ratio(3.7, 0.2, 1) == 1.0
    assert gain_ratio(1e9, 1.0, 8) == pytest.approx(8.0, rel=1e-6)  # noise dominates
    assert gain_ratio(1e-9, 1.0, 8) == pytest.approx(1.0, rel=1e-6)  # signal dominates
    assert gain_ratio(-8.0, 1.0, 8) == 1.0  # a negative variance counts as 0 (raw: 0 / 0)
    # Rounding alone gives 7.000000000000001 and 0.29999999999999993 here.
    assert gain_ratio(1e13, 1e-10, 7) == 7.0
    assert gain_ratio(1e20, 1e-10, 0.3) == 0.3
    assert gain_ratio(1e13, 1e-10, 1.75) == 1.75  # raw 1.7500000000000002
    assert gain_ratio(1.0, 1.0, 3) == pytest.approx(2 / (1 / 3 + 1))
    assert gain_ratio(1.0, 0.0, 8) is None
    assert gain_ratio(1.0, -1.0, 8) is None
    assert gain_ratio(1e9, 1.0, 0.25) == pytest.approx(0.25, rel=1e-6)  # fewer GPUs than reference


@given(
    variance=st.floats(-1e6, 1e12, allow_nan=False),
    sq_grad_norm=st.floats(0.0, 1e12, exclude_min=True),
    scale=st.floats(1e-3, 1e3),
)
def test_gain_ratio_stays_between_1_and_the_scale(
    variance: float, sq_grad_norm: float, scale: float
) -> None:
    ratio = gain_ratio(variance, sq_grad_norm, scale)
    assert min(1.0, scale) <= ratio <= max(1.0, scale)


# ---- the GPU count the linear rule covers ----
# ---- the sync-free squared gradient norm ----


def model_with_grads() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    model.add_module("frozen", torch.nn.Linear(2, 2))  # never used: its .grad stays None
    model[:3](torch.randn(4, 5)).square().sum().backward()
    return model


def test_squared_grad_norm_equals_the_norm_of_all_grads() -> None:
    model = model_with_grads()
    grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
    assert len(grads) == 4
    expected = torch.linalg.vector_norm(torch.cat(grads)) ** 2
    result = squared_grad_norm(model.parameters())
    assert result.shape == () and result.dtype == torch.float32
    assert torch.allclose(result, expected, rtol=1e-6)


def test_squared_grad_norm_mixes_dtypes_and_upcasts_half_precision() -> None:
    half = torch.zeros(400, dtype=torch.float16, requires_grad=True)
    half.grad = torch.full_like(half, 60000.0)  # |grad| = 1.2e6: overflows float16
    double = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    double.grad = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    result = squared_grad_norm([half, double])
    assert result.dtype == torch.float64
    assert float(result) == pytest.approx(400 * 60000.0**2 + 14.0, rel=1e-6)
    assert float(squared_grad_norm([half])) == pytest.approx(400 * 60000.0**2, rel=1e-6)
    with pytest.raises(ValueError, match=r"^no parameter has a gradient$"):
        squared_grad_norm([torch.zeros(2, requires_grad=True)])


def test_norm_and_update_never_read_a_tensor_value() -> None:
    model = model_with_grads()
    stats = GradientNoiseStats()
    with host_reads_forbidden():
        big = squared_grad_norm(model.parameters())
        stats.update(big * 1.5, 2, big, 8)
        stats.update(big * 1.4, 2, big, 8)
    with_floats = GradientNoiseStats()
    with_floats.update(float(big) * 1.5, 2, float(big), 8)
    with_floats.update(float(big) * 1.4, 2, float(big), 8)
    assert stats.noise_scale == pytest.approx(with_floats.noise_scale, rel=1e-6)


@pytest.mark.cuda
def test_cuda_norm_and_update_do_not_synchronize() -> None:
    model = model_with_grads().cuda()
    stats = GradientNoiseStats()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        big = squared_grad_norm(model.parameters())
        stats.update(big * 1.5, 2, big, 8)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert stats.noise_scale is not None


# ---- checkpoints ----
def test_state_dict_round_trip_continues_identically() -> None:
    sampled = sample(per_process_mean=True)
    pairs = list(zip(sampled.small[:40], sampled.big[:40], strict=True))
    straight = GradientNoiseStats(decay=0.9)
    for small, big in pairs[:20]:
        straight.update(small, SMALL, big, BIG)  # tensors: the averages are tensors until saved
    state = json.loads(json.dumps(straight.state_dict()))
    assert {type(v) for v in straight.state_dict().values()} <= {int, float}
    resumed = GradientNoiseStats(decay=0.9)
    resumed.load_state_dict(state)
    assert resumed.steps == 20
    for small, big in pairs[20:]:
        straight.update(small, SMALL, big, BIG)
        resumed.update(small, SMALL, big, BIG)
    assert resumed.state_dict() == straight.state_dict()
    assert resumed.noise_scale == straight.noise_scale
    assert resumed.gain_ratio(8, SMALL) == straight.gain_ratio(8, SMALL)

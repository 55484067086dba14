"""The critical-batch law: fitting E = E_min (1 + B / B_crit) to epochs-to-target, its interval,
its refusals, and the epochs factor it gives a schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from det_scaling.errors import ConfigError
from det_scaling.scaling.critical_batch import (
    CriticalBatchFit,
    epochs_factor,
    fit_critical_batch,
)


def law(e_min: float, b_crit: float, batch: float) -> float:
    return e_min * (1 + batch / b_crit)


@pytest.mark.parametrize(
    ("e_min", "b_crit"), [(10.0, 256.0), (3.0, 1000.0), (24.0, 64.0), (1.5, 8192.0)]
)
def test_fit_recovers_the_law_from_noisy_points(e_min, b_crit):
    """Three seeds at each of six batch sizes, b_crit / 8 to 4 b_crit, epochs off the law by a
    factor exp(N(0, 0.03^2)) (each case its own draws: the fit is scale-free)."""
    rng = np.random.default_rng(int(b_crit))
    batches = [b_crit * 2.0**k for k in range(-3, 3) for _ in range(3)]
    epochs = [law(e_min, b_crit, b) * math.exp(0.03 * rng.standard_normal()) for b in batches]

    fit = fit_critical_batch(batches, epochs)

    assert fit.e_min == pytest.approx(e_min, rel=0.05)
    assert fit.b_crit == pytest.approx(b_crit, rel=0.15)
    low, high = fit.b_crit_interval
    assert low < b_crit < high
    assert low < fit.b_crit < high
    # An informative interval: bounded, and excluding a B_crit twice or half as large.
    assert b_crit / 2 < low and high < 2 * b_crit
    assert fit.points == tuple(zip(batches, epochs, strict=True))


def test_two_exact_points_give_the_law_exactly_and_no_interval():
    fit = fit_critical_batch([32, 512], [law(6.0, 128.0, 32), law(6.0, 128.0, 512)])
    assert fit.e_min == pytest.approx(6.0, rel=1e-12)
    assert fit.b_crit == pytest.approx(128.0, rel=1e-12)
    assert fit.b_crit_interval is None
    assert fit.points == ((32.0, 7.5), (512.0, 30.0))


def test_exact_points_give_an_interval_of_one_point():
    batches = [16, 64, 256, 1024]
    fit = fit_critical_batch(batches, [law(4.0, 300.0, b) for b in batches])
    assert fit.b_crit == pytest.approx(300.0, rel=1e-9)
    assert fit.b_crit_interval == pytest.approx((300.0, 300.0), rel=1e-6)


def test_epochs_round_trip_through_the_fitted_law():
    batches = [8, 64, 512]
    epochs = [law(12.0, 200.0, b) for b in batches]
    fit = fit_critical_batch(batches, epochs)
    for batch, measured in zip(batches, epochs, strict=True):
        assert fit.epochs(batch) == pytest.approx(measured, rel=1e-9)
    assert fit.epochs(fit.b_crit) == pytest.approx(2 * fit.e_min, rel=1e-12)
    with pytest.raises(ConfigError) as error:
        fit.epochs(0)
    assert str(error.value) == "batch must be a positive number, got 0"


def test_epochs_that_do_not_grow_give_an_infinite_critical_batch_with_a_lower_bound():
    """Seeds scatter, but the mean epochs at 16 and 64 are the same: no critical batch below 64;
    the scatter still rules out a small B_crit."""
    fit = fit_critical_batch([16, 16, 64, 64], [9.0, 11.0, 11.0, 9.0])
    assert fit.b_crit == math.inf
    assert fit.e_min == pytest.approx(10.0)
    assert fit.epochs(64) == fit.epochs(100_000) == pytest.approx(10.0)
    low, high = fit.b_crit_interval
    assert 0 < low < math.inf and high == math.inf


def test_growth_within_the_noise_leaves_the_interval_unbounded_above():
    fit = fit_critical_batch([16, 16, 64, 64], [9.0, 11.0, 9.2, 11.2])
    assert 0 < fit.b_crit < math.inf
    low, high = fit.b_crit_interval
    assert 0 < low < fit.b_crit and high == math.inf


def test_exactly_flat_epochs_have_an_infinite_critical_batch_and_interval():
    fit = fit_critical_batch([32, 64, 128], [5.0, 5.0, 5.0])
    assert fit.b_crit == math.inf and fit.b_crit_interval == (math.inf, math.inf)


@pytest.mark.parametrize(
    ("batch_sizes", "epochs", "message"),
    [
        ([32, 64], [5.0], "batch_sizes and epochs must have the same length, got 2 and 1"),
        ([32, 32, 32], [5.0, 6.0, 7.0], "at least two distinct batch sizes to fit B_crit, got [32"),
        ([32], [5.0], "at least two distinct batch sizes"),
        ([0, 64], [5.0, 6.0], "batch_sizes[0] must be a positive finite number, got 0"),
        ([32, math.inf], [5.0, 6.0], "batch_sizes[1] must be a positive finite number, got inf"),
        ([32, 64], [5.0, -6.0], "epochs[1] must be a positive finite number, got -6.0"),
        ([32, 64], [math.nan, 6.0], "epochs[0] must be a positive finite number, got nan"),
        ([32, 64], [True, 6.0], "epochs[0] must be a positive finite number, got True"),
        (
            [32, 64, 128],
            [5.0, 7.0, 6.5],
            "epochs fall as the batch grows: 7 at batch 64 but 6.5 at batch 128",
        ),
        ([8, 16], [10.0, 25.0], "epochs grow faster than the law"),
    ],
)
def test_bad_input_is_a_one_line_config_error(batch_sizes, epochs, message):
    with pytest.raises(ConfigError) as error:
        fit_critical_batch(batch_sizes, epochs)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_falling_epochs_are_compared_by_their_mean_at_each_batch():
    """A seed at 64 below one at 32 is scatter, not a fall: the means rise."""
    fit = fit_critical_batch([32, 32, 64, 64], [5.0, 7.0, 6.5, 6.7])
    assert fit.b_crit > 0


def test_epochs_factor_is_one_at_the_reference_and_grows_with_the_batch():
    assert epochs_factor(256, 256, 512) == 1.0
    factors = [epochs_factor(b, 64, 512) for b in (64, 128, 256, 1024, 8192)]
    assert factors == sorted(factors) and factors[0] < factors[-1]
    assert epochs_factor(1024, 256, 512) == pytest.approx(3 / 1.5)
    assert epochs_factor(1024, 256, math.inf) == 1.0


def test_epochs_factor_is_the_ratio_of_a_fits_epochs():
    batches = [32, 128, 512, 2048]
    rng = np.random.default_rng(7)
    epochs = [law(8.0, 400.0, b) * math.exp(0.05 * rng.standard_normal()) for b in batches]
    fit = fit_critical_batch(batches, epochs)
    assert isinstance(fit, CriticalBatchFit)
    for batch in (64, 1000, 4096):
        expected = fit.epochs(batch) / fit.epochs(128)
        assert epochs_factor(batch, 128, fit.b_crit) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 64, 512), "batch must be a positive number, got 0"),
        ((64, math.nan, 512), "reference_batch must be a positive number, got nan"),
        ((64, 32, -1.0), "b_crit must be a positive number or inf, got -1.0"),
    ],
)
def test_epochs_factor_refuses_non_positive_values(args, message):
    with pytest.raises(ConfigError) as error:
        epochs_factor(*args)
    assert str(error.value) == message

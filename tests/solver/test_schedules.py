"""LR schedules: detectron2's meaning kept, the new decays' formulas, epoch-space invariance under
scaling, and reduce-on-plateau with its checkpointed state."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

import det_scaling
from det_scaling.errors import ConfigError
from det_scaling.solver import Plateau, build_lr_multiplier, build_lr_scheduler
from det_scaling.solver.schedules import (
    FlatParamScheduler,
    InverseTimeParamScheduler,
    PolynomialParamScheduler,
    with_warmup,
)

VOC_CONFIG = (
    Path(__file__).resolve().parents[2] / "configs/VOC07-Detection/faster_rcnn_R_50_FPN.yaml"
)


def small_cfg(**solver: object):
    """A short schedule: BASE_LR 0.02 over 300 iterations, steps at 150 and 250, warmup 30."""
    cfg = det_scaling.get_cfg()
    cfg.SOLVER.BASE_LR = 0.02
    cfg.SOLVER.MAX_ITER = 300
    cfg.SOLVER.STEPS = (150, 250)
    cfg.SOLVER.WARMUP_ITERS = 30
    for key, value in solver.items():
        cfg.SOLVER[key] = value
    return cfg


def _optimizer(lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr, momentum=0.9)


def lr_at_every_iteration(scheduler_builder, cfg) -> list[float]:
    """The LR each iteration 0..MAX_ITER trains with, stepping the scheduler as training does."""
    optimizer = _optimizer(cfg.SOLVER.BASE_LR)
    scheduler = scheduler_builder(cfg, optimizer)
    lrs = [optimizer.param_groups[0]["lr"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
        for _ in range(cfg.SOLVER.MAX_ITER):
            optimizer.step()
            scheduler.step()
            lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("warmup_method", ["linear", "constant"])
@pytest.mark.parametrize(
    "name, steps",
    [
        ("WarmupMultiStepLR", (150, 250)),
        ("WarmupMultiStepLR", (100, 400)),  # a step past MAX_ITER is dropped
        ("WarmupCosineLR", (150, 250)),
    ],
)
def test_detectron2_schedules_give_detectron2_lr_at_every_iteration(
    name: str, steps: tuple, warmup_method: str
) -> None:
    from detectron2.solver import build_lr_scheduler as detectron2_build_lr_scheduler

    cfg = small_cfg(LR_SCHEDULER_NAME=name, STEPS=steps, WARMUP_METHOD=warmup_method)
    ours = lr_at_every_iteration(build_lr_scheduler, cfg)
    theirs = lr_at_every_iteration(detectron2_build_lr_scheduler, cfg)
    assert ours == pytest.approx(theirs, rel=1e-12, abs=0.0)
    assert len(set(ours)) >= 3  # the schedule does change


@pytest.mark.parametrize(
    "name, settings, formula",
    [
        ("WarmupPolyLR", {"POLY_LR_POWER": 2.0}, lambda t: 0.02 * (1 - t) ** 2),
        (
            "WarmupPolyLR",
            {"POLY_LR_POWER": 0.9, "BASE_LR_END": 0.002},
            lambda t: 0.002 + 0.018 * (1 - t) ** 0.9,
        ),
        ("WarmupExponentialLR", {"EXPONENTIAL_LR_DECAY": 0.01}, lambda t: 0.02 * 0.01**t),
        ("WarmupInverseTimeLR", {"INVERSE_TIME_LR_K": 9.0}, lambda t: 0.02 / (1 + 9.0 * t)),
        ("WarmupConstantLR", {}, lambda t: 0.02),
        (
            "WarmupCosineLR",
            {"BASE_LR_END": 0.002},
            lambda t: 0.002 + 0.009 * (1 + math.cos(math.pi * t)),
        ),
    ],
)
def test_decay_follows_its_formula_of_progress_after_warmup(name, settings, formula) -> None:
    cfg = small_cfg(LR_SCHEDULER_NAME=name, **settings)
    lrs = lr_at_every_iteration(build_lr_scheduler, cfg)
    for iteration in range(cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.MAX_ITER + 1):
        assert lrs[iteration] == pytest.approx(formula(iteration / 300), rel=1e-12)
    # Linear warmup from WARMUP_FACTOR * BASE_LR to the decay's value where warmup ends.
    assert lrs[0] == pytest.approx(0.02 * cfg.SOLVER.WARMUP_FACTOR, rel=1e-12)
    assert lrs[15] == pytest.approx((lrs[0] + formula(30 / 300)) / 2, rel=1e-9)


def test_exponential_warmup_grows_geometrically_into_the_schedule() -> None:
    cfg = small_cfg(
        LR_SCHEDULER_NAME="WarmupCosineLR", WARMUP_METHOD="exponential", WARMUP_FACTOR=0.01
    )
    lrs = lr_at_every_iteration(build_lr_scheduler, cfg)
    ratios = [lrs[i + 1] / lrs[i] for i in range(29)]
    assert ratios == pytest.approx([ratios[0]] * 29, rel=1e-9)
    assert ratios[0] > 1
    assert lrs[0] == pytest.approx(0.02 * 0.01, rel=1e-12)
    cosine_at_end_of_warmup = 0.01 * (1 + math.cos(math.pi * 30 / 300))
    assert lrs[30] == pytest.approx(cosine_at_end_of_warmup, rel=1e-12)
    assert lrs[29] * ratios[0] == pytest.approx(cosine_at_end_of_warmup, rel=1e-9)


@pytest.mark.parametrize(
    "name",
    [
        "WarmupMultiStepLR",
        "WarmupCosineLR",
        "WarmupStepWithFixedGammaLR",
        "WarmupPolyLR",
        "WarmupInverseTimeLR",
    ],
)
@pytest.mark.parametrize("rescale_interval", [False, True], ids=["fixed", "rescaled"])
@pytest.mark.parametrize("num_gpus", [2, 8])
def test_scaled_schedules_are_the_same_curve_in_epoch_space(
    name: str, rescale_interval: bool, num_gpus: int
) -> None:
    cfg = det_scaling.load_cfg(
        str(VOC_CONFIG),
        ["SOLVER.LR_SCHEDULER_NAME", name, "SOLVER.RESCALE_INTERVAL", str(rescale_interval)],
    )
    one = det_scaling.plan_scaling(cfg, 1)
    many = det_scaling.plan_scaling(cfg, num_gpus)
    assert many.cfg.SOLVER.MAX_ITER * num_gpus == one.cfg.SOLVER.MAX_ITER
    curve_one = build_lr_multiplier(one.cfg)
    curve_many = build_lr_multiplier(many.cfg)
    max_iter = many.cfg.SOLVER.MAX_ITER
    for iteration in range(max_iter + 1):  # the same images seen: num_gpus times the iterations
        lr_many = many.cfg.SOLVER.BASE_LR * curve_many(iteration / max_iter)
        lr_one = one.cfg.SOLVER.BASE_LR * curve_one(iteration * num_gpus / (max_iter * num_gpus))
        assert lr_many == pytest.approx(lr_one * many.lr_factor, rel=1e-9)


def test_unknown_names_and_bad_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"SOLVER\.LR_SCHEDULER_NAME: unknown name 'Nope'"):
        build_lr_multiplier(small_cfg(LR_SCHEDULER_NAME="Nope"))
    with pytest.raises(ValueError, match=r"SOLVER\.WARMUP_FACTOR must be > 0"):
        build_lr_multiplier(small_cfg(WARMUP_METHOD="exponential", WARMUP_FACTOR=0.0))
    with pytest.raises(ValueError, match=r"SOLVER\.WARMUP_METHOD"):
        build_lr_multiplier(small_cfg(WARMUP_METHOD="cubic"))
    with pytest.raises(ValueError, match=r"SOLVER\.BASE_LR_END"):
        build_lr_multiplier(small_cfg(LR_SCHEDULER_NAME="WarmupPolyLR", BASE_LR_END=0.5))


def test_new_schedule_classes_take_their_defaults_and_the_edges_of_their_ranges() -> None:
    assert FlatParamScheduler()(0.0) == 1.0
    assert FlatParamScheduler()(1.0) == 1.0
    # power 0 and k 0 are allowed: no decay at all.
    assert PolynomialParamScheduler(0.5, 0.1, 0.0)(0.3) == 0.5
    assert InverseTimeParamScheduler(0.4, 0.0)(0.7) == 0.4
    assert InverseTimeParamScheduler(0.4, 0.5)(1.0) == pytest.approx(0.4 / 1.5, rel=1e-12)
    with pytest.raises(ConfigError, match="power"):
        PolynomialParamScheduler(0.5, 0.1, -0.5)
    with pytest.raises(ConfigError, match="k must be"):
        InverseTimeParamScheduler(0.4, -0.5)


def test_with_warmup_starts_at_the_factor_times_the_schedules_start_and_joins_it() -> None:
    def falling(where: float) -> float:
        return 2.0 * (1.0 - where)

    schedule = PolynomialParamScheduler(2.0, 0.0, 1.0)  # 2 (1 - where)
    # Defaults: linear, not rescaled: 0.2 -> falling(0.2) = 1.6 over the first 0.2, then falling.
    default = with_warmup(schedule, 0.1, 0.2)
    assert default(0.0) == pytest.approx(0.2, rel=1e-12)
    assert default(0.1) == pytest.approx(0.9, rel=1e-12)
    assert default(0.6) == pytest.approx(falling(0.6), rel=1e-12)
    # Exponential: geometric from 0.2 to 1.6.
    exponential = with_warmup(schedule, 0.1, 0.2, "exponential")
    assert exponential(0.0) == pytest.approx(0.2, rel=1e-12)
    assert exponential(0.1) == pytest.approx(math.sqrt(0.2 * 1.6), rel=1e-12)
    assert exponential(0.6) == pytest.approx(falling(0.6), rel=1e-12)
    # Rescaled: 0.2 -> falling(0) = 2 over the first 0.2, then falling over the rest as [0, 1].
    rescaled = with_warmup(schedule, 0.1, 0.2, "linear", rescale_interval=True)
    assert rescaled(0.0) == pytest.approx(0.2, rel=1e-12)
    assert rescaled(0.1) == pytest.approx(1.1, rel=1e-12)
    assert rescaled(0.6) == pytest.approx(falling(0.5), rel=1e-12)


def test_with_warmup_refuses_a_length_past_the_run_and_exponential_growth_from_zero() -> None:
    with pytest.raises(ConfigError, match=r"in \[0, 1\], got 1.5"):
        with_warmup(FlatParamScheduler(), 0.1, 1.5)
    rising_from_zero = PolynomialParamScheduler(0.0, 1.0, 1.0)
    with pytest.raises(ConfigError, match="starts above 0"):
        with_warmup(rising_from_zero, 0.1, 0.2, "exponential")


# ---- reduce on plateau ----


def test_plateau_reduces_after_more_than_patience_evaluations_without_improvement() -> None:
    plateau = Plateau(mode="max", reduce_factor=0.5, patience=2)
    assert [plateau.observe(v) for v in (0.30, 0.40, 0.40, 0.39)] == [False] * 4
    assert plateau.factor == 1.0
    assert plateau.observe(0.40) is True  # the third evaluation in a row without improvement
    assert plateau.factor == 0.5
    assert plateau.observe(0.41) is False  # an improvement resets the count
    assert [plateau.observe(0.41) for _ in range(3)] == [False, False, True]
    assert plateau.factor == 0.25
    assert plateau.num_reductions == 2


def test_plateau_threshold_modes_and_min_mode() -> None:
    relative = Plateau(mode="min", patience=0, threshold=0.1, threshold_mode="rel")
    relative.observe(1.0)
    assert relative.observe(0.95) is True  # 5% better is not 10% better
    absolute = Plateau(mode="min", patience=0, threshold=0.01, threshold_mode="abs")
    absolute.observe(1.0)
    assert absolute.observe(0.98) is False  # better by more than 0.01
    assert absolute.observe(0.975) is True  # better by less than 0.01


def test_plateau_cooldown_does_not_count_evaluations_after_a_reduction() -> None:
    plateau = Plateau(mode="max", patience=0, cooldown=2)
    plateau.observe(1.0)
    assert plateau.observe(0.5) is True
    assert [plateau.observe(0.5) for _ in range(3)] == [False, False, True]


def plateau_cfg(**plateau: object):
    cfg = small_cfg(LR_SCHEDULER_NAME="WarmupConstantLR")
    cfg.SOLVER.PLATEAU.ENABLED = True
    cfg.SOLVER.PLATEAU.PATIENCE = 0
    cfg.SOLVER.PLATEAU.FACTOR = 0.1
    for key, value in plateau.items():
        cfg.SOLVER.PLATEAU[key] = value
    return cfg


def advance(scheduler, optimizer, steps: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            optimizer.step()
            scheduler.step()


def test_plateau_scales_the_schedule_from_the_next_step_down_to_min_lr() -> None:
    cfg = plateau_cfg(MIN_LR=0.0005)
    optimizer = _optimizer(cfg.SOLVER.BASE_LR)
    scheduler = build_lr_scheduler(cfg, optimizer)
    advance(scheduler, optimizer, 40)
    assert scheduler.observe(0.5) is False
    assert scheduler.observe(0.4) is True
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.002)
    advance(scheduler, optimizer, 5)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.002)
    assert scheduler.observe(0.3) is True
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0005)  # not 0.0002


def test_plateau_ignores_evaluations_during_warmup() -> None:
    cfg = plateau_cfg()
    optimizer = _optimizer(cfg.SOLVER.BASE_LR)
    scheduler = build_lr_scheduler(cfg, optimizer)
    advance(scheduler, optimizer, 10)
    assert [scheduler.observe(v) for v in (0.5, 0.1, 0.1)] == [False, False, False]
    assert scheduler.plateau.best == -math.inf
    advance(scheduler, optimizer, 30)
    scheduler.observe(0.5)
    assert scheduler.plateau.best == 0.5


def test_plateau_state_survives_the_scheduler_state_dict() -> None:
    cfg = plateau_cfg(PATIENCE=1)
    optimizer = _optimizer(cfg.SOLVER.BASE_LR)
    scheduler = build_lr_scheduler(cfg, optimizer)
    advance(scheduler, optimizer, 50)
    for value in (0.5, 0.4, 0.4, 0.4):  # a reduction, then one evaluation without improvement
        scheduler.observe(value)
    saved = scheduler.state_dict()
    assert saved["plateau"]["factor"] == pytest.approx(0.1)
    assert saved["last_epoch"] == 50

    resumed_optimizer = _optimizer(cfg.SOLVER.BASE_LR)
    resumed = build_lr_scheduler(cfg, resumed_optimizer)
    resumed.load_state_dict(saved)
    assert resumed_optimizer.param_groups[0]["lr"] == pytest.approx(0.002)
    # One more evaluation without improvement reduces again in both: the count was restored.
    assert resumed.observe(0.4) is True
    assert scheduler.observe(0.4) is True
    assert resumed.state_dict() == scheduler.state_dict()


def test_state_saved_with_another_max_iter_resumes_at_its_iteration_with_this_base_lr() -> None:
    # detectron2's meaning of a resumed state: the same iteration, here on a longer schedule;
    # the base LR is this scheduler's (the config's), not the checkpoint's. A resume at another
    # total batch moves the iteration afterwards (det_scaling.engine.resume).
    cfg = small_cfg(LR_SCHEDULER_NAME="WarmupCosineLR")
    optimizer = _optimizer(cfg.SOLVER.BASE_LR)
    scheduler = build_lr_scheduler(cfg, optimizer)
    advance(scheduler, optimizer, 120)
    saved = scheduler.state_dict()
    longer = small_cfg(LR_SCHEDULER_NAME="WarmupCosineLR", MAX_ITER=600, BASE_LR=0.04)
    new_optimizer = _optimizer(longer.SOLVER.BASE_LR)
    resumed = build_lr_scheduler(longer, new_optimizer)
    resumed.load_state_dict(saved)
    assert resumed.last_epoch == 120
    assert resumed.base_lrs == [0.04]
    fresh_optimizer = _optimizer(longer.SOLVER.BASE_LR)
    advance(build_lr_scheduler(longer, fresh_optimizer), fresh_optimizer, 120)
    assert new_optimizer.param_groups[0]["lr"] == fresh_optimizer.param_groups[0]["lr"]


def test_observe_without_plateau_says_how_to_enable_it() -> None:
    cfg = small_cfg()
    scheduler = build_lr_scheduler(cfg, _optimizer(cfg.SOLVER.BASE_LR))
    with pytest.raises(RuntimeError, match=r"SOLVER\.PLATEAU\.ENABLED"):
        scheduler.observe(1.0)

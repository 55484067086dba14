"""Upstream detectron2's solver, exactly: every scheduler name upstream's ``build_lr_scheduler``
accepts, with ``SOLVER.RESCALE_INTERVAL`` False and True and every warmup method, gives the same
LR at every iteration as an independent computation (written out below with exact fractions),
and, when the installed detectron2 is upstream main, as upstream's own builder."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from fractions import Fraction

import pytest
import torch
from detectron2.config import get_cfg as detectron2_get_cfg

import det_scaling
from det_scaling.solver import build_lr_scheduler
from det_scaling.solver.schedules import WARMUP_METHODS

# Feature detection: upstream main still reports __version__ "0.6".
UPSTREAM_SOLVER = "RESCALE_INTERVAL" in detectron2_get_cfg().SOLVER
NEEDS_UPSTREAM = pytest.mark.skipif(
    not UPSTREAM_SOLVER,
    reason="compares with upstream detectron2 main's build_lr_scheduler (SOLVER.RESCALE_INTERVAL, "
    "WarmupStepWithFixedGammaLR); the installed detectron2 is v0.6, which has neither",
)

MAX_ITER, WARMUP_ITERS = 300, 30
# Every name upstream's build_lr_scheduler accepts, with the settings it reads.
UPSTREAM_SCHEDULES = [
    ("WarmupMultiStepLR", {"STEPS": (150, 250)}),
    ("WarmupMultiStepLR", {"STEPS": (100, 400)}),  # a step past MAX_ITER is dropped
    ("WarmupCosineLR", {"BASE_LR_END": 0.0}),
    ("WarmupCosineLR", {"BASE_LR_END": 0.002}),
    ("WarmupStepWithFixedGammaLR", {"NUM_DECAYS": 3}),
    ("WarmupStepWithFixedGammaLR", {"NUM_DECAYS": 4, "GAMMA": 0.5}),
]


def parity_cfg(name: str, settings: dict, rescale_interval: bool, warmup_method: str):
    cfg = det_scaling.get_cfg()
    solver = cfg.SOLVER
    solver.LR_SCHEDULER_NAME = name
    solver.BASE_LR = 0.02
    solver.MAX_ITER = MAX_ITER
    solver.WARMUP_ITERS = WARMUP_ITERS
    solver.WARMUP_FACTOR = 0.01
    solver.WARMUP_METHOD = warmup_method
    solver.RESCALE_INTERVAL = rescale_interval
    for key, value in settings.items():
        solver[key] = value
    return cfg


def lrs_of(builder: Callable, cfg, steps: int) -> list[float]:
    """The LR of iterations 0..steps, the scheduler stepped once per iteration as in training."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.SOLVER.BASE_LR)
    scheduler = builder(cfg, optimizer)
    lrs = [optimizer.param_groups[0]["lr"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
        for _ in range(steps):
            optimizer.step()
            scheduler.step()
            lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def expected_lr(cfg, iteration: int) -> float:
    """The LR of ``iteration`` from the definitions: the decay of progress in [0, 1] (exact
    fractions, so no step boundary depends on rounding), after a warmup of WARMUP_ITERS that
    joins the decay where it is at WARMUP_ITERS, or (RESCALE_INTERVAL) at its start, the decay
    then running over the iterations left."""
    s = cfg.SOLVER
    total, warmup = s.MAX_ITER, min(s.WARMUP_ITERS, s.MAX_ITER)

    def decay(progress: Fraction) -> float:
        if s.LR_SCHEDULER_NAME == "WarmupMultiStepLR":
            return s.GAMMA ** sum(1 for step in s.STEPS if step <= progress * total)
        if s.LR_SCHEDULER_NAME == "WarmupCosineLR":
            end = s.BASE_LR_END / s.BASE_LR
            return end + (1 - end) * (1 + math.cos(math.pi * progress)) / 2
        assert s.LR_SCHEDULER_NAME == "WarmupStepWithFixedGammaLR"
        return s.GAMMA ** min(math.floor(progress * (s.NUM_DECAYS + 1)), s.NUM_DECAYS)

    if iteration < warmup:
        start = s.WARMUP_FACTOR * decay(Fraction(0))
        end = decay(Fraction(0)) if s.RESCALE_INTERVAL else decay(Fraction(warmup, total))
        t = iteration / warmup
        multiplier = {
            "linear": start + t * (end - start),
            "constant": start,
            "exponential": start * (end / start) ** t,
        }[s.WARMUP_METHOD]
    elif s.RESCALE_INTERVAL:
        multiplier = decay(Fraction(iteration - warmup, total - warmup))
    else:
        multiplier = decay(Fraction(iteration, total))
    return s.BASE_LR * multiplier


@pytest.mark.parametrize("warmup_method", WARMUP_METHODS)
@pytest.mark.parametrize("rescale_interval", [False, True], ids=["fixed", "rescaled"])
@pytest.mark.parametrize("name, settings", UPSTREAM_SCHEDULES)
def test_upstream_schedules_give_the_defined_lr_at_every_iteration(
    name: str, settings: dict, rescale_interval: bool, warmup_method: str
) -> None:
    cfg = parity_cfg(name, settings, rescale_interval, warmup_method)
    ours = lrs_of(build_lr_scheduler, cfg, MAX_ITER)
    expected = [expected_lr(cfg, iteration) for iteration in range(MAX_ITER + 1)]
    assert ours == pytest.approx(expected, rel=1e-12, abs=0.0)
    assert len(set(ours[WARMUP_ITERS:])) >= 2  # the decay does change after warmup


@NEEDS_UPSTREAM
@pytest.mark.parametrize("warmup_method", WARMUP_METHODS)
@pytest.mark.parametrize("rescale_interval", [False, True], ids=["fixed", "rescaled"])
@pytest.mark.parametrize("name, settings", UPSTREAM_SCHEDULES)
def test_upstream_schedules_give_upstream_detectron2s_lr_at_every_iteration(
    name: str, settings: dict, rescale_interval: bool, warmup_method: str
) -> None:
    from detectron2.solver import build_lr_scheduler as upstream_build_lr_scheduler

    cfg = parity_cfg(name, settings, rescale_interval, warmup_method)
    # Upstream's fixed-gamma schedule raises IndexError when stepped past the last iteration
    # (its own tests say so); ours keeps the last value there, so compare the trained iterations.
    steps = MAX_ITER - 1 if name == "WarmupStepWithFixedGammaLR" else MAX_ITER
    ours = lrs_of(build_lr_scheduler, cfg, steps)
    first = 0
    if warmup_method == "exponential":
        # Upstream has no exponential warmup: compare what follows the warmup, which does not
        # depend on the warmup method (the warmup itself is checked against the definition).
        cfg.SOLVER.WARMUP_METHOD = "linear"
        first = WARMUP_ITERS
    theirs = lrs_of(upstream_build_lr_scheduler, cfg, steps)
    assert ours[first:] == pytest.approx(theirs[first:], rel=1e-12, abs=0.0)


def test_rescale_interval_changes_where_warmup_joins_the_schedule() -> None:
    """The two settings differ as upstream documents: fixed joins the decay at WARMUP_ITERS,
    rescaled at its start and shifts every later step (so the parity above tests both)."""
    fixed = lrs_of(build_lr_scheduler, parity_cfg(*UPSTREAM_SCHEDULES[0], False, "linear"), 300)
    rescaled = lrs_of(build_lr_scheduler, parity_cfg(*UPSTREAM_SCHEDULES[0], True, "linear"), 300)
    assert fixed[WARMUP_ITERS:] == pytest.approx([0.02] * 120 + [0.002] * 100 + [0.0002] * 51)
    # The steps at 150 and 250 of a 300-iteration run, over the 270 iterations after warmup.
    assert rescaled.index(pytest.approx(0.002), WARMUP_ITERS) == WARMUP_ITERS + 135
    assert rescaled.index(pytest.approx(0.0002), WARMUP_ITERS) == WARMUP_ITERS + 225


def test_upstream_solver_keys_are_added_with_upstream_defaults_only_when_missing() -> None:
    upstream_defaults = {"BASE_LR_END": 0.0, "NUM_DECAYS": 3, "RESCALE_INTERVAL": False}
    detectron2_solver = detectron2_get_cfg().SOLVER
    solver = det_scaling.get_cfg().SOLVER
    for key, default in upstream_defaults.items():
        assert solver[key] == detectron2_solver.get(key, default), key
    cfg = detectron2_get_cfg()
    cfg.SOLVER.NUM_DECAYS = 5
    cfg.SOLVER.RESCALE_INTERVAL = True
    det_scaling.add_scaling_config(cfg)
    assert (cfg.SOLVER.NUM_DECAYS, cfg.SOLVER.RESCALE_INTERVAL) == (5, True)


def test_a_config_written_for_upstream_loads_and_builds(tmp_path) -> None:
    config = tmp_path / "upstream.yaml"
    config.write_text(
        "SOLVER:\n"
        "  LR_SCHEDULER_NAME: WarmupStepWithFixedGammaLR\n"
        "  NUM_DECAYS: 2\n"
        "  RESCALE_INTERVAL: True\n"
        "  BASE_LR: 0.02\n"
        "  MAX_ITER: 90\n"
        "  WARMUP_ITERS: 0\n"
    )
    cfg = det_scaling.load_cfg(str(config))
    lrs = lrs_of(build_lr_scheduler, cfg, 90)
    assert lrs[:30] == pytest.approx([0.02] * 30)
    assert lrs[30:60] == pytest.approx([0.002] * 30)
    assert lrs[60:] == pytest.approx([0.0002] * 31)  # the last value also after the last step


@pytest.mark.parametrize(
    "settings, message",
    [
        (
            {"LR_SCHEDULER_NAME": "WarmupStepWithFixedGammaLR", "NUM_DECAYS": 0},
            r"SOLVER\.NUM_DECAYS must be a positive integer",
        ),
        (
            {"LR_SCHEDULER_NAME": "WarmupStepWithFixedGammaLR", "GAMMA": 0.0},
            r"SOLVER\.GAMMA must be a positive number",
        ),
        ({"LR_SCHEDULER_NAME": "WarmupCosineLR", "BASE_LR_END": 0.03}, r"SOLVER\.BASE_LR_END"),
        ({"LR_SCHEDULER_NAME": "WarmupCosineLR", "BASE_LR_END": -0.001}, r"SOLVER\.BASE_LR_END"),
        (
            {"RESCALE_INTERVAL": True, "WARMUP_ITERS": 300},
            r"SOLVER\.RESCALE_INTERVAL True needs SOLVER\.WARMUP_ITERS < SOLVER\.MAX_ITER",
        ),
    ],
)
def test_bad_settings_name_the_key(settings: dict, message: str) -> None:
    cfg = parity_cfg("WarmupMultiStepLR", {"STEPS": (150,)}, False, "linear")
    for key, value in settings.items():
        cfg.SOLVER[key] = value
    with pytest.raises(ValueError, match=message):
        lrs_of(build_lr_scheduler, cfg, 0)

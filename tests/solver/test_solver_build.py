"""The builders and registries, in a plain loop and in detectron2's trainers."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import det_scaling
from det_scaling.engine import PlateauHook, SolverMixin, add_plateau_hook
from det_scaling.errors import ConfigError
from det_scaling.solver import (
    LARS,
    LR_SCHEDULER_REGISTRY,
    OPTIMIZER_REGISTRY,
    ProgressLRScheduler,
    build_lr_scheduler,
    build_optimizer,
)

# isort: split
from detectron2.engine import DefaultTrainer, SimpleTrainer, hooks
from fvcore.common.param_scheduler import LinearParamScheduler

torch.set_num_threads(1)


class TinyRegressor(nn.Module):
    """A two-layer network with a norm layer, returning detectron2's loss dict."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs, targets = batch
        return {"loss_mse": F.mse_loss(self.net(inputs), targets)}


def batches(seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """An endless stream of batches of a fixed linear regression problem."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(4, 1, generator=generator)
    while True:
        inputs = torch.randn(32, 4, generator=generator)
        yield inputs, inputs @ weights


def solver_cfg(**solver: object):
    cfg = det_scaling.get_cfg()
    cfg.SOLVER.BASE_LR = 0.5
    cfg.SOLVER.MAX_ITER = 40
    cfg.SOLVER.WARMUP_ITERS = 4
    cfg.SOLVER.WEIGHT_DECAY = 1e-4
    for key, value in solver.items():
        cfg.SOLVER[key] = value
    return cfg


def test_registries_hold_the_documented_names() -> None:
    assert {"SGD", "LARS", "LARC", "AdamW"} <= set(OPTIMIZER_REGISTRY.names())
    assert {
        "WarmupMultiStepLR",
        "WarmupCosineLR",
        "WarmupPolyLR",
        "WarmupExponentialLR",
        "WarmupInverseTimeLR",
        "WarmupConstantLR",
    } <= set(LR_SCHEDULER_REGISTRY.names())


def test_sgd_is_built_by_detectron2() -> None:
    from detectron2.solver import build_optimizer as detectron2_build_optimizer

    model = TinyRegressor()
    cfg = solver_cfg(OPTIMIZER="SGD")
    ours, theirs = build_optimizer(cfg, model), detectron2_build_optimizer(cfg, model)
    assert type(ours) is type(theirs) is torch.optim.SGD
    assert ours.param_groups == theirs.param_groups


def test_unknown_optimizer_error_lists_the_registered_names() -> None:
    with pytest.raises(ValueError, match=r"SOLVER\.OPTIMIZER: unknown name 'Adam'.*AdamW"):
        build_optimizer(solver_cfg(OPTIMIZER="Adam"), TinyRegressor())


def _groups_by_parameter(optimizer: torch.optim.Optimizer) -> dict[int, dict]:
    return {id(p): group for group in optimizer.param_groups for p in group["params"]}


@pytest.mark.parametrize("name, clip", [("LARS", False), ("LARC", True)])
def test_lars_builder_excludes_biases_and_norm_parameters(name: str, clip: bool) -> None:
    model = TinyRegressor()
    optimizer = build_optimizer(solver_cfg(OPTIMIZER=name), model)
    assert isinstance(optimizer, LARS)
    groups = _groups_by_parameter(optimizer)
    first, norm, last = model.net[0], model.net[1], model.net[3]
    for adapted in (first.weight, last.weight):
        assert groups[id(adapted)]["lars_exclude"] is False
        assert groups[id(adapted)]["weight_decay"] == 1e-4
    for excluded in (first.bias, norm.weight, norm.bias, last.bias):
        assert groups[id(excluded)]["lars_exclude"] is True
        assert groups[id(excluded)]["weight_decay"] == 0.0
    assert len(optimizer.param_groups) == 2  # merged back into as few groups as possible
    assert all(group["clip"] is clip for group in optimizer.param_groups)


@pytest.mark.parametrize("name", ["LARS", "LARC"])
def test_lars_takes_every_setting_from_the_config(name: str) -> None:
    """Values unlike the constructor's defaults, so that a setting the builder drops shows."""
    cfg = solver_cfg(OPTIMIZER=name, MOMENTUM=0.7, NESTEROV=True, WEIGHT_DECAY=3e-3)
    cfg.SOLVER.LARS.TRUST_COEFFICIENT = 0.005
    cfg.SOLVER.LARS.EPS = 1e-5
    optimizer = build_optimizer(cfg, TinyRegressor())
    assert isinstance(optimizer, LARS)
    expected = {
        "lr": 0.5,
        "momentum": 0.7,
        "nesterov": True,
        "trust_coefficient": 0.005,
        "eps": 1e-5,
        "clip": name == "LARC",
    }
    for group in optimizer.param_groups:
        assert {key: group[key] for key in expected} == expected
        assert group["weight_decay"] == (0.0 if group["lars_exclude"] else 3e-3)


def test_lars_builder_keeps_detectron2_groups_when_exclusion_is_off() -> None:
    model = TinyRegressor()
    cfg = solver_cfg(OPTIMIZER="LARS", WEIGHT_DECAY_NORM=0.0, BIAS_LR_FACTOR=2.0)
    cfg.SOLVER.LARS.EXCLUDE_BIAS_AND_NORM = False
    groups = _groups_by_parameter(build_optimizer(cfg, model))
    assert not any(group["lars_exclude"] for group in groups.values())
    assert groups[id(model.net[1].weight)]["weight_decay"] == 0.0  # detectron2's norm setting
    assert groups[id(model.net[0].bias)]["lr"] == 1.0  # detectron2's BIAS_LR_FACTOR
    assert groups[id(model.net[0].weight)]["weight_decay"] == 1e-4


def test_adamw_takes_its_settings_from_the_config() -> None:
    cfg = solver_cfg(OPTIMIZER="AdamW")
    cfg.SOLVER.ADAMW.BETAS = (0.8, 0.95)
    optimizer = build_optimizer(cfg, TinyRegressor())
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.95)


def test_gradient_clipping_comes_from_detectron2() -> None:
    cfg = solver_cfg(OPTIMIZER="LARC")
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 2**-10  # exact in float32
    model = TinyRegressor()
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, LARS)
    sum(model(next(batches())).values()).backward()
    optimizer.step()
    assert max(p.grad.abs().max().item() for p in model.parameters()) == 2**-10


def test_larc_with_poly_schedule_trains_a_small_model_in_a_plain_loop() -> None:
    cfg = solver_cfg(OPTIMIZER="LARC", LR_SCHEDULER_NAME="WarmupPolyLR", MAX_ITER=80)
    torch.manual_seed(0)
    model = TinyRegressor()
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    data = batches()
    losses, lrs = [], []
    for _ in range(cfg.SOLVER.MAX_ITER):
        lrs.append(optimizer.param_groups[0]["lr"])
        loss = sum(model(next(data)).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    assert lrs[10] == pytest.approx(0.5 * (1 - 10 / 80) ** 2)  # poly, power 2, after warmup


def test_registered_names_become_config_choices() -> None:
    @OPTIMIZER_REGISTRY.register()
    def PlainSGDForTest(cfg, model):  # the function name is the config name
        return torch.optim.SGD(model.parameters(), lr=cfg.SOLVER.BASE_LR)

    @LR_SCHEDULER_REGISTRY.register(name="WarmupLinearForTest")
    def _linear(cfg):
        return LinearParamScheduler(1.0, 0.0)

    try:
        cfg = solver_cfg(
            OPTIMIZER="PlainSGDForTest", LR_SCHEDULER_NAME="WarmupLinearForTest", WARMUP_ITERS=0
        )
        optimizer = build_optimizer(cfg, TinyRegressor())
        assert type(optimizer) is torch.optim.SGD
        scheduler = build_lr_scheduler(cfg, optimizer)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(10):
                scheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * (1 - 10 / 40))
    finally:
        del OPTIMIZER_REGISTRY._obj_map["PlainSGDForTest"]
        del LR_SCHEDULER_REGISTRY._obj_map["WarmupLinearForTest"]


def test_simple_trainer_runs_larc_with_poly_schedule() -> None:
    cfg = solver_cfg(OPTIMIZER="LARC", LR_SCHEDULER_NAME="WarmupPolyLR", MAX_ITER=20)
    torch.manual_seed(0)
    model = TinyRegressor()
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    trainer = SimpleTrainer(model, batches(), optimizer)
    trainer.register_hooks([hooks.LRScheduler(optimizer, scheduler)])
    trainer.train(0, cfg.SOLVER.MAX_ITER)
    history = trainer.storage.history("lr").values()
    expected = [0.5 * (1 - i / 20) ** 2 for i in range(4, 20)]
    assert [lr for lr, _ in history[4:]] == pytest.approx(expected)
    losses = [loss for loss, _ in trainer.storage.history("total_loss").values()]
    assert losses[-1] < losses[0]


class ScriptedEvaluation:
    """An evaluation function returning the next scripted AP50 (detectron2's nested results)."""

    def __init__(self, values: list[float]) -> None:
        self.values = list(values)
        self.calls = 0

    def __call__(self) -> dict:
        value = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return {"bbox": {"AP50": value, "AP": value / 2}}


def plateau_trainer(cfg, evaluation: ScriptedEvaluation) -> SimpleTrainer:
    model = TinyRegressor()
    optimizer = build_optimizer(cfg, model)
    trainer = SimpleTrainer(model, batches(), optimizer)
    trainer.scheduler = build_lr_scheduler(cfg, optimizer)
    trainer.register_hooks(
        add_plateau_hook(
            cfg,
            [hooks.LRScheduler(optimizer, trainer.scheduler), hooks.EvalHook(5, evaluation)],
        )
    )
    return trainer


def plateau_solver_cfg():
    cfg = solver_cfg(OPTIMIZER="LARS", LR_SCHEDULER_NAME="WarmupConstantLR", MAX_ITER=30)
    cfg.TEST.EVAL_PERIOD = 5
    cfg.SOLVER.PLATEAU.ENABLED = True
    cfg.SOLVER.PLATEAU.PATIENCE = 1
    cfg.SOLVER.PLATEAU.FACTOR = 0.5
    return cfg


def test_plateau_hook_reduces_the_lr_from_evaluation_results_and_is_checkpointed() -> None:
    cfg = plateau_solver_cfg()
    # Evaluations at iterations 5, 10, 15, 20, 25: improvement, improvement, then two without.
    trainer = plateau_trainer(cfg, ScriptedEvaluation([0.3, 0.4, 0.4, 0.4, 0.4]))
    assert isinstance(trainer._hooks[2], PlateauHook)  # right after the EvalHook
    trainer.train(0, cfg.SOLVER.MAX_ITER)
    lrs = [lr for lr, _ in trainer.storage.history("lr").values()]
    assert lrs[19] == pytest.approx(0.5)  # iteration 19 runs before the 4th evaluation
    assert lrs[20] == pytest.approx(0.25)  # reduced after the evaluation at the end of 19
    assert trainer.scheduler.plateau.num_reductions == 1

    saved = trainer.state_dict()  # what detectron2's checkpointer stores for the trainer
    assert saved["hooks"]["LRScheduler"]["plateau"]["factor"] == pytest.approx(0.5)
    resumed = plateau_trainer(cfg, ScriptedEvaluation([0.4]))
    resumed.load_state_dict(saved)
    assert resumed.scheduler.plateau.state_dict() == trainer.scheduler.plateau.state_dict()
    assert resumed.scheduler.last_epoch == trainer.scheduler.last_epoch


def test_plateau_hook_warns_once_when_the_metric_is_missing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = plateau_solver_cfg()
    cfg.SOLVER.PLATEAU.METRIC = "segm/AP50"
    trainer = plateau_trainer(cfg, ScriptedEvaluation([0.3]))
    with caplog.at_level(logging.WARNING, logger="det_scaling.solver.plateau"):
        trainer.train(0, 16)
    warnings_logged = [r for r in caplog.records if "segm/AP50" in r.getMessage()]
    assert len(warnings_logged) == 1
    assert "bbox/AP50" in warnings_logged[0].getMessage()  # lists what the results have


def test_add_plateau_hook_only_when_enabled() -> None:
    cfg = plateau_solver_cfg()
    existing = [hooks.IterationTimer(), hooks.EvalHook(5, lambda: {}), hooks.PeriodicWriter([])]
    added = add_plateau_hook(cfg, existing)
    assert [type(h).__name__ for h in added] == [
        "IterationTimer",
        "EvalHook",
        "PlateauHook",
        "PeriodicWriter",
    ]
    cfg.SOLVER.PLATEAU.ENABLED = False
    assert add_plateau_hook(cfg, existing) is existing


class TinyDefaultTrainer(SolverMixin, DefaultTrainer):
    """The one line a DefaultTrainer user writes, plus what a tiny test model needs."""

    evaluation = ScriptedEvaluation([0.3, 0.4, 0.4, 0.4, 0.4])

    @classmethod
    def build_model(cls, cfg):
        return TinyRegressor()

    @classmethod
    def build_train_loader(cls, cfg):
        return batches()

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        return cls.evaluation()


@pytest.mark.parametrize(
    "setting",
    [
        "SCALING.GRAD_ACCUM_STEPS 2",
        "SCALING.RULE adascale",
        "SCALING.ADABATCH.ENABLED True",
        "SCALING.AUTO_MICRO_BATCH True",
    ],
)
def test_default_trainer_with_the_mixin_refuses_what_only_the_scaling_step_does(
    setting, tmp_path
) -> None:
    # DefaultTrainer's step would run one micro-batch at the LR of the whole batch.
    cfg = plateau_solver_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.merge_from_list(setting.split())
    named = setting.removesuffix(" True")
    with pytest.raises(ConfigError, match=f"{named} need.*ScalingTrainer"):
        TinyDefaultTrainer(cfg)


@pytest.mark.slow
def test_default_trainer_with_the_mixin_trains_and_resumes_the_plateau_state(tmp_path) -> None:
    cfg = plateau_solver_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.SOLVER.CHECKPOINT_PERIOD = 100
    trainer = TinyDefaultTrainer(cfg)
    assert isinstance(trainer.optimizer, LARS)
    assert isinstance(trainer.scheduler, ProgressLRScheduler)
    assert any(isinstance(h, PlateauHook) for h in trainer._hooks)
    trainer.train()
    assert trainer.scheduler.plateau.num_reductions == 1

    resumed = TinyDefaultTrainer(cfg)
    resumed.resume_or_load(resume=True)  # reads model_final.pth through detectron2's checkpointer
    assert resumed.scheduler.plateau.state_dict() == trainer.scheduler.plateau.state_dict()
    assert resumed.start_iter == cfg.SOLVER.MAX_ITER

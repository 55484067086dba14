"""LazyConfig scaling: the same recipe as yacs, the lr_multiplier's iteration fields however
nested, fractions kept, interpolations followed, unknown fields reported, the same errors."""

from __future__ import annotations

import re

import pytest
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    CosineParamScheduler,
    MultiStepParamScheduler,
)
from helpers import REPO
from omegaconf import OmegaConf

from det_scaling import load_cfg, plan_scaling, scale_cfg
from det_scaling.config import read_recipe
from det_scaling.config.lazy import add_lazy_scaling_keys
from det_scaling.solver import scheduled_lrs

ZOO_1X = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x"
LSJ_100EP = "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py"


def zoo(name: str, overrides: list[str]):
    return load_cfg(model_zoo.get_config_file(name), overrides)


def lazy_cfg(reference=8, batch=16, lr=0.02, max_iter=1000, milestones=(600, 800), **scaling):
    """A LazyConfig with detectron2's train / dataloader / optimizer / lr_multiplier shape."""
    cfg = OmegaConf.create(
        {
            "train": {
                "max_iter": max_iter,
                "eval_period": 100,
                "checkpointer": {"period": 200, "max_to_keep": 3},
                "reference_world_size": reference,
                "scaling": scaling,
            },
            "dataloader": {"train": {"total_batch_size": batch}},
            "optimizer": {"lr": lr, "params": {"weight_decay_norm": 0.0}},
        },
        flags={"allow_objects": True},
    )
    cfg.lr_multiplier = L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[1.0, 0.1, 0.01], milestones=list(milestones), num_updates=max_iter
        ),
        warmup_length=0.05,
        warmup_factor=0.001,
    )
    add_lazy_scaling_keys(cfg)
    return cfg


@pytest.mark.parametrize("num_gpus", [1, 2, 3, 4, 8, 16, 32, 64])
def test_yacs_and_lazyconfig_twins_scale_to_the_same_numbers(num_gpus):
    """detectron2's COCO Mask R-CNN R-50-FPN 1x in both forms, written for 8 GPUs (the YAML
    form leaves TEST.EVAL_PERIOD at 0, the .py one evaluates every 5000 steps: made alike)."""
    written_for_8 = ["SOLVER.REFERENCE_WORLD_SIZE", "8", "TEST.EVAL_PERIOD", "5000"]
    yacs = scale_cfg(zoo(f"{ZOO_1X}.yaml", written_for_8), num_gpus)
    lazy = scale_cfg(zoo(f"{ZOO_1X}.py", ["train.reference_world_size=8"]), num_gpus)
    solver = yacs.SOLVER
    assert lazy.dataloader.train.total_batch_size == solver.IMS_PER_BATCH
    assert lazy.optimizer.lr == pytest.approx(solver.BASE_LR, rel=1e-12)
    assert lazy.train.max_iter == solver.MAX_ITER
    # The 1x schedule writes its length as the last milestone (no num_updates).
    assert list(lazy.lr_multiplier.scheduler.milestones) == [*solver.STEPS, solver.MAX_ITER]
    assert read_recipe(lazy).warmup_iters == solver.WARMUP_ITERS
    assert lazy.train.checkpointer.period == solver.CHECKPOINT_PERIOD
    assert lazy.train.eval_period == yacs.TEST.EVAL_PERIOD
    assert lazy.train.reference_world_size == solver.REFERENCE_WORLD_SIZE == num_gpus


def test_voc07_twins_scale_to_the_same_plan(voc07_cfg):
    lazy = load_cfg(str(REPO / "configs" / "VOC07-Detection" / "faster_rcnn_R_50_FPN.py"))
    for num_gpus in (1, 2, 4, 8, 16):
        a, b = read_recipe(scale_cfg(voc07_cfg, num_gpus)), read_recipe(scale_cfg(lazy, num_gpus))
        for part in ("ims_per_batch", "base_lr", "max_iter", "steps", "warmup_iters", "rule"):
            assert getattr(a, part) == getattr(b, part), (num_gpus, part)


def test_lsj_milestones_num_updates_and_periods_keep_images_seen():
    cfg = zoo(LSJ_100EP, ["train.reference_world_size=64"])
    plan = plan_scaling(cfg, 8)
    scaled = plan.cfg
    assert scaled.dataloader.train.total_batch_size == 8
    assert scaled.optimizer.lr == pytest.approx(0.0125)
    assert scaled.train.max_iter == 184375 * 8
    assert list(scaled.lr_multiplier.scheduler.milestones) == [163889 * 8, 177546 * 8]
    assert scaled.lr_multiplier.scheduler.num_updates == 184375 * 8
    # warmup_length is a fraction of the run: kept, so the warmup is 8 x 500 iterations.
    assert scaled.lr_multiplier.warmup_length == cfg.lr_multiplier.warmup_length
    assert read_recipe(scaled).warmup_iters == 4000
    assert (scaled.train.eval_period, scaled.train.checkpointer.period) == (40000, 40000)
    changed = {change.key for change in plan.changes}
    assert changed == {
        "dataloader.train.total_batch_size",
        "optimizer.lr",
        "train.reference_world_size",
        "train.max_iter",
        "lr_multiplier.scheduler.num_updates",
        "lr_multiplier.scheduler.milestones",
        "train.checkpointer.period",
        "train.eval_period",
    }
    assert plan.warnings == []
    assert cfg.train.max_iter == 184375  # the input is unchanged
    assert cfg.lr_multiplier.scheduler.milestones[0] == 163889


def test_nested_schedulers_are_scaled_wherever_they_are():
    cfg = lazy_cfg(reference=1, batch=2, max_iter=1000)
    cfg.lr_multiplier = L(CompositeParamScheduler)(
        schedulers=[
            L(MultiStepParamScheduler)(values=[1.0, 0.5], milestones=[200], num_updates=400),
            L(WarmupParamScheduler)(
                scheduler=L(MultiStepParamScheduler)(
                    values=[0.5, 0.1, 0.05, 0.01], milestones=[100, 300, 500]
                ),
                warmup_length=0.1,
                warmup_factor=0.01,
            ),
            L(CosineParamScheduler)(start_value=0.01, end_value=0.0),
        ],
        lengths=[0.4, 0.5, 0.1],
        interval_scaling=["fixed", "fixed", "rescaled"],
    )
    scaled = scale_cfg(cfg, 4)  # batch x4
    first, second, third = scaled.lr_multiplier.schedulers
    assert (list(first.milestones), first.num_updates) == ([50], 100)
    assert list(second.scheduler.milestones) == [25, 75, 125]  # the last one is the length
    assert second.warmup_length == 0.1 and list(scaled.lr_multiplier.lengths) == [0.4, 0.5, 0.1]
    assert third.end_value == 0.0  # a multiplier of optimizer.lr, not an LR


def test_scaled_lazyconfig_builds_the_same_lr_curve_in_images():
    cfg = lazy_cfg(reference=1, batch=2, max_iter=100, milestones=(48, 80))
    one, four = scheduled_lrs(cfg), scheduled_lrs(scale_cfg(cfg, 4))
    assert len(one) == 100 and len(four) == 25
    for step, lr in enumerate(four):  # step k of batch 8 = step 4k of batch 2, LR x4
        assert lr == pytest.approx(4 * one[4 * step], rel=1e-9), step


def test_absolute_lrs_follow_the_rule_and_interpolations_follow_their_source():
    cfg = lazy_cfg(reference=8, batch=16, lr=0.02)
    cfg.optimizer.params.base_lr = 0.02  # an absolute LR (get_default_optimizer_params's)
    cfg.optimizer.min_lr = 0.001
    cfg.optimizer.params.overrides = {"bias_lr": "${...lr}"}
    cfg.optimizer.bias_lr_factor = 2.0  # a factor, not an LR
    scaled = scale_cfg(cfg, 2, rule="sqrt")  # batch / 4: LR / 2
    assert scaled.optimizer.lr == pytest.approx(0.01)
    assert scaled.optimizer.params.base_lr == pytest.approx(0.01)
    assert scaled.optimizer.min_lr == pytest.approx(0.0005)
    assert scaled.optimizer.params.overrides.bias_lr == pytest.approx(0.01)  # once, not twice
    assert scaled.optimizer.bias_lr_factor == 2.0
    assert scaled.train.scaling.rule == "sqrt"


def test_a_field_the_scaler_cannot_classify_is_reported():
    cfg = lazy_cfg()
    cfg.lr_multiplier.scheduler.decay_every = 250  # an iteration count det_scaling cannot know
    plan = plan_scaling(cfg, 2)
    assert len(plan.warnings) == 1
    assert plan.warnings[0].startswith("lr_multiplier.scheduler.decay_every (250): not an LR")
    assert "warning: lr_multiplier.scheduler.decay_every" in plan.format()
    assert plan.to_dict()["warnings"] == plan.warnings


def test_a_scheduler_length_left_behind_by_a_max_iter_override_is_reported():
    tiny = REPO / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny.py"
    assert plan_scaling(load_cfg(str(tiny)), 2).warnings == []
    plan = plan_scaling(load_cfg(str(tiny), ["train.max_iter=10"]), 2)
    assert plan.warnings == [
        "lr_multiplier.scheduler.num_updates 1500 is not the run's length (train.max_iter 10): "
        "the LR schedule ends at 1500; set both (a train.max_iter override does not change it)"
    ]


def test_keep_reference_batch_accumulates_as_in_yacs():
    cfg = lazy_cfg(reference=8, batch=16, keep_reference_batch=True)
    plan = plan_scaling(cfg, 2)
    scaled = plan.cfg
    assert scaled.train.scaling.grad_accum_steps == 4
    assert scaled.dataloader.train.total_batch_size == 16
    assert scaled.optimizer.lr == 0.02 and scaled.train.max_iter == 1000
    assert plan.changes[0].reason.startswith("keep_reference_batch: 2 GPUs x 4 micro-batches")


def test_epoch_schedule_sets_max_iter_milestones_warmup_and_periods():
    cfg = lazy_cfg(reference=8, batch=256, lr=0.1, dataset_size=1_281_167)
    cfg.train.scaling.epochs = {"max": 90.0, "steps": [30.0, 60.0, 80.0], "warmup": 5.0}
    cfg.lr_multiplier.scheduler.values = [1.0, 0.1, 0.01, 0.001]
    scaled = scale_cfg(cfg, 32)  # batch 1024
    iterations = [round(e * 1_281_167 / 1024) for e in (90, 30, 60, 80)]
    assert scaled.train.max_iter == scaled.lr_multiplier.scheduler.num_updates == iterations[0]
    assert list(scaled.lr_multiplier.scheduler.milestones) == iterations[1:]
    assert scaled.lr_multiplier.warmup_length == pytest.approx(5 / 90)
    assert scaled.train.checkpointer.period == iterations[0]  # 0 epochs: at the end
    assert scaled.train.eval_period == 0
    reasons = {c.key: c.reason for c in plan_scaling(cfg, 32).changes}
    assert reasons["lr_multiplier.warmup_length"] == "5 of 90 epochs"


def test_epoch_schedule_needs_the_one_multistep_scheduler():
    cfg = lazy_cfg(dataset_size=1000)
    cfg.train.scaling.epochs = {"max": 10.0}
    with pytest.raises(ValueError, match=re.escape("train.scaling.epochs.steps: a schedule")):
        scale_cfg(cfg, 2)


@pytest.mark.parametrize(
    ("change", "num_gpus", "message"),
    [
        ({"reference": 2, "batch": 15}, 4, "dataloader.train.total_batch_size (15) must be"),
        ({"max_iter": 3, "milestones": ()}, 64, "train.max_iter: 3 rounds to 0 iterations"),
        ({"milestones": (2, 800)}, 64, "lr_multiplier.scheduler.milestones: step 2 rounds to 0"),
        ({"milestones": (995,)}, 32, "not before num_updates 31"),
        ({"lr": 0.0}, 2, "optimizer.lr must be positive"),
        ({"reference": -1}, 2, "train.reference_world_size must be >= 0"),
    ],
)
def test_bad_lazyconfigs_raise_value_error_naming_the_key(change, num_gpus, message):
    cfg = lazy_cfg(**{"reference": 1, "batch": 2, **change})
    with pytest.raises(ValueError, match=re.escape(message)):
        scale_cfg(cfg, num_gpus)


def test_reference_world_size_zero_or_absent_means_no_scaling():
    cfg = model_zoo.get_config(f"{ZOO_1X}.py")  # as detectron2 loads it: no toolkit keys
    plan = plan_scaling(cfg, 4)
    assert plan.changes == []
    assert plan.notes[0].startswith("train.reference_world_size is 0")
    assert "reference_world_size" not in cfg.train  # the input is unchanged

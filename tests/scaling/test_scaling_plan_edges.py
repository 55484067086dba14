"""plan_scaling at its edges: the record (format, to_dict, every reason), AdaScale's S, the
overrides of scale_cfg, and the limits of the schedule checks. Expected values worked out by hand
from the configs below."""

from __future__ import annotations

import math
import re

import pytest
import torch
from detectron2.config import LazyCall as L
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import OmegaConf
from test_lazy_scaling import lazy_cfg
from test_scaling_plan import small_cfg as written_for

from det_scaling import plan_scaling, scale_cfg
from det_scaling.config.lazy import add_lazy_scaling_keys
from det_scaling.errors import ConfigError
from det_scaling.scaling.plan import Change, ScalingPlan


def small_cfg(reference=1, batch=2, max_iter=1000, steps=(600, 800), lr=0.02):
    """test_scaling_plan's config, written for 1 GPU, without warmup or evaluation."""
    cfg = written_for(
        reference, batch, max_iter, steps, lr, WARMUP_ITERS=0, CHECKPOINT_PERIOD=max_iter // 2
    )
    cfg.TEST.EVAL_PERIOD = 0
    return cfg


def test_format_and_to_dict_write_every_change_note_and_warning():
    changes = [
        Change("SOLVER.STEPS", (600, 800), (300, 400), "r1"),
        Change("SOLVER.MAX_ITER", 1000, 500, "r2"),
        Change("SOLVER.BASE_LR", 0.02, 0.04, "r3"),
    ]
    plan = ScalingPlan(None, 2, 1, "linear", 2.0, 2.0, changes, ["n1"], ["w1"])
    assert list(plan) == changes
    assert plan.format() == (
        "SOLVER.STEPS: (600, 800) -> (300, 400)  (r1)\n"
        "SOLVER.MAX_ITER: 1000 -> 500  (r2)\n"
        "SOLVER.BASE_LR: 0.02 -> 0.04  (r3)\n"
        "note: n1\n"
        "warning: w1"
    )
    assert plan.to_dict() == {
        "num_gpus": 2,
        "reference_world_size": 1,
        "rule": "linear",
        "batch_ratio": 2.0,
        "lr_factor": 2.0,
        "epochs_factor": 1.0,
        "changes": [
            {"key": "SOLVER.STEPS", "old": [600, 800], "new": [300, 400], "reason": "r1"},
            {"key": "SOLVER.MAX_ITER", "old": 1000, "new": 500, "reason": "r2"},
            {"key": "SOLVER.BASE_LR", "old": 0.02, "new": 0.04, "reason": "r3"},
        ],
        "notes": ["n1"],
        "warnings": ["w1"],
    }
    quiet = ScalingPlan(None, 2, 1, "linear", 2.0, 2.0, changes[1:2], [], [])
    assert quiet.to_dict() == {
        "num_gpus": 2,
        "reference_world_size": 1,
        "rule": "linear",
        "batch_ratio": 2.0,
        "lr_factor": 2.0,
        "epochs_factor": 1.0,
        "changes": [{"key": "SOLVER.MAX_ITER", "old": 1000, "new": 500, "reason": "r2"}],
        "notes": [],
    }


def test_every_reason_of_a_linear_plan_to_twice_the_gpus():
    # 1 GPU x 2 images -> 2 GPUs x 2 images: batch and LR x2, every iteration count halved.
    cfg = small_cfg(reference=1, batch=2, max_iter=1000, steps=(600, 800), lr=0.02)
    cfg.SOLVER.WARMUP_ITERS = 100
    cfg.SOLVER.CHECKPOINT_PERIOD = 200
    plan = plan_scaling(cfg, 2)
    assert {c["key"]: (c["old"], c["new"], c["reason"]) for c in plan.to_dict()["changes"]} == {
        "SOLVER.IMS_PER_BATCH": (2, 4, "2 images/GPU x 2 GPUs; reference 1 GPU"),
        "SOLVER.BASE_LR": (0.02, 0.04, "linear rule: batch x2, LR x2"),
        "SOLVER.REFERENCE_WORLD_SIZE": (1, 2, "now written for 2 GPUs, scaled from 1"),
        "SOLVER.MAX_ITER": (1000, 500, "same images seen: 1000 steps x 2 = 2000 images"),
        "SOLVER.STEPS": ([600, 800], [300, 400], "same images seen as [600, 800] at 2 images/step"),
        "SOLVER.WARMUP_ITERS": (100, 50, "same images seen: 100 steps x 2 = 200 images"),
        "SOLVER.CHECKPOINT_PERIOD": (200, 100, "same images seen: 200 steps x 2 = 400 images"),
    }
    assert plan.notes == [] and plan.warnings == []


def test_the_batch_reason_counts_two_accumulated_micro_batches():
    # 2 GPUs x 2 micro-batches x 2 images = 8 -> 4 GPUs: 2 x 4 x 2 = 16.
    cfg = small_cfg(reference=2, batch=8)
    cfg.SCALING.GRAD_ACCUM_STEPS = 2
    reasons = {c.key: c.reason for c in plan_scaling(cfg, 4).changes}
    expected = "2 images/GPU x 4 GPUs x 2 accumulated; reference 2 GPUs"
    assert reasons["SOLVER.IMS_PER_BATCH"] == expected


def test_scale_cfg_passes_keep_reference_batch_both_ways():
    cfg = small_cfg(reference=8, batch=16)  # 8 GPUs x 2 images
    kept = scale_cfg(cfg, 2, keep_reference_batch=True)
    assert (kept.SOLVER.IMS_PER_BATCH, kept.SCALING.GRAD_ACCUM_STEPS) == (16, 4)
    cfg.SCALING.KEEP_REFERENCE_BATCH = True
    scaled = scale_cfg(cfg, 2, keep_reference_batch=False)
    assert (scaled.SOLVER.IMS_PER_BATCH, scaled.SCALING.GRAD_ACCUM_STEPS) == (4, 1)
    plan = plan_scaling(cfg, 2)
    reasons = {c.key: c.reason for c in plan.changes}
    assert reasons["SCALING.GRAD_ACCUM_STEPS"] == (
        "KEEP_REFERENCE_BATCH: 2 GPUs x 4 micro-batches x 2 images keep the reference batch of 16"
    )
    assert plan.notes == [
        "total batch, LR and schedule kept as written for 8 GPUs, by gradient accumulation"
    ]


def test_auto_notes_name_the_optimizer_or_unnamed():
    cfg = small_cfg()
    cfg.SCALING.RULE = "auto"
    cfg.SOLVER.OPTIMIZER = ""
    assert plan_scaling(cfg, 2).notes == [
        "SCALING.RULE auto: the linear rule; SOLVER.OPTIMIZER unnamed is not Adam-like (SGD, "
        "LARS, LARC): the LR follows the batch (Goyal et al. 2017)"
    ]
    cfg.SOLVER.OPTIMIZER = "AdamW"
    assert plan_scaling(cfg, 2).notes == [
        "SCALING.RULE auto: the sqrt rule; SOLVER.OPTIMIZER AdamW is Adam-like: its step is "
        "normalised by the gradient's second moment, so the LR follows the square root of the "
        "batch (Malladi et al. 2022)"
    ]


def adascale_cfg(**scaling):
    """1 GPU x 2 images, 12 steps, LR 0.5 at 6 and 10, 2 warmup steps, a checkpoint every 4."""
    cfg = small_cfg(reference=1, batch=2, max_iter=12, steps=(6, 10), lr=0.5)
    cfg.SOLVER.WARMUP_ITERS = 2
    cfg.SOLVER.CHECKPOINT_PERIOD = 4
    cfg.SCALING.RULE = "adascale"
    cfg.SCALING.DATASET_SIZE = 8
    for key, val in scaling.items():
        cfg.SCALING[key] = val
    return cfg


def test_adascale_at_s_4_keeps_lr_and_schedule_and_scales_the_periods():
    plan = plan_scaling(adascale_cfg(), 4)
    solver = plan.cfg.SOLVER
    assert (solver.IMS_PER_BATCH, solver.BASE_LR, plan.lr_factor) == (8, 0.5, 1.0)
    assert (solver.MAX_ITER, solver.STEPS, solver.WARMUP_ITERS) == (12, (6, 10), 2)
    assert solver.CHECKPOINT_PERIOD == 1  # 4 steps x 2 images / 8
    changes = {c.key: c for c in plan.changes}
    assert changes["SCALING.ADASCALE_REFERENCE_BATCH"] == Change(
        "SCALING.ADASCALE_REFERENCE_BATCH",
        0,
        2,
        "adascale: the schedule and SOLVER.BASE_LR are written for batch 2",
    )
    assert plan.notes == [
        "adascale (Johnson et al. 2020) at S = 4 (batch 8 / 2): each step multiplies "
        "SOLVER.BASE_LR by the gain ratio r in [1, 4] measured in training and advances the "
        "schedule by r steps; the run ends when it reaches SOLVER.MAX_ITER, after "
        "SOLVER.MAX_ITER / 4 to SOLVER.MAX_ITER steps"
    ]


def test_adascale_at_s_1_on_one_process_and_at_s_2_with_accumulation_are_planned():
    plan = plan_scaling(adascale_cfg(), 1)  # already written for 1 GPU: S = 2 / 2
    assert plan.cfg.SCALING.ADASCALE_REFERENCE_BATCH == 2
    assert "adascale (Johnson et al. 2020) at S = 1 (batch 2 / 2)" in plan.notes[1]
    # 1 GPU x 2 micro-batches of 1 image for a schedule written for 1 image: S = 2, two sizes.
    plan = plan_scaling(adascale_cfg(ADASCALE_REFERENCE_BATCH=1, GRAD_ACCUM_STEPS=2), 1)
    assert "at S = 2 (batch 2 / 1)" in plan.notes[1]


@pytest.mark.parametrize(
    ("scaling", "message"),
    [
        (
            {"ADASCALE_REFERENCE_BATCH": 1},  # S = 2 on one process without accumulation
            "SCALING.RULE adascale measures the gain ratio from two batch sizes, which one "
            "process without accumulation does not have: run on 2+ processes or set "
            "SCALING.GRAD_ACCUM_STEPS >= 2",
        ),
        (
            {"ADASCALE_REFERENCE_BATCH": 4},  # S = 1/2
            "SCALING.ADASCALE_REFERENCE_BATCH: AdaScale scales up from the batch its schedule is "
            "written for (4), but SOLVER.IMS_PER_BATCH is 2; keep that batch "
            "(SCALING.KEEP_REFERENCE_BATCH True) or choose another SCALING.RULE",
        ),
    ],
)
def test_what_adascale_cannot_measure_is_refused_with_its_message(scaling, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        plan_scaling(adascale_cfg(**scaling), 1)


def test_adascale_with_adabatch_is_refused_naming_both_keys():
    cfg = adascale_cfg()
    cfg.SCALING.ADABATCH.ENABLED = True
    message = (
        "SCALING.RULE adascale and SCALING.ADABATCH.ENABLED both change the LR with the batch "
        "during the run; use one"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        plan_scaling(cfg, 1)


def test_adascale_epochs_count_steps_of_the_reference_batch_and_periods_of_the_run():
    cfg = adascale_cfg()
    cfg.SCALING.EPOCHS.MAX = 3.0  # 3 x 8 images / 2 = 12 steps
    cfg.SCALING.EPOCHS.STEPS = (1.5,)  # 6
    cfg.SCALING.EPOCHS.WARMUP = 0.5  # 2
    cfg.SCALING.EPOCHS.CHECKPOINT_PERIOD = 1.0  # 8 images / 8 per step = 1
    plan = plan_scaling(cfg, 4)
    solver = plan.cfg.SOLVER
    assert (solver.MAX_ITER, solver.STEPS, solver.WARMUP_ITERS) == (12, (6,), 2)
    assert solver.CHECKPOINT_PERIOD == 1
    reasons = {c.key: c.reason for c in plan.changes}
    assert reasons["SOLVER.STEPS"] == "same images seen as [1.5] in SCALING.EPOCHS"


def test_an_epoch_schedule_of_a_one_image_data_set():
    cfg = small_cfg(reference=1, batch=1, lr=0.01)
    cfg.SCALING.DATASET_SIZE = 1
    cfg.SCALING.EPOCHS.MAX = 10.0
    cfg.SCALING.EPOCHS.STEPS = (5.0,)
    solver = plan_scaling(cfg, 1).cfg.SOLVER
    assert (solver.MAX_ITER, solver.STEPS, solver.CHECKPOINT_PERIOD) == (10, (5,), 10)
    cfg.SCALING.DATASET_SIZE = 0
    message = (
        "SCALING.EPOCHS.MAX: a schedule written in epochs needs SCALING.DATASET_SIZE (images per "
        "epoch); set it, or let the trainer fill it in from the registered data set"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        plan_scaling(cfg, 1)


def test_a_step_of_1_that_rounds_to_0_and_a_step_past_the_end_are_refused_in_full():
    cfg = small_cfg(reference=1, batch=2, max_iter=1000, steps=(1, 800))
    with pytest.raises(ConfigError, match=re.escape("SOLVER.STEPS: step 1 rounds to 0 at 64 GPUs")):
        plan_scaling(cfg, 64)  # 2 images of 128
    cfg = small_cfg(reference=1, batch=2, max_iter=1000, steps=(995,))
    # At 32 GPUs x 2 = 64 images: 2000 / 64 = 31.25 -> 31 steps, 1990 / 64 = 31.09 -> 31.
    message = (
        "SOLVER.STEPS: step 995 rounds to 31, not before MAX_ITER 31 at 32 GPUs (64 images/step; "
        "schedule written at 2 images/step); lengthen the schedule or use fewer GPUs"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        plan_scaling(cfg, 32)


def test_adam_sde_takes_a_beta_to_exactly_0_and_names_the_lazyconfig_setting():
    cfg = OmegaConf.create(
        {
            "train": {
                "max_iter": 1000,
                "eval_period": 0,
                "checkpointer": {"period": 500},
                "reference_world_size": 1,
                "scaling": {"rule": "sqrt", "adam_sde": True},
            },
            "dataloader": {"train": {"total_batch_size": 4}},
        },
        flags={"allow_objects": True},
    )
    cfg.optimizer = L(torch.optim.AdamW)(params=None, lr=0.001, betas=[0.5, 0.75], eps=1e-8)
    cfg.lr_multiplier = L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[600, 800], num_updates=1000
    )
    add_lazy_scaling_keys(cfg)
    plan = plan_scaling(cfg, 2)  # batch x2: 1 - 2 x 0.5 = 0, 1 - 2 x 0.25 = 0.5
    assert tuple(plan.cfg.optimizer.betas) == (0.0, 0.5)
    assert plan.cfg.optimizer.eps == pytest.approx(1e-8 / math.sqrt(2))
    reasons = {c.key: c.reason for c in plan.changes}
    assert reasons["optimizer.betas"] == (
        "adam_sde (Malladi et al. 2022): batch x2, beta -> 1 - 2 (1 - beta)"
    )
    assert reasons["optimizer.eps"] == "adam_sde (Malladi et al. 2022): batch x2, eps / sqrt(2)"


def test_negative_periods_are_refused_in_iterations_and_in_a_one_epoch_schedule():
    cfg = small_cfg()
    cfg.SOLVER.CHECKPOINT_PERIOD = -4
    message = (
        "SOLVER.CHECKPOINT_PERIOD is -4: detectron2 would misread it; use a positive number of "
        "iterations (SOLVER.MAX_ITER or more: a checkpoint at the end only)"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        plan_scaling(cfg, 2)
    for name in ("CHECKPOINT_PERIOD", "EVAL_PERIOD"):
        cfg = small_cfg(reference=1, batch=2)
        cfg.SCALING.DATASET_SIZE = 4
        cfg.SCALING.EPOCHS.MAX = 1.0  # 2 steps of 2 images
        cfg.SCALING.EPOCHS[name] = -1.0
        message = (
            f"SCALING.EPOCHS.{name} is -1: a period cannot be negative; use a positive number "
            "of epochs, or 0 for none before the end"
        )
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            plan_scaling(cfg, 1)


@pytest.mark.parametrize(
    ("steps", "refusal"),
    [
        ((600, 600), "SOLVER.STEPS (600, 600): steps must increase (600 comes after 600)"),
        ((600, 1000), "SOLVER.STEPS: step 1000 is not inside the run (SOLVER.MAX_ITER 1000)"),
    ],
)
def test_a_repeated_step_or_one_at_the_end_of_the_run_is_refused(steps, refusal):
    with pytest.raises(ConfigError, match="^" + re.escape(refusal)):
        plan_scaling(small_cfg(steps=steps), 2)


@pytest.mark.parametrize(
    ("epoch_steps", "refusal"),
    [
        ((0.8, 0.5), "SCALING.EPOCHS.STEPS (0.8, 0.5): steps must increase (0.5 comes after 0.8)"),
        ((0.5, 1.0), "SCALING.EPOCHS.STEPS: step 1 is not inside the run (SCALING.EPOCHS.MAX 1)"),
    ],
)
def test_epoch_steps_of_a_one_epoch_run_out_of_order_or_at_its_end_are_refused(
    epoch_steps, refusal
):
    cfg = small_cfg()
    cfg.SCALING.DATASET_SIZE = 100
    cfg.SCALING.EPOCHS.MAX = 1.0
    cfg.SCALING.EPOCHS.STEPS = epoch_steps
    with pytest.raises(ConfigError, match="^" + re.escape(refusal)):
        plan_scaling(cfg, 2)


def test_a_config_for_these_gpus_or_for_any_count_is_left_as_written_and_says_why():
    same = plan_scaling(small_cfg(reference=2, batch=4), 2)
    assert (same.changes, same.batch_ratio, same.lr_factor) == ([], 1.0, 1.0)
    assert same.notes == ["the config is already written for 2 GPUs"]
    anywhere = plan_scaling(small_cfg(reference=0, batch=4), 8)
    assert (anywhere.changes, anywhere.batch_ratio, anywhere.lr_factor) == ([], 1.0, 1.0)
    assert anywhere.notes == [
        "SOLVER.REFERENCE_WORLD_SIZE is 0: the config is written for the GPUs it runs on; "
        "nothing is rescaled"
    ]


def test_a_one_epoch_schedule_is_read_in_epochs_not_from_max_iter():
    # 1 epoch of 100 images at 2 GPUs x 2 images: 25 steps, whatever MAX_ITER says.
    cfg = small_cfg(reference=1, batch=2, max_iter=1000, steps=(600, 800))
    cfg.SCALING.DATASET_SIZE = 100
    cfg.SCALING.EPOCHS.MAX = 1.0
    cfg.SCALING.EPOCHS.STEPS = (0.8,)
    assert plan_scaling(cfg, 2).cfg.SOLVER.MAX_ITER == 25


def test_the_micro_batch_must_divide_by_gpus_times_accumulation_not_their_ratio():
    cfg = small_cfg(reference=2, batch=6)  # 2 GPUs x 2 micro-batches: 1.5 images each
    cfg.SCALING.GRAD_ACCUM_STEPS = 2
    message = "(6) must be divisible by SOLVER.REFERENCE_WORLD_SIZE (2) x SCALING.GRAD_ACCUM_STEPS"
    with pytest.raises(ConfigError, match=re.escape(message)):
        plan_scaling(cfg, 4)


def test_unclassified_fields_are_warned_of_only_when_the_schedule_moves_and_beside_others():
    cfg = lazy_cfg(max_iter=1000)
    cfg.lr_multiplier.scheduler.decay_every = 250  # an iteration count det_scaling cannot know
    cfg.lr_multiplier.scheduler.num_updates = 900  # left behind by a train.max_iter override
    behind = "lr_multiplier.scheduler.num_updates 900 is not the run's length"
    unclassified = "lr_multiplier.scheduler.decay_every (250)"
    kept = plan_scaling(cfg, 8).warnings  # written for 8 GPUs: nothing moves
    assert len(kept) == 1 and kept[0].startswith(behind)
    moved = plan_scaling(cfg, 2).warnings
    assert len(moved) == 2 and moved[0].startswith(behind) and moved[1].startswith(unclassified)

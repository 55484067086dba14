"""scale_cfg / plan_scaling: the numbers, agreement with detectron2, the record, the errors."""

from __future__ import annotations

import itertools
import math
import re

import pytest
from detectron2 import model_zoo
from detectron2.engine import DefaultTrainer
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from det_scaling import get_cfg, load_cfg, plan_scaling, scale_cfg
from det_scaling.errors import ConfigError

# Keys detectron2's auto_scale_workers sets; scale_cfg must give the same values.
AUTO_SCALED_KEYS = (
    "SOLVER.IMS_PER_BATCH",
    "SOLVER.BASE_LR",
    "SOLVER.MAX_ITER",
    "SOLVER.STEPS",
    "SOLVER.WARMUP_ITERS",
    "SOLVER.CHECKPOINT_PERIOD",
    "TEST.EVAL_PERIOD",
    "SOLVER.REFERENCE_WORLD_SIZE",
)


def value(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def small_cfg(reference=8, batch=16, max_iter=1000, steps=(600, 800), lr=0.02, **solver):
    cfg = get_cfg()
    cfg.SOLVER.REFERENCE_WORLD_SIZE = reference
    cfg.SOLVER.IMS_PER_BATCH = batch
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.STEPS = steps
    cfg.SOLVER.BASE_LR = lr
    for key, val in solver.items():
        cfg.SOLVER[key] = val
    return cfg


@pytest.mark.parametrize(
    ("num_gpus", "batch", "lr", "max_iter", "steps"),
    [
        (1, 2, 0.0025, 60000, (30000, 40000)),
        (2, 4, 0.005, 30000, (15000, 20000)),
        (4, 8, 0.01, 15000, (7500, 10000)),
        (8, 16, 0.02, 7500, (3750, 5000)),
    ],
)
def test_voc07_config_reproduces_the_detectron_tutorial_table(
    voc07_cfg, num_gpus, batch, lr, max_iter, steps
):
    scaled = scale_cfg(voc07_cfg, num_gpus)
    assert scaled.SOLVER.IMS_PER_BATCH == batch
    assert scaled.SOLVER.BASE_LR == pytest.approx(lr, rel=1e-12)
    assert scaled.SOLVER.MAX_ITER == max_iter
    assert scaled.SOLVER.STEPS == steps


@pytest.mark.parametrize("num_gpus", [1, 2, 4, 16])
def test_matches_auto_scale_workers_on_detectron2_pascal_voc_config(num_gpus):
    cfg = load_cfg(
        model_zoo.get_config_file("PascalVOC-Detection/faster_rcnn_R_50_FPN.yaml"),
        ["SOLVER.REFERENCE_WORLD_SIZE", "8"],
    )
    expected = DefaultTrainer.auto_scale_workers(cfg, num_gpus)
    scaled = scale_cfg(cfg, num_gpus)
    for key in AUTO_SCALED_KEYS:
        assert value(scaled, key) == value(expected, key), key


@settings(max_examples=150, deadline=None)
@given(
    reference=st.sampled_from([1, 2, 4, 8, 16]),
    per_gpu=st.integers(1, 4),
    num_gpus=st.integers(1, 64),
    max_iter=st.integers(1, 200_000),
    step_fractions=st.lists(st.floats(0.05, 0.95), max_size=3),
    warmup=st.integers(0, 5000),
    checkpoint=st.integers(1, 50_000),
    eval_period=st.integers(0, 50_000),
    lr=st.floats(1e-5, 1.0),
)
def test_agrees_with_auto_scale_workers_wherever_both_apply(
    reference, per_gpu, num_gpus, max_iter, step_fractions, warmup, checkpoint, eval_period, lr
):
    steps = tuple(sorted({max(1, int(f * max_iter)) for f in step_fractions}))
    assume(all(s < max_iter for s in steps))
    cfg = small_cfg(reference, reference * per_gpu, max_iter, steps, lr)
    cfg.SOLVER.WARMUP_ITERS = warmup
    cfg.SOLVER.CHECKPOINT_PERIOD = checkpoint
    cfg.TEST.EVAL_PERIOD = eval_period
    expected = DefaultTrainer.auto_scale_workers(cfg, num_gpus)
    new_steps, new_max_iter = expected.SOLVER.STEPS, expected.SOLVER.MAX_ITER
    # Each schedule auto_scale_workers would make unusable, and the key the refusal must name.
    unusable = {
        "SOLVER.WARMUP_ITERS": warmup > max_iter,  # the written warmup never ends
        "SOLVER.MAX_ITER": new_max_iter == 0,
        "SOLVER.STEPS": 0 in new_steps
        or any(a >= b for a, b in itertools.pairwise(new_steps))
        or any(s >= new_max_iter for s in new_steps),
        "SOLVER.CHECKPOINT_PERIOD": expected.SOLVER.CHECKPOINT_PERIOD == 0,
        "TEST.EVAL_PERIOD": eval_period > 0 and expected.TEST.EVAL_PERIOD == 0,
    }
    try:
        scaled = scale_cfg(cfg, num_gpus)
    except ConfigError as error:
        # Refused only for one of those reasons, as a one-line error naming its key.
        named = [key for key, bad in unusable.items() if bad and str(error).startswith(key)]
        assert named, (str(error), unusable)
        return
    assert not any(unusable.values()), unusable
    for key in AUTO_SCALED_KEYS:
        assert value(scaled, key) == value(expected, key), key


@settings(max_examples=100, deadline=None)
@given(
    reference=st.sampled_from([1, 2, 4, 8]),
    num_gpus=st.integers(1, 32),
    max_iter=st.integers(100, 100_000),
)
def test_scaling_keeps_images_seen_within_half_a_step(reference, num_gpus, max_iter):
    cfg = small_cfg(reference, 2 * reference, max_iter, steps=(max_iter // 2,))
    cfg.SOLVER.WARMUP_ITERS = max_iter // 10
    assume(max_iter // 2 * reference >= num_gpus)  # the step survives rounding
    scaled = scale_cfg(cfg, num_gpus)
    old_batch, new_batch = cfg.SOLVER.IMS_PER_BATCH, scaled.SOLVER.IMS_PER_BATCH
    for key in ("SOLVER.MAX_ITER", "SOLVER.WARMUP_ITERS"):
        assert abs(value(scaled, key) * new_batch - value(cfg, key) * old_batch) <= new_batch / 2
    assert abs(scaled.SOLVER.STEPS[0] * new_batch - cfg.SOLVER.STEPS[0] * old_batch) <= (
        new_batch / 2
    )


@settings(max_examples=100, deadline=None)
@given(
    reference=st.sampled_from([1, 2, 4, 8]),
    num_gpus=st.sampled_from([1, 2, 4, 8, 16]),
    units=st.integers(2, 500),
)
def test_scaling_there_and_back_restores_the_config_when_nothing_rounds(reference, num_gpus, units):
    # Multiples of num_gpus * reference divide exactly in both directions.
    unit = num_gpus * reference
    steps = (2 * units * unit, 3 * units * unit)
    cfg = small_cfg(reference, 2 * reference, 4 * units * unit, steps)
    cfg.SOLVER.WARMUP_ITERS = units * unit
    cfg.SOLVER.CHECKPOINT_PERIOD = units * unit
    cfg.TEST.EVAL_PERIOD = 2 * units * unit
    back = scale_cfg(scale_cfg(cfg, num_gpus), reference)
    for key in AUTO_SCALED_KEYS:
        expected = value(cfg, key)
        if isinstance(expected, float):
            assert value(back, key) == pytest.approx(expected, rel=1e-12), key
        else:
            assert value(back, key) == expected, key


def test_scale_cfg_returns_a_new_config_and_leaves_the_input_alone(voc07_cfg):
    before = voc07_cfg.dump()
    scaled = scale_cfg(voc07_cfg, 8)
    assert scaled is not voc07_cfg
    assert voc07_cfg.dump() == before


def test_scaled_config_is_written_for_its_gpu_count(voc07_cfg):
    scaled = scale_cfg(voc07_cfg, 4)
    assert scaled.SOLVER.REFERENCE_WORLD_SIZE == 4
    assert scale_cfg(scaled, 4).dump() == scaled.dump()
    # detectron2's DefaultTrainer calls auto_scale_workers itself: it must not scale twice.
    assert DefaultTrainer.auto_scale_workers(scaled, 4).dump() == scaled.dump()


def test_frozen_input_gives_frozen_output(voc07_cfg):
    voc07_cfg.freeze()
    assert scale_cfg(voc07_cfg, 2).is_frozen()


def test_reference_world_size_zero_means_no_scaling():
    cfg = small_cfg(reference=0)
    plan = plan_scaling(cfg, 8)
    assert plan.changes == []
    assert plan.cfg.dump() == cfg.dump()
    assert "REFERENCE_WORLD_SIZE is 0" in plan.notes[0]


def test_sqrt_rule_scales_lr_by_the_square_root_of_the_batch_ratio(voc07_cfg):
    scaled = scale_cfg(voc07_cfg, 4, rule="sqrt")
    assert scaled.SOLVER.BASE_LR == pytest.approx(0.0025 * 2)
    assert scaled.SOLVER.MAX_ITER == 15000  # the schedule keeps images seen whatever the rule


def test_none_rule_keeps_lr_and_still_rescales_the_schedule(voc07_cfg):
    voc07_cfg.SCALING.RULE = "none"
    scaled = scale_cfg(voc07_cfg, 8)
    assert scaled.SOLVER.BASE_LR == voc07_cfg.SOLVER.BASE_LR
    assert scaled.SOLVER.IMS_PER_BATCH == 16
    assert scaled.SOLVER.MAX_ITER == 7500


def test_lr_floors_follow_the_rule(voc07_cfg):
    voc07_cfg.SOLVER.BASE_LR_END = 0.0001
    voc07_cfg.SOLVER.PLATEAU.MIN_LR = 0.00001
    scaled = scale_cfg(voc07_cfg, 8)
    assert scaled.SOLVER.BASE_LR_END == pytest.approx(0.0008)
    assert scaled.SOLVER.PLATEAU.MIN_LR == pytest.approx(0.00008)
    assert scale_cfg(voc07_cfg, 4, rule="sqrt").SOLVER.BASE_LR_END == pytest.approx(0.0002)


def test_keep_reference_batch_accumulates_gradients_on_fewer_gpus():
    cfg = small_cfg(reference=8, batch=16)
    cfg.SCALING.KEEP_REFERENCE_BATCH = True
    plan = plan_scaling(cfg, 2)
    scaled = plan.cfg
    assert scaled.SCALING.GRAD_ACCUM_STEPS == 4
    assert scaled.SOLVER.IMS_PER_BATCH == 16
    assert scaled.SOLVER.BASE_LR == cfg.SOLVER.BASE_LR
    assert scaled.SOLVER.MAX_ITER == cfg.SOLVER.MAX_ITER
    assert scaled.SOLVER.STEPS == cfg.SOLVER.STEPS
    assert scaled.SOLVER.REFERENCE_WORLD_SIZE == 2
    assert {c.key for c in plan.changes} == {
        "SCALING.GRAD_ACCUM_STEPS",
        "SOLVER.REFERENCE_WORLD_SIZE",
    }


def test_accumulated_config_scales_with_its_micro_batch():
    # 2 GPUs x 4 micro-batches x 2 images: 8 GPUs without accumulation is 4x the batch.
    cfg = small_cfg(reference=2, batch=16)
    cfg.SCALING.GRAD_ACCUM_STEPS = 4
    scaled = scale_cfg(cfg, 8)
    assert scaled.SOLVER.IMS_PER_BATCH == 64
    assert scaled.SCALING.GRAD_ACCUM_STEPS == 4
    assert scaled.SOLVER.BASE_LR == pytest.approx(0.08)


def test_every_change_is_recorded_with_old_new_and_reason(voc07_cfg):
    plan = plan_scaling(voc07_cfg, 8)
    recorded = {c.key: c for c in plan.changes}
    assert set(recorded) == {
        "SOLVER.IMS_PER_BATCH",
        "SOLVER.BASE_LR",
        "SOLVER.MAX_ITER",
        "SOLVER.STEPS",
        "SOLVER.WARMUP_ITERS",
        "SOLVER.CHECKPOINT_PERIOD",
        "TEST.EVAL_PERIOD",
        "SOLVER.REFERENCE_WORLD_SIZE",
    }
    for key, change in recorded.items():
        assert change.old == value(voc07_cfg, key)
        assert change.new == value(plan.cfg, key)
        assert change.reason
    assert "linear rule" in recorded["SOLVER.BASE_LR"].reason
    assert plan.to_dict()["changes"][0]["key"] == plan.changes[0].key
    assert math.isclose(plan.lr_factor, 8.0)


@pytest.mark.parametrize(
    ("change", "num_gpus", "message"),
    [
        ({"REFERENCE_WORLD_SIZE": 2, "IMS_PER_BATCH": 15}, 4, "BATCH (15) must be divisible"),
        ({"MAX_ITER": 3, "STEPS": (), "WARMUP_ITERS": 0}, 64, "SOLVER.MAX_ITER: 3 rounds to 0"),
        ({"MAX_ITER": 1000, "STEPS": (2, 800)}, 64, "SOLVER.STEPS: step 2 rounds to 0"),
        ({"STEPS": (0, 800)}, 2, "SOLVER.STEPS: step 0 is not inside the run"),
        ({"MAX_ITER": 1000, "STEPS": (995,)}, 32, "not before MAX_ITER"),
        ({"MAX_ITER": 1000, "STEPS": (600, 602)}, 64, "collide"),
        ({"CHECKPOINT_PERIOD": 3}, 64, "SOLVER.CHECKPOINT_PERIOD: period 3 rounds to 0"),
        ({"BASE_LR": 0.0}, 2, "SOLVER.BASE_LR must be positive"),
        ({"BASE_LR": -0.1}, 2, "SOLVER.BASE_LR must be positive"),
        ({"REFERENCE_WORLD_SIZE": -1}, 2, "SOLVER.REFERENCE_WORLD_SIZE must be >= 0"),
    ],
)
def test_bad_configs_raise_value_error_naming_the_key(change, num_gpus, message):
    cfg = small_cfg(reference=1, batch=2, max_iter=1000, steps=(600, 800))
    for key, val in change.items():
        cfg.SOLVER[key] = val
    with pytest.raises(ValueError, match=re.escape(message)):
        scale_cfg(cfg, num_gpus)


def test_an_eval_period_that_rounds_to_0_is_refused_naming_the_key():
    cfg = small_cfg(reference=1, batch=2, max_iter=1000, steps=(600, 800))
    cfg.TEST.EVAL_PERIOD = 3  # 6 images: less than half a step of 128
    with pytest.raises(ConfigError, match=re.escape("TEST.EVAL_PERIOD: period 3 rounds to 0")):
        scale_cfg(cfg, 64)
    cfg.TEST.EVAL_PERIOD = 0  # off: nothing to round
    assert scale_cfg(cfg, 64).TEST.EVAL_PERIOD == 0


def test_a_period_the_run_never_reaches_is_noted():
    cfg = small_cfg(reference=1, batch=2, max_iter=1000, steps=(600, 800))
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    cfg.TEST.EVAL_PERIOD = 999  # shorter than the run: no note
    notes = plan_scaling(cfg, 1).notes
    assert (
        "SOLVER.CHECKPOINT_PERIOD 1000 is not shorter than the run (SOLVER.MAX_ITER 1000): "
        "the only checkpoint is the final one"
    ) in notes
    assert not any("EVAL_PERIOD" in note for note in notes)
    # Scaled to 2 GPUs: 500 steps, the evaluation period of 999 x 2 images rounds to 500.
    scaled_notes = plan_scaling(cfg, 2).notes
    assert (
        "TEST.EVAL_PERIOD 500 is not shorter than the run (SOLVER.MAX_ITER 500): "
        "the only evaluation is at the end"
    ) in scaled_notes


def test_unknown_rule_is_rejected_naming_the_key():
    cfg = small_cfg()
    cfg.SCALING.RULE = "cubic"
    with pytest.raises(ValueError, match=re.escape("SCALING.RULE: unknown scaling rule 'cubic'")):
        scale_cfg(cfg, 2)


@pytest.mark.parametrize("num_gpus", [0, -1, 1.5, True, "2"])
def test_num_gpus_must_be_a_positive_integer(num_gpus):
    with pytest.raises(ValueError, match="num_gpus must be a positive integer"):
        scale_cfg(small_cfg(), num_gpus)


def test_keep_reference_batch_rejects_gpu_counts_that_do_not_divide_it():
    cfg = small_cfg(reference=8, batch=16)
    cfg.SCALING.KEEP_REFERENCE_BATCH = True
    with pytest.raises(ValueError, match=re.escape("SCALING.KEEP_REFERENCE_BATCH")):
        scale_cfg(cfg, 3)


def test_grad_accum_steps_must_be_positive():
    cfg = small_cfg()
    cfg.SCALING.GRAD_ACCUM_STEPS = 0
    with pytest.raises(ValueError, match=re.escape("SCALING.GRAD_ACCUM_STEPS must be >= 1")):
        scale_cfg(cfg, 2)


def test_plain_detectron2_config_gets_the_toolkit_keys():
    from detectron2.config import get_cfg as detectron2_get_cfg

    cfg = detectron2_get_cfg()
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 8
    scaled = scale_cfg(cfg, 1)
    assert scaled.SCALING.RULE == "linear"
    assert scaled.SOLVER.IMS_PER_BATCH == 2


def epoch_cfg(reference=8, batch=256, dataset_size=1_281_167):
    """The Goyal et al. ImageNet schedule: 90 epochs, steps at 30/60/80, 5 warmup epochs."""
    cfg = small_cfg(reference=reference, batch=batch, lr=0.1)
    cfg.SCALING.DATASET_SIZE = dataset_size
    cfg.SCALING.EPOCHS.MAX = 90.0
    cfg.SCALING.EPOCHS.STEPS = (30.0, 60.0, 80.0)
    cfg.SCALING.EPOCHS.WARMUP = 5.0
    cfg.SCALING.EPOCHS.EVAL_PERIOD = 1.0
    return cfg


def test_epoch_schedule_becomes_iterations_at_the_reference_batch():
    plan = plan_scaling(epoch_cfg(), 8)
    solver = plan.cfg.SOLVER
    assert solver.MAX_ITER == round(90 * 1_281_167 / 256)
    assert solver.STEPS == tuple(round(e * 1_281_167 / 256) for e in (30, 60, 80))
    assert solver.WARMUP_ITERS == round(5 * 1_281_167 / 256)
    assert solver.CHECKPOINT_PERIOD == solver.MAX_ITER  # 0 epochs: at the end only
    assert plan.cfg.TEST.EVAL_PERIOD == round(1_281_167 / 256)
    reasons = {c.key: c.reason for c in plan.changes}
    assert reasons["SOLVER.MAX_ITER"] == "90 epochs x 1281167 images / 256 per step"


def test_epoch_schedule_is_computed_at_the_scaled_batch():
    scaled = scale_cfg(epoch_cfg(), 32)  # batch 1024, LR 0.4: the seeds' recommended setup
    assert scaled.SOLVER.IMS_PER_BATCH == 1024
    assert scaled.SOLVER.BASE_LR == pytest.approx(0.4)
    assert scaled.SOLVER.MAX_ITER == round(90 * 1_281_167 / 1024)
    assert scale_cfg(scaled, 32).dump() == scaled.dump()


def test_epoch_schedule_needs_the_dataset_size():
    cfg = epoch_cfg(dataset_size=0)
    with pytest.raises(ValueError, match=re.escape("needs SCALING.DATASET_SIZE")):
        scale_cfg(cfg, 2)


def test_epoch_schedule_applies_without_a_reference_too():
    cfg = epoch_cfg(reference=0, batch=64, dataset_size=1000)
    scaled = scale_cfg(cfg, 4)
    assert scaled.SOLVER.IMS_PER_BATCH == 64
    assert scaled.SOLVER.MAX_ITER == round(90 * 1000 / 64)


def test_too_short_epoch_schedule_is_refused_naming_the_step():
    cfg = epoch_cfg(batch=256, dataset_size=100)
    cfg.SCALING.EPOCHS.STEPS = (30.0, 30.5)
    with pytest.raises(ValueError, match=re.escape("SOLVER.STEPS: steps 30 and 30.5 collide")):
        scale_cfg(cfg, 8)

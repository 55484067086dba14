"""SCALING.SCHEDULE noise: the run's length, LR steps and periods follow the epochs factor of the
new batch; the warmup keeps its images; both config formats; the refusals."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from det_scaling import get_cfg, load_cfg, plan_scaling, scale_cfg
from det_scaling.errors import ConfigError
from det_scaling.scaling.critical_batch import epochs_factor

TINY_YAML = "configs/VOC07-Detection/faster_rcnn_synthetic_tiny.yaml"
TINY_LAZY = "configs/VOC07-Detection/faster_rcnn_synthetic_tiny.py"


def noise_cfg(reference=1, batch=1, max_iter=6000, steps=(4500, 5400), b_crit=11.1, warmup=100):
    cfg = get_cfg()
    cfg.SOLVER.REFERENCE_WORLD_SIZE = reference
    cfg.SOLVER.IMS_PER_BATCH = batch
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.STEPS = steps
    cfg.SOLVER.WARMUP_ITERS = warmup
    cfg.SOLVER.CHECKPOINT_PERIOD = max_iter // 4
    cfg.TEST.EVAL_PERIOD = max_iter // 8
    cfg.SCALING.SCHEDULE = "noise"
    cfg.SCALING.NOISE_SCALE.B_CRIT = b_crit
    return cfg


def test_long_preset_on_8_gpus_runs_the_epochs_the_law_predicts():
    # 12 epochs of 500 images at 1 image/step; the scaling table's 19-epoch row at batch 8 is
    # 19 x 500 / 8 = 1188 steps.
    plan = plan_scaling(noise_cfg(), 8)
    assert plan.epochs_factor == pytest.approx((1 + 8 / 11.1) / (1 + 1 / 11.1))
    assert plan.cfg.SOLVER.MAX_ITER == pytest.approx(1188, rel=0.01)
    assert plan.cfg.SOLVER.WARMUP_ITERS == round(100 / 8)  # the warmup's images
    assert any("epochs x1.58 for batch 8 against 1 with B_crit 11.1" in n for n in plan.notes)
    assert plan.to_dict()["epochs_factor"] == plan.epochs_factor


def test_images_schedule_is_the_default_and_keeps_the_images():
    cfg = noise_cfg()
    cfg.SCALING.SCHEDULE = "images"
    plan = plan_scaling(cfg, 8)
    assert (plan.epochs_factor, plan.cfg.SOLVER.MAX_ITER) == (1.0, 750)
    assert get_cfg().SCALING.SCHEDULE == "images"


@settings(max_examples=150, deadline=None)
@given(
    reference=st.sampled_from([1, 2, 4, 8]),
    per_gpu=st.integers(1, 4),
    gpus=st.lists(st.integers(1, 64), min_size=2, max_size=2, unique=True),
    b_crit=st.floats(0.5, 5000),
    max_iter=st.integers(2_000, 200_000),
    step_fractions=st.lists(st.floats(0.3, 0.95), min_size=1, max_size=3, unique=True),
)
def test_yacs_schedule_follows_the_epochs_factor(
    reference, per_gpu, gpus, b_crit, max_iter, step_fractions
):
    steps = tuple(sorted({int(f * max_iter) for f in step_fractions}))
    cfg = noise_cfg(reference, reference * per_gpu, max_iter, steps, b_crit, warmup=max_iter // 50)
    old_batch = cfg.SOLVER.IMS_PER_BATCH
    try:
        plans = [plan_scaling(cfg, n) for n in sorted(gpus)]
    except ConfigError as error:  # only where rounding leaves no room for a step
        assume("rounds" in str(error) or "collide" in str(error))
        return
    for plan in plans:
        new = plan.cfg.SOLVER
        factor = epochs_factor(new.IMS_PER_BATCH, old_batch, b_crit)
        assert plan.epochs_factor == pytest.approx(factor, rel=1e-12)
        if plan.num_gpus == reference:
            assert plan.epochs_factor == 1 and new.MAX_ITER == max_iter
        half_step = new.IMS_PER_BATCH / 2
        expected = max_iter * old_batch * factor
        assert abs(new.MAX_ITER * new.IMS_PER_BATCH - expected) <= half_step
        assert abs(new.WARMUP_ITERS * new.IMS_PER_BATCH - (max_iter // 50) * old_batch) <= (
            half_step
        )
        assert all(0 < s < new.MAX_ITER for s in new.STEPS)
        assert all(a < b for a, b in itertools.pairwise(new.STEPS))
        # Scaled again to the same count: nothing changes.
        assert scale_cfg(plan.cfg, plan.num_gpus) == plan.cfg
    fewer, more = plans
    assert fewer.epochs_factor < more.epochs_factor  # a larger batch needs more epochs


@settings(max_examples=40, deadline=None)
@given(num_gpus=st.sampled_from([1, 2, 4, 8, 16]), b_crit=st.floats(0.5, 500))
def test_lazy_schedule_follows_the_epochs_factor(num_gpus, b_crit):
    cfg = load_cfg(
        TINY_LAZY, ["train.scaling.schedule=noise", f"train.scaling.noise_scale.b_crit={b_crit}"]
    )
    old_batch, max_iter = cfg.dataloader.train.total_batch_size, cfg.train.max_iter
    warmup_images = cfg.lr_multiplier.warmup_length * max_iter * old_batch
    plan = plan_scaling(cfg, num_gpus)
    new, batch = plan.cfg, plan.cfg.dataloader.train.total_batch_size
    factor = epochs_factor(batch, old_batch, b_crit)
    assert plan.epochs_factor == pytest.approx(factor, rel=1e-12)
    assert (plan.epochs_factor == 1) == (num_gpus == cfg.train.reference_world_size)
    assert abs(new.train.max_iter * batch - max_iter * old_batch * factor) <= batch / 2
    assert new.lr_multiplier.scheduler.num_updates == new.train.max_iter
    milestones = list(new.lr_multiplier.scheduler.milestones)
    assert all(0 < m < new.train.max_iter for m in milestones)
    assert all(a < b for a, b in itertools.pairwise(milestones))
    warmup = new.lr_multiplier.warmup_length * new.train.max_iter * batch
    assert warmup == pytest.approx(warmup_images, rel=0.02)


def test_schedule_written_in_epochs_grows_its_epochs_and_scales_again_to_the_same():
    cfg = noise_cfg()
    cfg.SCALING.DATASET_SIZE = 500
    cfg.SCALING.EPOCHS.MAX = 12.0
    cfg.SCALING.EPOCHS.STEPS = (9.0, 10.8)
    cfg.SCALING.EPOCHS.WARMUP = 0.2
    cfg.SCALING.EPOCHS.EVAL_PERIOD = 1.0
    plan = plan_scaling(cfg, 8)
    factor = plan.epochs_factor
    epochs = plan.cfg.SCALING.EPOCHS
    assert epochs.MAX == pytest.approx(12 * factor)
    assert epochs.STEPS == pytest.approx((9 * factor, 10.8 * factor))
    assert epochs.EVAL_PERIOD == pytest.approx(factor)
    assert epochs.WARMUP == 0.2
    assert plan.cfg.SOLVER.MAX_ITER == round(12 * factor * 500 / 8)
    assert plan.cfg.SOLVER.WARMUP_ITERS == round(0.2 * 500 / 8)
    assert scale_cfg(plan.cfg, 8) == plan.cfg
    back = scale_cfg(plan.cfg, 1)
    assert back.SCALING.EPOCHS.MAX == pytest.approx(12.0)
    assert back.SOLVER.MAX_ITER == 6000


@pytest.mark.parametrize(
    ("config", "overrides", "message"),
    [
        (TINY_YAML, [], "SCALING.SCHEDULE noise needs SCALING.NOISE_SCALE.B_CRIT"),
        (TINY_YAML, ["SCALING.NOISE_SCALE.B_CRIT", "-3.0"], "got -3: measure it"),
        (
            TINY_YAML,
            ["SCALING.NOISE_SCALE.B_CRIT", "8.0", "SCALING.RULE", "adascale"],
            "SCALING.SCHEDULE noise and SCALING.RULE adascale both set the run's length",
        ),
        (
            TINY_YAML,
            ["SCALING.NOISE_SCALE.B_CRIT", "8.0", "SCALING.ADABATCH.ENABLED", "True"],
            "SCALING.ADABATCH.ENABLED grows the batch during the run",
        ),
        (TINY_LAZY, [], "train.scaling.schedule noise needs train.scaling.noise_scale.b_crit"),
        (
            TINY_LAZY,
            ["train.scaling.noise_scale.b_crit=8", "train.scaling.rule=adascale"],
            "train.scaling.schedule noise and train.scaling.rule adascale",
        ),
    ],
)
def test_noise_schedule_refused_where_it_has_no_meaning(config, overrides, message):
    lazy = config.endswith(".py")
    schedule = ["train.scaling.schedule=noise"] if lazy else ["SCALING.SCHEDULE", "noise"]
    cfg = load_cfg(config, [*schedule, *overrides])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as error:
        plan_scaling(cfg, 4)
    assert "\n" not in str(error.value)


def test_unknown_schedule_names_the_choices():
    cfg = load_cfg(TINY_YAML, ["SCALING.SCHEDULE", "epochs"])
    with pytest.raises(ConfigError, match=r"SCALING.SCHEDULE: unknown schedule 'epochs'; choose"):
        plan_scaling(cfg, 2)

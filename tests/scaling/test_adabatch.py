"""AdaBatch: the stage arithmetic, its config keys, the LR over stages, the engine switching the
accumulation, and resuming mid-growth (same and another starting batch).

Engine runs are real and tiny: detectron2's loader reads 16 small PNG files, the model is a
convolution and a linear layer counting its forward passes, so every run takes about a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import hooks
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import BoxMode
from detectron2.utils.env import seed_all_rng
from PIL import Image
from torch import nn

import det_scaling
from det_scaling import get_cfg, plan_scaling
from det_scaling.commands.lr_plot import lr_curve, plot_lr_curves
from det_scaling.commands.plan import format_plan_table
from det_scaling.config import read_recipe
from det_scaling.engine import ImagePeriodHook, ScalingProgress, ScalingTrainer, resume_point
from det_scaling.scaling.batch_schedule import (
    BatchSchedule,
    Growth,
    Stage,
    iterations_for_images,
    micro_batch,
)
from det_scaling.solver import build_lr_multiplier, build_lr_scheduler, scheduled_lrs

REPO = Path(__file__).resolve().parents[2]
DIGITS_CONFIG = REPO / "configs" / "ImageNet-Classification" / "resnet18_digits_sweep.yaml"
DATASET = "det_scaling_test_adabatch_boxes"
NUM_IMAGES = 16
IMAGE_SIZE = 12


def growing(
    ims_per_batch: int,
    grad_accum_steps: int,
    total_images: int,
    interval_images: int,
    batch_factor: int,
    lr_factor: float,
    max_stages: int = 0,
) -> BatchSchedule:
    growth = Growth(interval_images, batch_factor, lr_factor, max_stages)
    return BatchSchedule(
        ims_per_batch=ims_per_batch,
        grad_accum_steps=grad_accum_steps,
        total_images=total_images,
        growth=growth,
    )


def paper_schedule(**overrides) -> BatchSchedule:
    """The seeds' setup: CIFAR-10 (50,000 images), 100 epochs from batch 128, batch x2 and LR
    x0.75 every 20 epochs."""
    settings = {
        "ims_per_batch": 128,
        "grad_accum_steps": 1,
        "total_images": 100 * 50_000,
        "interval_images": 20 * 50_000,
        "batch_factor": 2,
        "lr_factor": 0.75,
    }
    return growing(**{**settings, **overrides})


# ---- the arithmetic ----
def test_paper_schedule_doubles_the_batch_from_128_to_2048_every_20_epochs():
    schedule = paper_schedule()
    stages = schedule.stages
    assert [s.ims_per_batch for s in stages] == [128, 256, 512, 1024, 2048]
    assert [s.grad_accum_steps for s in stages] == [1, 2, 4, 8, 16]
    assert [s.lr_factor for s in stages] == [0.75**k for k in range(5)]
    # Each stage ends at the whole step nearest to its 20-epoch boundary, counted from where the
    # previous one really ended: the error never exceeds half a step of the stage's batch.
    for stage in stages:
        planned = (stage.index + 1) * 20 * 50_000
        assert abs(stage.end_images - planned) <= stage.ims_per_batch / 2
        assert stage.start_iter == (stages[stage.index - 1].end_iter if stage.index else 0)
    assert [s.num_iters for s in stages] == [7812, 3906, 1953, 977, 488]
    assert schedule.total_iterations == sum(s.num_iters for s in stages) == 15136
    assert schedule.final_images == stages[-1].end_images == 4_999_680


def test_steps_and_images_convert_both_ways_across_stages():
    schedule = paper_schedule()
    previous = -1
    for iteration in range(0, schedule.total_iterations + 1, 7):
        images = schedule.images_at_iteration(iteration)
        assert images > previous
        previous = images
        assert schedule.iteration_for_images(images) == iteration
    stage = schedule.stages[2]
    # Inside a stage the images of a step are the stage's batch.
    assert schedule.images_at_iteration(stage.start_iter + 3) == stage.start_images + 3 * 512
    assert schedule.stage_at_iteration(stage.start_iter) == stage
    assert schedule.stage_at_iteration(stage.start_iter - 1) == schedule.stages[1]
    assert schedule.stage_at_images(stage.start_images) == stage
    # Images between two steps go to the nearest step of the stage they fall in.
    assert schedule.iteration_for_images(stage.start_images + 700) == stage.start_iter + 1
    assert schedule.progress_at(0) == 0.0
    assert schedule.progress_at(schedule.total_iterations) == pytest.approx(1.0, abs=1e-4)
    assert schedule.lr_factor_at(stage.end_iter - 1) == 0.75**2
    assert schedule.lr_factor_at(stage.end_iter) == 0.75**3


def test_without_growth_the_maps_are_the_fixed_batch_ones():
    schedule = growing(
        ims_per_batch=16,
        grad_accum_steps=2,
        total_images=16 * 90,
        interval_images=16 * 20,
        batch_factor=1,
        lr_factor=1.0,
    )
    assert schedule.total_iterations == 90
    for iteration in range(91):
        assert schedule.images_at_iteration(iteration) == 16 * iteration
        assert schedule.progress_at(iteration) == iteration / 90
        assert schedule.lr_factor_at(iteration) == 1.0
        for period in (1, 7, 20):
            assert schedule.is_period_end(iteration, period) == (
                iteration > 0 and iteration % period == 0
            )


def test_periods_count_images_of_the_starting_batch():
    schedule = growing(
        ims_per_batch=2,
        grad_accum_steps=1,
        total_images=48,
        interval_images=16,
        batch_factor=2,
        lr_factor=0.75,
    )
    assert [(s.num_iters, s.ims_per_batch) for s in schedule.stages] == [(8, 2), (4, 4), (2, 8)]
    # A period of 6 steps of batch 2 is every 12 images: the steps that reach or pass 12, 24,
    # 36 and 48 images are step 6 (12 images), 10 (24), 13 (32 -> 40) and 14 (48).
    due = [n for n in range(1, 15) if schedule.is_period_end(n, 6)]
    assert [schedule.images_at_iteration(n) for n in due] == [12, 24, 40, 48]
    assert not schedule.is_period_end(5, 0)


def test_max_stages_stops_the_growth_and_the_last_stage_lasts_to_the_end():
    schedule = paper_schedule(max_stages=3)
    assert [s.ims_per_batch for s in schedule.stages] == [128, 256, 512]
    last = schedule.stages[-1]
    assert last.lr_factor == 0.75**2
    assert abs(last.end_images - 100 * 50_000) <= 512 / 2
    assert paper_schedule(max_stages=1).stages[0].num_iters == round(100 * 50_000 / 128)


def test_a_remainder_too_small_for_the_grown_batch_goes_to_the_previous_stage():
    # 24 images, a stage every 8 from batch 4: the third stage (batch 16) would get 8 images,
    # half a step, which rounds to 0; the second stage (batch 8) takes them instead.
    schedule = growing(
        ims_per_batch=4,
        grad_accum_steps=1,
        total_images=24,
        interval_images=8,
        batch_factor=2,
        lr_factor=0.5,
    )
    assert [(s.num_iters, s.ims_per_batch) for s in schedule.stages] == [(2, 4), (2, 8)]
    assert schedule.final_images == 24


def test_edges_of_the_maps_and_their_defaults():
    fixed = BatchSchedule(ims_per_batch=4, grad_accum_steps=1, total_images=40)
    (stage,) = fixed.stages
    assert stage == Stage(0, 0, 10, 0, 4, 1, 1.0)
    assert type(stage.ims_per_batch) is type(stage.grad_accum_steps) is int
    # Defaults: 1 process, data set size unknown, no micro-batch limit, no growth.
    assert fixed.state_at(0) == {
        "world_size": 1,
        "ims_per_batch": 4,
        "grad_accum_steps": 1,
        "max_iter": 10,
    }
    assert fixed.epochs(100) is None
    assert fixed.same_steps_as({"ims_per_batch": 4})  # a checkpoint without growth
    one_per_epoch = BatchSchedule(
        ims_per_batch=1, grad_accum_steps=1, total_images=1, dataset_size=1
    )
    assert (one_per_epoch.total_iterations, one_per_epoch.epochs(7)) == (1, 7.0)
    assert iterations_for_images(7, 1) == 7
    with pytest.raises(ValueError, match="ims_per_batch must be positive"):
        iterations_for_images(7, 0)
    with pytest.raises(ValueError, match="GRAD_ACCUM_STEPS must be >= 1"):
        micro_batch(8, 1, 0)
    with pytest.raises(ValueError, match="divisible by 4 process"):
        BatchSchedule(ims_per_batch=6, grad_accum_steps=1, total_images=60, world_size=4)
    assert Growth(1, 2, 0.5).interval_images == 1  # one image is an interval

    # Three stages: 8 steps of 2, 4 of 4, 2 of 8 (48 images).
    three = growing(2, 1, 48, 16, 2, 0.75)
    assert three.stage_at_images(1000) == three.stages[2]  # past the end: the last
    assert three.iteration_for_schedule_step(6) == 6  # 12 images
    assert three.progress_at(three.total_iterations + 5) == 1.0


def test_a_micro_batch_limit_keeps_the_growth_and_the_data_set_size():
    growth = Growth(32, 2, 0.5)
    schedule = BatchSchedule(
        ims_per_batch=8, grad_accum_steps=1, total_images=96, dataset_size=16, growth=growth
    )
    limited = schedule.with_micro_batch_limit(2)
    # Micro-batch 8 -> 2: accumulation 4 at the start, 8 and 16 as the batch grows.
    assert [(s.ims_per_batch, s.grad_accum_steps) for s in limited.stages] == [
        (8, 4),
        (16, 8),
        (32, 16),
    ]
    assert type(limited.grad_accum_steps) is int
    assert limited.epochs(32) == 2.0


def test_a_middle_stage_under_half_a_step_is_refused_and_a_last_one_extends_by_one_step():
    # Batch 4 growing x4 every 8 images: stage 1 (batch 16) would get 8 images, half a step.
    with pytest.raises(ValueError, match="stage 1 has 8 images"):
        growing(4, 1, 48, 8, 4, 0.5)
    # 18 images, batch 4 then 8: the third stage's 2 images go to the second, which then ends
    # at the step nearest to 18 images: 1 step of 8 after the first 8 images.
    schedule = growing(4, 1, 18, 8, 2, 0.5)
    assert [(s.num_iters, s.ims_per_batch) for s in schedule.stages] == [(2, 4), (1, 8)]


def test_a_config_without_growth_records_no_stages_and_one_with_them_keeps_max_stages():
    cfg = get_cfg()
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.MAX_ITER = 30
    assert "adabatch" not in BatchSchedule.from_recipe(read_recipe(cfg), 1).state_at(0)
    # 60 images, 1 image an epoch, growth every 20: three stages, or two with MAX_STAGES 2.
    cfg.SCALING.DATASET_SIZE = 1
    cfg.SCALING.ADABATCH.ENABLED = True
    cfg.SCALING.ADABATCH.INTERVAL_EPOCHS = 20.0
    schedule = BatchSchedule.from_recipe(read_recipe(cfg), 1)
    assert [(s.num_iters, s.ims_per_batch) for s in schedule.stages] == [(10, 2), (5, 4), (2, 8)]
    cfg.SCALING.ADABATCH.MAX_STAGES = 2
    schedule = BatchSchedule.from_recipe(read_recipe(cfg), 1)
    assert [(s.num_iters, s.ims_per_batch) for s in schedule.stages] == [(10, 2), (10, 4)]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"interval_images": 30}, "SCALING.ADABATCH.INTERVAL_EPOCHS"),  # < half a step of 128
        ({"batch_factor": 0}, "SCALING.ADABATCH.BATCH_FACTOR"),
        ({"lr_factor": 0.0}, "SCALING.ADABATCH.LR_FACTOR"),
        ({"max_stages": -1}, "SCALING.ADABATCH.MAX_STAGES"),
    ],
)
def test_impossible_settings_are_refused_naming_the_key(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        paper_schedule(**override)


def test_config_keys_are_off_by_default_with_the_papers_values():
    cfg = get_cfg()
    assert cfg.SCALING.ADABATCH.ENABLED is False
    assert (cfg.SCALING.ADABATCH.INTERVAL_EPOCHS, cfg.SCALING.ADABATCH.BATCH_FACTOR) == (20.0, 2)
    assert (cfg.SCALING.ADABATCH.LR_FACTOR, cfg.SCALING.ADABATCH.MAX_STAGES) == (0.75, 0)
    assert len(BatchSchedule.from_recipe(read_recipe(cfg), 1).stages) == 1
    cfg.SCALING.ADABATCH.ENABLED = True
    with pytest.raises(ValueError, match=r"SCALING\.DATASET_SIZE"):
        BatchSchedule.from_recipe(read_recipe(cfg), 1)


def digits_adabatch_cfg():
    """The digits sweep config (2 GPUs x 32 images, 8 epochs of 1438 images) with AdaBatch: batch
    x2 and LR x0.75 every 2 epochs."""
    cfg = det_scaling.load_cfg(str(DIGITS_CONFIG))
    cfg.SCALING.DATASET_SIZE = 1438
    cfg.SCALING.ADABATCH.ENABLED = True
    cfg.SCALING.ADABATCH.INTERVAL_EPOCHS = 2.0
    return cfg


@pytest.mark.parametrize("num_gpus", [1, 2, 4])
def test_scaled_configs_grow_from_their_scaled_batch_at_the_same_epochs(num_gpus):
    cfg = digits_adabatch_cfg()
    scaled = plan_scaling(cfg, num_gpus).cfg
    schedule = BatchSchedule.from_recipe(read_recipe(scaled), num_gpus)
    batch = 32 * num_gpus
    assert [s.ims_per_batch for s in schedule.stages] == [batch * 2**k for k in range(4)]
    assert [s.grad_accum_steps for s in schedule.stages] == [1, 2, 4, 8]
    assert [s.lr_factor for s in schedule.stages] == [1.0, 0.75, 0.5625, 0.421875]
    for stage in schedule.stages:
        # Each stage starts within half a step of its epoch, at any GPU count.
        previous_batch = stage.ims_per_batch // 2 if stage.index else batch
        assert abs(stage.start_images - stage.index * 2 * 1438) <= previous_batch / 2
    # The KEEP_REFERENCE_BATCH route (1 GPU accumulating the 2-GPU batch) has the 2-GPU stages.
    kept = plan_scaling(plan_scaling(cfg, 2).cfg, 1, keep_reference_batch=True).cfg
    kept_schedule = BatchSchedule.from_recipe(read_recipe(kept), 1)
    two_gpus = BatchSchedule.from_recipe(read_recipe(plan_scaling(cfg, 2).cfg), 2)
    assert [s.ims_per_batch for s in kept_schedule.stages] == [64, 128, 256, 512]
    assert [s.grad_accum_steps for s in kept_schedule.stages] == [2, 4, 8, 16]
    assert kept_schedule.stage_starts == two_gpus.stage_starts


# ---- the LR over stages ----
@pytest.mark.parametrize("name", ["WarmupMultiStepLR", "WarmupCosineLR"])
def test_lr_is_the_schedule_at_the_images_fraction_times_the_stage_factor(name):
    cfg = plan_scaling(digits_adabatch_cfg(), 2).cfg
    cfg.SOLVER.LR_SCHEDULER_NAME = name
    schedule = BatchSchedule.from_recipe(read_recipe(cfg), 2)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.SOLVER.BASE_LR)
    scheduler = build_lr_scheduler(cfg, optimizer)  # the batch schedule of the config
    multiplier = build_lr_multiplier(cfg)
    total = cfg.SOLVER.MAX_ITER * cfg.SOLVER.IMS_PER_BATCH
    lrs = []
    for iteration in range(schedule.total_iterations):
        lrs.append(optimizer.param_groups[0]["lr"])
        where = min(schedule.images_at_iteration(iteration) / total, 1.0)
        expected = cfg.SOLVER.BASE_LR * multiplier(where) * schedule.lr_factor_at(iteration)
        assert lrs[-1] == pytest.approx(expected, rel=1e-12), iteration
        optimizer.step()
        scheduler.step()
    # Stage 0 (the first 2 epochs, warmup included) is the run without AdaBatch, step for step.
    plain_cfg = cfg.clone()
    plain_cfg.SCALING.ADABATCH.ENABLED = False
    plain = scheduled_lrs(plain_cfg)
    first = schedule.stages[0].num_iters
    assert cfg.SOLVER.WARMUP_ITERS < first
    assert lrs[:first] == pytest.approx(plain[:first], rel=1e-12)
    assert scheduler.state_dict()["max_iter"] == schedule.total_iterations


# ---- plan and lr-plot ----
def test_plan_lists_the_stages_of_each_gpu_count():
    text = format_plan_table(digits_adabatch_cfg(), [1, 2])
    table, stages = text.split("\n\n")
    assert "AdaBatch steps" in table.splitlines()[1]
    assert table.splitlines()[4].split("|")[-2].strip() == "84"  # 2 GPUs: 45 + 22 + 11 + 6
    assert stages.startswith(
        "AdaBatch: every 2 epochs, total batch x2 (by accumulation) and LR x0.75."
    )
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in stages.splitlines()[4:]]
    batches = [row[3].split()[0] for row in rows]
    assert batches == ["32", "64", "128", "256", "64", "128", "256", "512"]
    last = ["2", "3", "5.92-8.06", "512 (32/GPU x8 accum)", "0.421875", "0.0210938", "6 (78-83)"]
    assert rows[-1] == last


def test_lr_plot_curve_follows_the_stages_and_draws_the_batch(tmp_path):
    cfg = digits_adabatch_cfg()
    curve = lr_curve(cfg, 2)
    schedule = BatchSchedule.from_recipe(read_recipe(plan_scaling(cfg, 2).cfg), 2)
    assert len(curve.lrs) == len(curve.batches()) == schedule.total_iterations
    assert curve.images() == [schedule.images_at_iteration(i) for i in range(len(curve.lrs))]
    assert curve.batches()[0] == 64 and curve.batches()[-1] == 512
    figure = plot_lr_curves([curve], str(tmp_path / "lr.png"), dataset_size=1438)
    batch_axes = figure.axes[2]
    assert list(batch_axes.lines[0].get_ydata()) == curve.batches()
    assert (tmp_path / "lr.png").stat().st_size > 10_000


# ---- the engine ----
@META_ARCH_REGISTRY.register()
class AdaBatchTinyRegressor(nn.Module):
    """Predicts each image's (normalised) box; counts the micro-batches it sees in training."""

    def __init__(self, cfg):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)
        self.head = nn.Linear(4, 4)
        self.micro_batches = 0

    def forward(self, batched_inputs):
        self.micro_batches += 1
        images = torch.stack([x["image"] for x in batched_inputs]).float() / 255.0
        boxes = self.head(F.relu(self.conv(images)).mean(dim=(2, 3)))
        targets = torch.stack([x["instances"].gt_boxes.tensor[0] for x in batched_inputs])
        return {"loss_box": F.mse_loss(boxes, targets / IMAGE_SIZE)}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """16 images of noise with one bright rectangle, registered with their boxes."""
    root = tmp_path_factory.mktemp("adabatch_data")
    records = []
    for index in range(NUM_IMAGES):
        rng = np.random.default_rng(index)
        x0, y0 = rng.integers(0, IMAGE_SIZE // 2, size=2)
        x1, y1 = x0 + rng.integers(2, IMAGE_SIZE // 2), y0 + rng.integers(2, IMAGE_SIZE // 2)
        pixels = rng.integers(0, 60, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        pixels[y0:y1, x0:x1] = 230
        Image.fromarray(pixels).save(root / f"{index}.png")
        records.append(
            {
                "file_name": str(root / f"{index}.png"),
                "image_id": index,
                "height": IMAGE_SIZE,
                "width": IMAGE_SIZE,
                "annotations": [
                    {
                        "bbox": [float(x0), float(y0), float(x1), float(y1)],
                        "bbox_mode": BoxMode.XYXY_ABS,
                        "category_id": 0,
                    }
                ],
            }
        )
    if DATASET in DatasetCatalog.list():
        DatasetCatalog.remove(DATASET)
        MetadataCatalog.remove(DATASET)
    DatasetCatalog.register(DATASET, lambda: records)
    MetadataCatalog.get(DATASET).set(thing_classes=["box"])
    return root


def tiny_cfg(output_dir: Path, num_gpus: int = 1):
    """Written for 1 GPU x 2 images: 24 steps = 3 epochs of 16 images, 2 steps of warmup, a
    checkpoint every 12 steps (24 images); AdaBatch doubles the batch every epoch (LR x0.75).
    ``num_gpus`` > 1: the config scaled to that many GPUs, run on this one process by
    accumulating their micro-batches (the same total batch, LR and stages)."""
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "AdaBatchTinyRegressor"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.DATASETS.TRAIN = (DATASET,)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN = (IMAGE_SIZE,)
    cfg.INPUT.MAX_SIZE_TRAIN = IMAGE_SIZE
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 1
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.MAX_ITER = 24
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.WARMUP_ITERS = 2
    cfg.SOLVER.CHECKPOINT_PERIOD = 12
    cfg.SCALING.DATASET_SIZE = NUM_IMAGES
    cfg.SCALING.ADABATCH.ENABLED = True
    cfg.SCALING.ADABATCH.INTERVAL_EPOCHS = 1.0
    cfg.SCALING.ADABATCH.LR_FACTOR = 0.75
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.SEED = 3
    if num_gpus > 1:
        cfg = plan_scaling(plan_scaling(cfg, num_gpus).cfg, 1, keep_reference_batch=True).cfg
    return plan_scaling(cfg, 1).cfg


def train(cfg, resume: bool = False) -> ScalingTrainer:
    torch.set_num_threads(1)
    seed_all_rng(cfg.SEED)
    trainer = ScalingTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def history(trainer: ScalingTrainer, name: str) -> dict[int, float]:
    return {iteration: value for value, iteration in trainer.storage.history(name).values()}


def test_run_grows_the_batch_by_accumulation_with_the_stage_lr(tmp_path, data):
    trainer = train(tiny_cfg(tmp_path / "run"))
    schedule = trainer.batch_schedule
    stages = [(s.num_iters, s.ims_per_batch, s.grad_accum_steps) for s in schedule.stages]
    assert stages == [(8, 2, 1), (4, 4, 2), (2, 8, 4)]
    summary = trainer.summary
    assert (summary["max_iter"], summary["iterations_done"]) == (14, 14)
    assert (summary["images_seen"], summary["epochs_seen"]) == (48, 3.0)
    # Micro-batches of 2 images, really loaded and run: 8 x 1 + 4 x 2 + 2 x 4.
    assert trainer.model.micro_batches == 24
    assert type(trainer._trainer).__name__ == "AccumulatingTrainer"
    batches = history(trainer, "ims_per_batch")
    assert batches == {i: 2 if i < 8 else 4 if i < 12 else 8 for i in range(14)}
    lrs = history(trainer, "lr")
    assert lrs[7] == pytest.approx(0.1) and lrs[8] == pytest.approx(0.075)
    assert lrs[12] == pytest.approx(0.1 * 0.75**2)
    assert lrs[0] == pytest.approx(0.1 * 0.001)  # detectron2's default warmup factor
    # CHECKPOINT_PERIOD 12 steps of batch 2 = every 24 images: after 24 and 48 images.
    names = sorted(path.name for path in (tmp_path / "run").glob("model_*.pth"))
    assert names == ["model_0000009.pth", "model_0000013.pth", "model_final.pth"]
    assert any(isinstance(hook, ImagePeriodHook) for hook in trainer._hooks)
    record = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [s["ims_per_batch"] for s in record["batch_stages"]] == [2, 4, 8]


def test_evaluation_period_counts_images_of_the_starting_batch(tmp_path, data):
    cfg = tiny_cfg(tmp_path / "eval")
    cfg.TEST.EVAL_PERIOD = 6  # every 12 images: steps 6, 10, 13 (12, 24, 40 images), and the end
    torch.set_num_threads(1)
    seed_all_rng(cfg.SEED)
    trainer = ScalingTrainer(cfg)
    (evaluation,) = [h.hook for h in trainer._hooks if isinstance(h, ImagePeriodHook)
                     and isinstance(h.hook, hooks.EvalHook)]  # fmt: skip
    steps_done = []
    evaluation._func = lambda: steps_done.append(trainer.progress.iterations_done) or {}
    trainer.train()
    assert steps_done == [6, 10, 13, 14]


def test_resume_mid_growth_continues_in_the_same_stage(tmp_path, data):
    reference = train(tiny_cfg(tmp_path / "one"))
    checkpoint = tmp_path / "one" / "model_0000009.pth"  # 10 steps: 24 images, mid stage 1
    saved = torch.load(checkpoint, weights_only=False)["trainer"]["hooks"]["ScalingProgress"]
    assert saved["images_seen"] == 24 and saved["iteration"] == 10
    assert saved["adabatch"] == {
        "stage": 1,
        "ims_per_batch": 4,
        "grad_accum_steps": 2,
        "lr_factor": 0.75,
        "stage_starts": [0, 8, 12],
        "max_iter": 14,
    }
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / checkpoint.name).write_bytes(checkpoint.read_bytes())
    (tmp_path / "again" / "last_checkpoint").write_text(checkpoint.name)

    resumed = train(tiny_cfg(tmp_path / "again"), resume=True)
    assert resumed.summary["start_iter"] == 10
    assert resumed.summary["resumed_from"] is None  # same batch and stages: nothing converted
    assert resumed.model.micro_batches == 2 * 2 + 2 * 4  # the rest of stage 1, then stage 2
    assert history(resumed, "ims_per_batch") == {10: 4, 11: 4, 12: 8, 13: 8}
    reference_lrs = history(reference, "lr")
    assert history(resumed, "lr") == pytest.approx({i: reference_lrs[i] for i in range(10, 14)})
    for key in ("iterations_done", "images_seen", "epochs_seen", "final_lr"):
        assert resumed.summary[key] == pytest.approx(reference.summary[key]), key


def test_resume_mid_growth_at_another_gpu_count_converts_by_images(tmp_path, data):
    reference = train(tiny_cfg(tmp_path / "one"))
    checkpoint = tmp_path / "one" / "model_0000009.pth"  # 24 images, mid stage 1 (batch 4)
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / checkpoint.name).write_bytes(checkpoint.read_bytes())
    (tmp_path / "two" / "last_checkpoint").write_text(checkpoint.name)

    # 2 GPUs' setup (starting batch 4, LR x2), here 1 process x 2 micro-batches of 2.
    cfg_two = tiny_cfg(tmp_path / "two", num_gpus=2)
    assert (cfg_two.SOLVER.IMS_PER_BATCH, cfg_two.SCALING.GRAD_ACCUM_STEPS) == (4, 2)
    resumed = train(cfg_two, resume=True)
    stages = [(s.num_iters, s.ims_per_batch) for s in resumed.batch_schedule.stages]
    assert stages == [(4, 4), (2, 8), (1, 16)]
    # 24 images = stage 1's first step of 8 done after 4 of 4: step 5 of 7, still stage 1.
    assert resumed.summary["start_iter"] == 5
    assert resumed.summary["resumed_from"]["adabatch"]["stage"] == 1
    assert history(resumed, "ims_per_batch") == {5: 8, 6: 16}
    assert resumed.model.micro_batches == 4 + 8
    # The same images, the same point of the schedule and stage factor, on twice the base LR.
    reference_lrs = history(reference, "lr")
    lrs = history(resumed, "lr")
    assert lrs[5] == pytest.approx(2 * reference_lrs[10])  # after 24 images
    assert lrs[6] == pytest.approx(2 * reference_lrs[12])  # after 32 images, stage 2
    assert resumed.summary["images_seen"] == 48


def test_progress_converts_a_checkpoint_of_other_stages_by_images():
    cfg = tiny_cfg(Path("unused"), num_gpus=2)  # stages of 4, 8, 16 images from step 0, 4, 6
    schedule = BatchSchedule.from_recipe(read_recipe(cfg), 1)
    other = ScalingProgress(
        BatchSchedule.from_recipe(read_recipe(tiny_cfg(Path("unused"))), 1), 0.1
    )
    other.start_at(11, 28)  # 2, 4, 8 from step 0, 8, 12: 8 x 2 + 3 x 4 images
    # 28 images are in this run's stage 1 (16 .. 32 images, steps of 8 from step 4): 12 images
    # past its start are 1.5 steps, 2 to the nearest even: step 6, the first of stage 2.
    point = resume_point(other.state_dict(), schedule, 11)
    assert point.iteration == 6
    assert point.images_seen == 28  # kept exactly
    assert schedule.stage_at_iteration(point.iteration).index == 2
    assert point.converted_from is not None
    # A checkpoint without AdaBatch at the same starting batch is converted as well.
    plain = tiny_cfg(Path("unused"), num_gpus=2)
    plain.SCALING.ADABATCH.ENABLED = False
    saved = ScalingProgress(BatchSchedule.from_recipe(read_recipe(plain), 1), 0.2).state_dict()
    point = resume_point(saved | {"images_seen": 8}, schedule, 2)
    assert point.iteration == 2 and point.converted_from is not None

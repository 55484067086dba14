"""ScalingTrainer: the same training at any process count, gradient accumulation, resume at another
GPU count, the NaN advice, the outputs.

Everything runs for real on the CPU: detectron2's data loader reads small PNG files through its
``DatasetMapper``, multi-process runs are gloo processes started by ``det_scaling.engine.launch``,
and checkpoints are written and read back. The model is a tiny box regressor (a convolution and a
linear layer, no BatchNorm, whose loss is a mean over the batch), so runs take seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from detectron2.data import build_detection_test_loader
from detectron2.modeling import build_model
from detectron2.solver.lr_scheduler import LRMultiplier
from detectron2.utils import comm
from fvcore.common.param_scheduler import LinearParamScheduler
from helpers import REPO
from helpers.processes import run_train_tool_on_two_processes, synthetic_voc_test_ap50
from helpers.tiny import (
    _resume_worker,
    assert_same_parameters,
    build_trainer,
    continue_from,
    lr_history,
    parameters,
    resume_cfg,
    resume_written_cfg,
)
from torch import nn

import det_scaling
from det_scaling import get_cfg, plan_scaling
from det_scaling.cli import parse_args
from det_scaling.commands.train import setup_process
from det_scaling.config import config_format, read_recipe
from det_scaling.engine import (
    ScalingProgress,
    ScalingTrainer,
    micro_batch_cfg,
    place_scheduler,
    resume_point,
)
from det_scaling.engine.launch import launch
from det_scaling.scaling.batch_schedule import BatchSchedule
from det_scaling.solver import scheduled_lrs
from det_scaling.tasks import prepare_run, synthetic_voc_dir_for
from det_scaling.testing.tiny import NUM_IMAGES, register_images, tiny_cfg


# ---- workers of the multi-process runs (top level: spawned processes import them) ----
def _two_process_runs(data_root: str, out: str) -> None:
    """Two runs of total batch 4 on 2 processes: 2 images each, and 2 x 1 accumulated."""
    results = {}
    for accum in (1, 2):
        cfg = tiny_cfg(Path(out) / f"accum{accum}", ims_per_batch=4, accum=accum)
        trainer = build_trainer(cfg, Path(data_root))
        trainer.train()
        results[accum] = parameters(trainer)
    if comm.is_main_process():
        torch.save(results, Path(out) / "parameters.pt")


# ---- tests ----
def test_micro_batch_is_total_over_processes_and_accumulation(tmp_path):
    cfg = tiny_cfg(tmp_path, ims_per_batch=16, accum=2)
    schedule = BatchSchedule.from_recipe(read_recipe(cfg), 4)
    assert schedule.micro_batch == 2
    assert (
        micro_batch_cfg(config_format(cfg), schedule).SOLVER.IMS_PER_BATCH == 8
    )  # 2 images x 4 processes
    assert cfg.SOLVER.IMS_PER_BATCH == 16  # not changed in place
    with pytest.raises(ValueError, match=r"SCALING\.GRAD_ACCUM_STEPS"):
        BatchSchedule.from_recipe(read_recipe(cfg), 3)


def test_trainer_refuses_config_written_for_another_world_size(tmp_path):
    cfg = tiny_cfg(tmp_path, ims_per_batch=4)
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 8
    with pytest.raises(ValueError, match="plan_scaling"):
        ScalingTrainer(cfg)


def test_accumulating_two_micro_batches_equals_one_double_batch(tmp_path, data):
    big_batch = build_trainer(tiny_cfg(tmp_path / "big", ims_per_batch=4), data)
    big_batch.train()
    accumulated = build_trainer(tiny_cfg(tmp_path / "acc", ims_per_batch=4, accum=2), data)
    accumulated.train()
    assert type(accumulated._trainer).__name__ == "AccumulatingTrainer"
    assert_same_parameters(parameters(big_batch), parameters(accumulated))
    # The logged loss is the mean over the micro-batches, as the big batch's.
    assert accumulated.storage.history("total_loss").values()[0][0] == pytest.approx(
        big_batch.storage.history("total_loss").values()[0][0], rel=1e-5
    )


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_same_total_batch(tmp_path, data):
    one = build_trainer(tiny_cfg(tmp_path / "one", ims_per_batch=4), data)
    one.train()
    launch(_two_process_runs, 2, dist_url="auto", args=(str(data), str(tmp_path)))
    two = torch.load(tmp_path / "parameters.pt")
    initial = parameters(build_trainer(tiny_cfg(tmp_path / "init", ims_per_batch=4), data))
    trained = parameters(one)
    assert any(not torch.equal(initial[k], trained[k]) for k in trained)  # it did train
    assert_same_parameters(trained, two[1])  # 2 processes x 2 images
    assert_same_parameters(trained, two[2])  # 2 processes x 2 micro-batches of 1 (no_sync)


@pytest.mark.slow
def test_resume_one_then_two_then_one_process_matches_an_uninterrupted_run(tmp_path, data):
    # Uninterrupted: 1 process, batch 2, 12 steps; it also leaves the checkpoint after 4 steps.
    uninterrupted = build_trainer(resume_cfg(tmp_path / "one", 1), data)
    reference = uninterrupted.train()
    reference_lr = lr_history(uninterrupted)

    # 2 processes (batch 4, LR x2, 6 steps) from the 1-process checkpoint after 4 steps = 8 images.
    continue_from(tmp_path / "one" / "model_0000003.pth", tmp_path / "two")
    cfg_two = resume_cfg(tmp_path / "two", 2)
    launch(_resume_worker, 2, dist_url="auto", args=(cfg_two, str(data), str(tmp_path / "two")))
    two = torch.load(tmp_path / "two" / "result.pt")
    assert two["summary"]["start_iter"] == 2  # 8 images / 4 per step
    assert two["summary"]["resumed_from"]["world_size"] == 1
    # The same point of the schedule at the same images, on the new base LR (twice the old one):
    # no step at the old LR, no restart of the warmup.
    for iteration, lr in two["lr"].items():
        assert lr == pytest.approx(2 * reference_lr[2 * iteration], rel=1e-9), iteration

    saved = torch.load(tmp_path / "two" / "model_0000003.pth", weights_only=False)
    assert saved["trainer"]["hooks"]["ScalingProgress"] == {
        "images_seen": 16,
        "iteration": 4,
        "world_size": 2,
        "ims_per_batch": 4,
        "grad_accum_steps": 1,
        "max_iter": 6,
        "base_lr": pytest.approx(0.02),
        "dataset_size": NUM_IMAGES,
    }

    # Back to 1 process from the 2-process checkpoint after 4 steps = 16 images: step 8 of 12.
    continue_from(tmp_path / "two" / "model_0000003.pth", tmp_path / "again")
    resumed = build_trainer(resume_cfg(tmp_path / "again", 1), data, resume=True)
    final = resumed.train()
    assert final["start_iter"] == 8
    for key in ("iterations_done", "images_seen", "epochs_seen", "final_lr"):
        assert final[key] == pytest.approx(reference[key]), key
    assert final["epochs_seen"] == 3.0
    resumed_lr = lr_history(resumed)
    assert resumed_lr == pytest.approx({i: reference_lr[i] for i in range(8, 12)})


def extended_cfg(output_dir: Path, max_iter: int, steps: tuple[int, ...], world_size: int = 1):
    """Written for 1 GPU x 2 images with warmup; ``max_iter`` and ``steps`` are what a user edits
    to extend a run."""
    cfg = tiny_cfg(output_dir, ims_per_batch=2, max_iter=max_iter)
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 1
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.STEPS = steps
    cfg.SOLVER.WARMUP_ITERS = 2
    return plan_scaling(cfg, world_size).cfg


def test_extended_run_resumes_at_the_same_iteration_on_the_new_schedule(tmp_path, data):
    # 6 steps with the LR step at 4, then --resume with the run extended to 12, step at 8: the
    # steps after the resume have the LR a fresh run of 12 steps has (detectron2's meaning).
    build_trainer(extended_cfg(tmp_path / "run", 6, (4,)), data).train()
    resumed = build_trainer(extended_cfg(tmp_path / "run", 12, (8,)), data, resume=True)
    summary = resumed.train()
    fresh = build_trainer(extended_cfg(tmp_path / "fresh", 12, (8,)), data)
    fresh.train()
    assert (summary["start_iter"], summary["iterations_done"]) == (6, 12)
    assert summary["images_seen"] == 24 and summary["resumed_from"] is None
    resumed_lr, fresh_lr = lr_history(resumed), lr_history(fresh)
    assert sorted(resumed_lr) == list(range(6, 12))
    assert resumed_lr == pytest.approx({i: fresh_lr[i] for i in range(6, 12)}, rel=1e-12)
    assert resumed_lr[7] == pytest.approx(0.01) and resumed_lr[8] == pytest.approx(0.001)


@pytest.mark.slow
def test_extended_run_resumed_at_another_gpu_count_continues_at_the_same_images(tmp_path, data):
    # 6 steps of 2 images on 1 process (12 images), then on 2 processes with the run extended to
    # 12 steps of the 1-GPU batch: scaled, 6 steps of 4 images; 12 images are step 3 of them.
    build_trainer(extended_cfg(tmp_path / "run", 6, (4,)), data).train()
    cfg_two = extended_cfg(tmp_path / "run", 12, (8,), world_size=2)
    assert (cfg_two.SOLVER.IMS_PER_BATCH, cfg_two.SOLVER.MAX_ITER) == (4, 6)
    launch(_resume_worker, 2, dist_url="auto", args=(cfg_two, str(data), str(tmp_path / "run")))
    two = torch.load(tmp_path / "run" / "result.pt")
    assert two["summary"]["start_iter"] == 3
    assert two["summary"]["images_seen"] == 24
    assert two["summary"]["resumed_from"]["ims_per_batch"] == 2
    expected = scheduled_lrs(cfg_two)  # what a fresh 2-process run of the new config steps through
    assert two["lr"] == pytest.approx({i: expected[i] for i in range(3, 6)}, rel=1e-12)
    assert two["lr"][3] == pytest.approx(0.02) and two["lr"][4] == pytest.approx(0.002)


def noise_schedule_cfg(output_dir: Path, world_size: int):
    """12 steps of 1 GPU x 2 images under the noise schedule with B_crit 2, scaled to
    ``world_size``: on 2 processes (batch 4) the epochs factor is (1 + 4/2) / (1 + 2/2) = 1.5."""
    cfg = resume_written_cfg(output_dir)
    cfg.SCALING.SCHEDULE = "noise"
    cfg.SCALING.NOISE_SCALE.B_CRIT = 2.0
    return plan_scaling(cfg, world_size).cfg


def test_noise_schedule_resumed_at_another_gpu_count_continues_at_the_same_fraction(tmp_path, data):
    build_trainer(noise_schedule_cfg(tmp_path / "one", 1), data).train()
    cfg_two = noise_schedule_cfg(tmp_path / "two", 2)
    # 12 x 2 images x 1.5 / 4 = 9 steps; STEPS (6, 10) at the same fractions: (4, 8).
    assert (cfg_two.SOLVER.MAX_ITER, tuple(cfg_two.SOLVER.STEPS)) == (9, (4, 8))
    # After 4 of 12 steps (8 of 24 images, a third): a third of 36 images is step 3 of 9, where
    # the same images (8) would be step 2.
    continue_from(tmp_path / "one" / "model_0000003.pth", tmp_path / "two")
    launch(_resume_worker, 2, dist_url="auto", args=(cfg_two, str(data), str(tmp_path / "two")))
    two = torch.load(tmp_path / "two" / "result.pt")
    assert two["summary"]["start_iter"] == 3
    assert two["summary"]["iterations_done"] == 9
    assert two["summary"]["images_seen"] == 36  # counted on this run's schedule
    assert two["summary"]["resumed_from"]["images_seen"] == 8
    expected = scheduled_lrs(cfg_two)  # what a fresh 2-process run of this config steps through
    assert two["lr"] == pytest.approx({i: expected[i] for i in range(3, 9)}, rel=1e-12)
    assert two["lr"][3] == pytest.approx(0.02) and two["lr"][4] == pytest.approx(0.002)


def test_nan_loss_error_suggests_the_scaling_rule(tmp_path, data):
    cfg = tiny_cfg(tmp_path / "nan", ims_per_batch=4, max_iter=30)
    cfg.SOLVER.BASE_LR = 1e12
    trainer = build_trainer(cfg, data)
    with pytest.raises(FloatingPointError) as error:
        trainer.train()
    message = str(error.value)
    assert "Loss became infinite or NaN" in message  # detectron2's own message is kept
    assert "SOLVER.REFERENCE_WORLD_SIZE" in message
    assert "SOLVER.BASE_LR 1e+12" in message
    assert "on 1 process(es)" in message


def test_outputs_metrics_tensorboard_summary_and_checkpoint_state(tmp_path, data):
    cfg = tiny_cfg(tmp_path / "out", ims_per_batch=4, accum=2, max_iter=4)
    trainer = build_trainer(cfg, data)
    # The LR schedule reads the run's batch schedule, not one built again from the config.
    assert trainer.scheduler._progress.__self__ is trainer.run.schedule
    summary = trainer.train()

    out = tmp_path / "out"
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert metrics[-1]["iteration"] == 3
    assert metrics[-1]["images_seen"] == 16
    assert metrics[-1]["epoch"] == 2.0
    assert "lr" in metrics[-1] and "total_loss" in metrics[-1]
    assert list(out.glob("events.out.tfevents.*"))
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["images_seen"] == 16
    assert summary["grad_accum_steps"] == 2
    assert summary["micro_batch_per_process"] == 2
    assert summary["images_per_s"] > 0
    assert summary["metrics"] == {}  # DATASETS.TEST is empty

    saved = torch.load(out / "model_final.pth", weights_only=False)
    assert saved["trainer"]["hooks"]["ScalingProgress"]["images_seen"] == 16
    assert "optimizer" in saved["trainer"]["_trainer"]  # momentum survives a resume


TINY_RCNN = """\
_BASE_: "{base}"
MODEL:
  DEVICE: cpu
  WEIGHTS: ""
  MASK_ON: False
  BACKBONE:
    FREEZE_AT: 0
  RESNETS:
    DEPTH: 18
    RES2_OUT_CHANNELS: 64
    NORM: "GN"
  FPN:
    NORM: "GN"
    OUT_CHANNELS: 32
  RPN:
    BATCH_SIZE_PER_IMAGE: 32
    PRE_NMS_TOPK_TRAIN: 100
    POST_NMS_TOPK_TRAIN: 50
    PRE_NMS_TOPK_TEST: 100
    POST_NMS_TOPK_TEST: 50
  ROI_HEADS:
    BATCH_SIZE_PER_IMAGE: 32
    NUM_CLASSES: 5
  ROI_BOX_HEAD:
    FC_DIM: 64
INPUT:
  MIN_SIZE_TRAIN: (64,)
  MAX_SIZE_TRAIN: 64
  MIN_SIZE_TEST: 64
  MAX_SIZE_TEST: 64
DATASETS:
  TRAIN: ("synthetic_voc_trainval",)
  TEST: ("synthetic_voc_test",)
  SYNTHETIC_VOC:  # generated by tools/train.py on first use
    NUM_TRAINVAL: 8
    NUM_TEST: 4
    IMAGE_SIZE: 64
DATALOADER:
  NUM_WORKERS: 0
SOLVER:
  REFERENCE_WORLD_SIZE: 1
  IMS_PER_BATCH: 2
  BASE_LR: 0.001
  MAX_ITER: 8  # 4 at 2 processes: the iteration timer (hence the ETA) skips the first 3
  STEPS: (6,)
  WARMUP_ITERS: 2
"""


@pytest.mark.slow
def test_train_tool_scales_trains_evaluates_and_reports_on_two_cpu_processes(tmp_path):
    """tools/train.py end to end: Faster R-CNN (ResNet-18, GroupNorm, 64-pixel images) written
    for 1 GPU, run on 2 gloo processes, on the synthetic VOC-layout set it generates."""
    config = tmp_path / "tiny_rcnn.yaml"
    config.write_text(TINY_RCNN.format(base=REPO / "configs" / "Base-RCNN-FPN.yaml"))
    out = tmp_path / "out"
    log = run_train_tool_on_two_processes(tmp_path, config, "OUTPUT_DIR", str(out), "SEED", "3")

    # The plan, before training: written for 1 GPU x 2 images, run on 2.
    assert "SOLVER.BASE_LR: 0.001 -> 0.002" in log
    assert log.index("Scaling plan for 2 process(es)") < log.index("Starting training")
    assert "eta:" in log  # detectron2's CommonMetricPrinter
    plan = json.loads((out / "scaling_plan.json").read_text())
    assert plan["world_size"] == 2 and plan["config_file"] == str(config)
    assert {c["key"] for c in plan["changes"]} >= {"SOLVER.IMS_PER_BATCH", "SOLVER.MAX_ITER"}
    scaled = det_scaling.load_cfg(str(out / "config.yaml"))
    assert (scaled.SOLVER.IMS_PER_BATCH, scaled.SOLVER.MAX_ITER) == (4, 4)
    assert scaled.SCALING.DATASET_SIZE == 8  # filled in from the registered training set

    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["images_seen"] == 16 and summary["epochs_seen"] == 2.0
    assert summary["base_lr"] == pytest.approx(0.002)
    # The reported AP50 is the final weights' on the test set: detectron2's own evaluation of
    # model_final.pth here gives the same figure (1.09 measured; untrained weights give 0.43).
    data = synthetic_voc_dir_for(config_format(scaled), tmp_path / "datasets")
    final_ap50 = synthetic_voc_test_ap50(
        build_model(scaled),
        out / "model_final.pth",
        data,
        lambda name: build_detection_test_loader(scaled, name),
    )
    assert summary["metrics"]["bbox/AP50"] == pytest.approx(final_ap50, rel=1e-9)
    assert (out / "metrics.json").exists() and list(out.glob("events.out.tfevents.*"))
    assert (out / "model_final.pth").exists()
    assert (data / "JPEGImages" / "000012.jpg").exists()


@pytest.mark.parametrize("no_scale", [False, True])
def test_train_tool_setup_scales_to_the_world_size_unless_told_not_to(tmp_path, data, no_scale):
    register_images(data)
    cfg = tiny_cfg(tmp_path / "out", ims_per_batch=4)
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 2  # written for 2 GPUs x 2 images; this process is alone
    cfg.SCALING.DATASET_SIZE = 0
    config = tmp_path / "written_for_2.yaml"
    config.write_text(cfg.dump())
    argv = ["train", "--config-file", str(config), *(["--no-scale"] if no_scale else [])]
    args = parse_args([*argv, "SOLVER.BASE_LR", "0.2"])
    run = prepare_run(det_scaling.load_cfg(args.config_file, args.opts), 1, no_scale=no_scale)
    setup_process(args, run)
    scaled = run.cfg

    assert scaled.SCALING.DATASET_SIZE == NUM_IMAGES
    saved = json.loads((tmp_path / "out" / "scaling_plan.json").read_text())
    assert saved["overrides"] == ["SOLVER.BASE_LR", "0.2"] and saved["no_scale"] == no_scale
    if no_scale:  # as written: the batch is the total, whatever the process count
        assert scaled.SOLVER.REFERENCE_WORLD_SIZE == 0
        assert (scaled.SOLVER.IMS_PER_BATCH, scaled.SOLVER.BASE_LR) == (4, 0.2)
        assert saved["changes"] == []
    else:  # 2 images on the one GPU: half the batch, half the LR (linear), twice the steps
        assert scaled.SOLVER.REFERENCE_WORLD_SIZE == 1
        assert scaled.SOLVER.IMS_PER_BATCH == 2
        assert scaled.SOLVER.BASE_LR == pytest.approx(0.1)
        assert scaled.SOLVER.MAX_ITER == 6
        assert "SOLVER.BASE_LR" in {c["key"] for c in saved["changes"]}
    assert det_scaling.load_cfg(str(tmp_path / "out" / "config.yaml")) == scaled


def test_resume_at_another_batch_counts_images_and_takes_this_runs_base_lr():
    schedule = BatchSchedule(ims_per_batch=3, grad_accum_steps=1, total_images=24, world_size=3)
    # A checkpoint of 2 processes x 2 images after 1 step; 4 images are nearest to 1 step of 3.
    saved = {
        "images_seen": 4,
        "iteration": 1,
        "world_size": 2,
        "ims_per_batch": 4,
        "grad_accum_steps": 1,
        "max_iter": 6,
        "base_lr": 0.4,
        "dataset_size": 0,
    }
    point = resume_point(saved, schedule, 1)
    assert point.iteration == 1
    assert point.converted_from["ims_per_batch"] == 4
    assert point.images_seen == 4  # kept exactly, not rounded to 3

    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.3)
    scheduler = LRMultiplier(optimizer, LinearParamScheduler(1.0, 0.0), max_iter=8)
    scheduler.load_state_dict({"base_lrs": [0.4], "last_epoch": 1})  # what the checkpoint holds
    optimizer.param_groups[0]["initial_lr"] = 0.4  # as the checkpoint's optimizer state restores
    place_scheduler(scheduler, optimizer, [0.3], point.iteration)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.3 * (1 - 1 / 8))
    # detectron2's LRScheduler hook builds a scheduler of a ParamScheduler from initial_lr.
    assert optimizer.param_groups[0]["initial_lr"] == 0.3
    with pytest.raises(ValueError, match="2 base LRs for 1 optimizer param groups"):
        place_scheduler(scheduler, optimizer, [0.3, 0.1], point.iteration)
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.3 * (1 - 2 / 8))


def test_resume_at_the_same_batch_keeps_detectron2s_iteration():
    cfg = get_cfg()
    cfg.SOLVER.IMS_PER_BATCH = 4
    schedule = BatchSchedule.from_recipe(read_recipe(cfg), 1)  # 1 GPU x 4 images, was 4 GPUs x 1
    saved = ScalingProgress(BatchSchedule.from_recipe(read_recipe(cfg), 4), 0.1).state_dict()
    point = resume_point({**saved, "images_seen": 20}, schedule, 5)
    assert (point.iteration, point.converted_from) == (5, None)
    # A checkpoint without the state (a plain detectron2 trainer): assumed at this batch.
    point = resume_point(None, schedule, 7)
    assert (point.iteration, point.images_seen) == (7, 28)


@pytest.mark.parametrize(
    ("saved_batch", "saved_steps", "batch", "iteration"),
    [
        (4, 5, 3, 7),  # 20 images: 6.67 steps of 3 (not the checkpoint's 5, nor floor's 6)
        (4, 4, 3, 5),  # 16 images: 5.33 steps of 3 (not ceil's 6, nor the checkpoint's 4)
        (2, 3, 4, 2),  # 6 images: 1.5 steps of 4, the tie to even (not floor's 1, nor 3)
        (2, 5, 4, 2),  # 10 images: 2.5 steps of 4, the tie to even (not half-up's 3, nor 5)
    ],
)
def test_resume_at_another_batch_continues_at_the_nearest_step_in_images(
    saved_batch, saved_steps, batch, iteration
):
    """Geometries where the checkpoint's step, and floor, ceil or half-up rounding, differ."""
    schedule = BatchSchedule(ims_per_batch=batch, grad_accum_steps=1, total_images=120)
    images = saved_batch * saved_steps
    saved = {
        "images_seen": images,
        "iteration": saved_steps,
        "world_size": saved_batch,
        "ims_per_batch": saved_batch,
        "grad_accum_steps": 1,
        "max_iter": 120 // saved_batch,
        "base_lr": 0.1,
        "dataset_size": 0,
    }
    point = resume_point(saved, schedule, saved_steps)
    assert (point.iteration, point.images_seen) == (iteration, images)
    assert point.converted_from["ims_per_batch"] == saved_batch

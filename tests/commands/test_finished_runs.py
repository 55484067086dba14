"""Finished runs for ``advise --from-runs``: reading a run's summary.json and metrics.json (a real
tiny run, and folders written in the format real runs write), epochs-to-target, and the critical
batch fitted to several runs."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog
from helpers.tiny import build_trainer
from PIL import Image
from torchvision.ops import box_iou

from det_scaling.commands.finished_runs import (
    FinishedRun,
    epochs_to_target,
    fit_from_runs,
    read_finished_run,
)
from det_scaling.errors import ConfigError
from det_scaling.testing.tiny import DATASET, IMAGE_SIZE, tiny_cfg

WRITER_PERIOD = 20  # detectron2's PeriodicWriter in a yacs run


# ---- a real run ----
def box_hits_at_iou_50(model) -> float:
    """The tiny regressor's detection quality: the percentage of the training images whose
    predicted box overlaps the true one by IoU >= 0.5 (one box an image, as AP50 counts it)."""
    records = DatasetCatalog.get(DATASET)
    # HWC RGB files; the model trains on CHW BGR (detectron2's default INPUT.FORMAT).
    pixels = [
        np.asarray(Image.open(r["file_name"]))[:, :, ::-1].transpose(2, 0, 1) for r in records
    ]
    images = torch.as_tensor(np.stack(pixels)).float() / 255
    truth = torch.tensor([r["annotations"][0]["bbox"] for r in records])
    with torch.no_grad():
        boxes = model.head(F.relu(model.conv(images)).mean(dim=(2, 3))) * IMAGE_SIZE
    hits = box_iou(boxes, truth).diagonal() >= 0.5
    return 100.0 * hits.float().mean().item()


def test_reads_the_evaluation_curve_a_real_tiny_run_wrote(tmp_path, data):
    """The tiny detector (batch 2, 8 images), evaluated every 15 steps, so that its evaluations
    fall between detectron2's writes (lines of their own) and once more at the end; the curve
    read back is what the trainer evaluated, at the epochs it had seen."""
    cfg = tiny_cfg(tmp_path / "out", ims_per_batch=2, max_iter=40)
    cfg.SOLVER.BASE_LR = 0.2
    cfg.TEST.EVAL_PERIOD = 15
    trainer = build_trainer(cfg, data)
    evaluated = []

    def evaluate(cfg, model) -> dict:
        value = box_hits_at_iou_50(model)
        evaluated.append((trainer.progress.epochs_seen, value))
        return {"bbox": {"AP50": value}}

    trainer.test = evaluate  # where detectron2's EvalHook calls the trainer's evaluation
    trainer.train()

    run = read_finished_run(tmp_path / "out")
    assert [epochs for epochs, _ in evaluated] == [3.75, 7.5, 10.0]  # 15, 30, 40 steps of 2 in 8
    assert run.curve == tuple(evaluated)
    assert (run.batch, run.dataset_size, run.metric) == (2, 8, "bbox/AP50")
    assert not run.batch_grows
    assert run.final_value == evaluated[-1][1]


# ---- folders in the format real runs write ----
# metrics.json of a real run: tools/train.py on faster_rcnn_synthetic_tiny.yaml shrunk to 8
# images of 64 pixels, 20 steps of 1 image, TEST.EVAL_PERIOD 6 (after scaling). detectron2
# writes every 20 steps the latest value of each scalar: of the evaluations after 6, 12 and 18
# steps, only the last is left, on a line of its own (iteration 17), after the training line of
# the write; the final evaluation follows the loop (iteration 20, the steps done).
RCNN_METRICS = """\
{"data_time": 0.007163438000134192, "epoch": 2.5, "eta_seconds": 0.0, "fast_rcnn/cls_accuracy": 0.6875, "fast_rcnn/false_negative": 1.0, "fast_rcnn/fg_cls_accuracy": 0.0, "images_seen": 20.0, "ims_per_batch": 1.0, "iteration": 19, "loss_box_reg": 0.766990065574646, "loss_cls": 1.2033585906028748, "loss_rpn_cls": 0.6820034682750702, "loss_rpn_loc": 0.07996741682291031, "lr": 0.0005, "roi_head/num_bg_samples": 47.0, "roi_head/num_fg_samples": 17.0, "rpn/num_neg_anchors": 56.5, "rpn/num_pos_anchors": 7.5, "time": 0.39781874750042334, "total_loss": 2.964934978634119}
{"bbox/AP": 0.6655067831814928, "bbox/AP50": 2.550467552942392, "bbox/AP75": 0.4195804195804196, "iteration": 17}
{"bbox/AP": 0.7003855911574812, "bbox/AP50": 2.5631977153416434, "bbox/AP75": 0.4545454545454545, "iteration": 20}
"""  # noqa: E501


def summary(
    batch: int,
    max_iter: int,
    dataset_size: int | None,
    metrics: dict[str, float],
    stages: list[dict] | None = None,
) -> dict:
    """summary.json as ScalingTrainer.build_summary writes it (the environment shortened)."""
    images = batch * max_iter
    return {
        "world_size": 1,
        "ims_per_batch": batch,
        "grad_accum_steps": 1,
        "micro_batch_per_process": batch,
        "base_lr": 0.005,
        "scaling_rule": "linear",
        "max_iter": max_iter,
        "start_iter": 0,
        "iterations_done": max_iter,
        "images_seen": images,
        "epochs_seen": images / dataset_size if dataset_size else None,
        "wall_time_s": 10.8,
        "train_time_s": 9.8,
        "images_per_s": 2.05,
        "final_lr": 0.0005,
        "metrics": metrics,
        "resumed_from": None,
        "batch_stages": stages
        or [
            {
                "index": 0,
                "start_iter": 0,
                "num_iters": max_iter,
                "start_images": 0,
                "ims_per_batch": batch,
                "grad_accum_steps": 1,
                "lr_factor": 1.0,
            }
        ],
        "gradient_noise": None,
        "adascale": None,
        "environment": {"versions": {"detectron2": "0.6"}, "world_size": 1},
    }


def write_run(
    folder: Path,
    *,
    batch: int,
    max_iter: int,
    curve: Callable[[float], float] | None,
    eval_period: int = WRITER_PERIOD,
    dataset_size: int | None = 64,
    metric: str = "bbox/AP50",
) -> Path:
    """A run's summary.json and metrics.json as detectron2 and ScalingTrainer write them: a
    training line every 20 steps; ``curve(epochs)`` evaluated every ``eval_period`` steps (on
    the training line when a write falls on it, else on a line of its own after it; of several
    between two writes, the last only) and after the last step."""
    folder.mkdir(parents=True)
    size = dataset_size or 64  # the epochs a run without a known size still trained
    lines, last_write = [], -1
    for iteration in range(max_iter):
        if (iteration + 1) % WRITER_PERIOD and iteration != max_iter - 1:
            continue
        images = (iteration + 1) * batch
        line = {"data_time": 0.003, "eta_seconds": 1.5, "images_seen": float(images)}
        line |= {"ims_per_batch": float(batch), "iteration": iteration, "lr": 0.01}
        line |= {"time": 0.01, "total_loss": 0.5}
        if dataset_size:
            line["epoch"] = images / dataset_size
        evals = []
        if curve is not None:
            evals = [
                steps - 1
                for steps in range(eval_period, max_iter, eval_period)
                if last_write < steps - 1 <= iteration
            ]
        # Of the evaluations since the last write, detectron2 writes the latest only.
        for evaluated in evals[-1:]:
            if evaluated == iteration:
                line[metric] = curve(images / size)
            else:
                lines.append(line)
                line = {metric: curve((evaluated + 1) * batch / size), "iteration": evaluated}
        lines.append(line)
        last_write = iteration
    final = {}
    if curve is not None:
        final = {metric: curve(max_iter * batch / size)}
        lines.append({**final, "iteration": max_iter})
    text = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines)
    (folder / "metrics.json").write_text(text)
    written = summary(batch, max_iter, dataset_size, final)
    (folder / "summary.json").write_text(json.dumps(written, indent=2))
    return folder


def test_reads_the_lines_of_a_real_detection_run(tmp_path):
    run_dir = tmp_path / "rcnn"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(RCNN_METRICS)
    final = {"bbox/AP": 0.7003855911574812, "bbox/AP50": 2.5631977153416434}
    (run_dir / "summary.json").write_text(json.dumps(summary(1, 20, 8, final), indent=2))

    run = read_finished_run(run_dir)
    # After 18 and 20 steps of 1 image, of 8.
    assert run.curve == ((2.25, 2.550467552942392), (2.5, 2.5631977153416434))
    assert (run.batch, run.dataset_size, run.metric) == (1, 8, "bbox/AP50")
    assert read_finished_run(run_dir, "bbox/AP75").curve == (
        (2.25, 0.4195804195804196),
        (2.5, 0.4545454545454545),
    )


def test_curve_in_epochs_for_evaluations_on_and_between_writes(tmp_path):
    def linear(epochs: float) -> float:
        return 10.0 * epochs

    on = read_finished_run(write_run(tmp_path / "on", batch=16, max_iter=50, curve=linear))
    assert on.curve == ((5.0, 50.0), (10.0, 100.0), (12.5, 125.0))  # after 20, 40 and 50 steps
    between = write_run(tmp_path / "between", batch=16, max_iter=50, curve=linear, eval_period=12)
    # Evaluated after 12, 24, 36 and 48 steps: the one after 24 was overwritten before a write.
    expected = ((3.0, 30.0), (9.0, 90.0), (12.0, 120.0), (12.5, 125.0))
    assert read_finished_run(between).curve == expected


def test_detects_a_classification_run_and_reads_another_metric_when_named(tmp_path):
    folder = write_run(
        tmp_path / "cls", batch=32, max_iter=40, curve=lambda e: 4 * e, metric="classification/top1"
    )
    run = read_finished_run(folder)
    assert run.metric == "classification/top1"
    assert run.curve == ((10.0, 40.0), (20.0, 80.0))
    with pytest.raises(ConfigError) as error:
        read_finished_run(folder, metric="bbox/AP50")
    assert str(error.value) == (
        f"{folder / 'metrics.json'}: no evaluation of 'bbox/AP50'; name one of the run's "
        "metrics: classification/top1"
    )


def test_a_resumed_runs_later_evaluation_of_a_step_replaces_the_earlier(tmp_path):
    folder = write_run(tmp_path / "run", batch=16, max_iter=50, curve=lambda e: e)
    with open(folder / "metrics.json", "a") as f:
        f.write(json.dumps({"bbox/AP50": 7.0, "iteration": 39}, sort_keys=True) + "\n")
    assert read_finished_run(folder).curve == ((5.0, 5.0), (10.0, 7.0), (12.5, 12.5))


def test_dataset_size_when_the_summary_has_none(tmp_path):
    folder = write_run(tmp_path / "run", batch=16, max_iter=40, curve=lambda e: e, dataset_size=0)
    with pytest.raises(ConfigError) as error:
        read_finished_run(folder)
    assert str(error.value) == (
        f"{folder / 'summary.json'}: no dataset size (epochs_seen is null: the run's "
        "SCALING.DATASET_SIZE was 0); give the training set's size in images"
    )
    run = read_finished_run(folder, dataset_size=128)
    assert run.dataset_size == 128 and run.curve == ((2.5, 5.0), (5.0, 10.0))


def test_folder_without_a_summary_is_refused(tmp_path):
    with pytest.raises(ConfigError) as error:
        read_finished_run(tmp_path)
    assert str(error.value) == (
        f"{tmp_path}: no summary.json; give the output directory of a finished run (train "
        "writes it when training ends)"
    )


def test_run_without_evaluations_is_refused_naming_what_it_has(tmp_path):
    folder = write_run(tmp_path / "run", batch=16, max_iter=40, curve=None)
    with pytest.raises(ConfigError) as error:
        read_finished_run(folder)
    assert str(error.value) == (
        f"{folder / 'metrics.json'}: no evaluation of bbox/AP50 or classification/top1 (the run "
        "evaluates with DATASETS.TEST and TEST.EVAL_PERIOD); the run's summary has no "
        "evaluation either"
    )
    (folder / "metrics.json").unlink()
    with pytest.raises(ConfigError, match=r"no metrics\.json, so no evaluation to read$"):
        read_finished_run(folder)


def test_a_torn_metrics_line_is_refused_with_its_line_number(tmp_path):
    folder = write_run(tmp_path / "run", batch=16, max_iter=40, curve=lambda e: e)
    with open(folder / "metrics.json", "a") as f:
        f.write('{"bbox/AP50": 3.\n')
    with pytest.raises(ConfigError, match=r"metrics.json:4: not a metrics.json line"):
        read_finished_run(folder)


# ---- epochs to a target ----
CURVE = ((1.0, 20.0), (2.0, 40.0), (3.0, 50.0), (4.0, 45.0), (5.0, 60.0))


@pytest.mark.parametrize(
    ("target", "epochs"),
    [
        (30.0, 1.5),  # halfway between the evaluations at 1 and 2 epochs
        (48.0, 2.8),
        (40.0, 2.0),  # reached at an evaluation
        (10.0, 1.0),  # reached at the first evaluation already
        (55.0, 4 + 10 / 15),  # the first crossing, after the dip
        (60.0, 5.0),
        (61.0, None),
    ],
)
def test_epochs_to_target_interpolates_the_first_crossing(target, epochs):
    found = epochs_to_target(CURVE, target)
    assert found == (None if epochs is None else pytest.approx(epochs, rel=1e-12))


def test_a_curve_without_evaluations_never_reaches_a_target():
    assert epochs_to_target((), 1.0) is None


# ---- the fit ----
DATASET_SIZE = 1280  # at batch 16, an evaluation every 20 steps is one every 0.25 epochs
E_MIN, B_CRIT = 2.36, 64.0


def law_epochs(batch: int) -> float:
    return E_MIN * (1 + batch / B_CRIT)


def law_run(
    tmp_path: Path, name: str, batch: int, curve: Callable[[float], float] | None = None, **kwargs
) -> FinishedRun:
    """A run whose metric grows linearly through 59 at the epochs of the law, trained for 1.3
    times those epochs; at batch 16, for 3 epochs: it ends at 60."""
    epochs = law_epochs(batch)
    trained = 3.0 if batch == 16 else 1.3 * epochs
    kwargs.setdefault("dataset_size", DATASET_SIZE)
    folder = write_run(
        tmp_path / name,
        batch=batch,
        max_iter=math.ceil(trained * DATASET_SIZE / batch),
        curve=curve or (lambda e: 59.0 * e / epochs),
        **kwargs,
    )
    return read_finished_run(folder)


def test_fit_from_runs_recovers_the_law_its_runs_follow(tmp_path):
    """Runs at 16, 64 and 256 whose metric crosses the reference's final value minus 1 at the
    epochs of E = 2.36 (1 + B / 64), between two evaluations."""
    runs = [law_run(tmp_path, f"b{batch}", batch) for batch in (256, 16, 64)]
    assert runs[1].final_value == pytest.approx(60.0)
    target, points, fit, unreached = fit_from_runs(runs)
    assert target == pytest.approx(59.0)
    assert [b for b, _ in points] == [16.0, 64.0, 256.0]
    assert [e for _, e in points] == pytest.approx([law_epochs(b) for b in (16, 64, 256)])
    assert fit.e_min == pytest.approx(E_MIN) and fit.b_crit == pytest.approx(B_CRIT)
    assert fit.b_crit_interval == pytest.approx((B_CRIT, B_CRIT), rel=1e-6)
    assert unreached == []


def test_seeds_at_one_batch_give_their_mean_epochs(tmp_path):
    """Two seeds at 64 reach the target at 0.8 and 1.2 times the law's epochs: the point is
    their mean."""
    epochs = law_epochs(64)
    seeds = [
        law_run(tmp_path, f"seed{i}", 64, curve=lambda e, f=factor: 59.0 * e / (f * epochs))
        for i, factor in enumerate((0.8, 1.2))
    ]
    assert [epochs_to_target(s.curve, 59.0) for s in seeds] == pytest.approx(
        [0.8 * epochs, 1.2 * epochs]
    )
    _, points, fit, _ = fit_from_runs([law_run(tmp_path, "b16", 16), *seeds])
    assert points[1] == pytest.approx((64.0, epochs))
    assert fit.b_crit == pytest.approx(B_CRIT)


def test_runs_that_never_reach_the_target_are_returned_and_left_out(tmp_path):
    stalled = law_run(tmp_path, "stalled", 64, curve=lambda e: min(50.0, 59.0 * e))
    runs = [law_run(tmp_path, "b16", 16), stalled, law_run(tmp_path, "b256", 256)]
    _, points, fit, unreached = fit_from_runs(runs)
    assert unreached == [stalled]
    assert [b for b, _ in points] == [16.0, 256.0]
    assert fit.b_crit == pytest.approx(B_CRIT) and fit.b_crit_interval is None

    with pytest.raises(ConfigError) as error:
        fit_from_runs(runs[:2])
    assert str(error.value) == (
        "runs at 1 batch size(s) reach the target bbox/AP50 59 (reference 16's final 60 minus "
        "margin 1); 1 run(s) never do: a larger margin, or runs trained longer, are needed"
    )


def test_the_reference_batch_and_margin_set_the_target(tmp_path):
    runs = [law_run(tmp_path, f"b{batch}", batch) for batch in (16, 64, 256)]
    reference = runs[1].final_value
    target, points, _, _ = fit_from_runs(runs, reference=64, margin=20.0)
    assert target == pytest.approx(reference - 20.0)
    assert points[0][1] == pytest.approx(epochs_to_target(runs[0].curve, target))
    with pytest.raises(ConfigError) as error:
        fit_from_runs(runs, reference=32)
    assert str(error.value) == "reference: no run at batch 32; the runs' batches are 16, 64, 256"


def test_runs_that_cannot_be_compared_are_refused(tmp_path):
    b16 = law_run(tmp_path, "b16", 16)
    cases = [
        (
            [b16, law_run(tmp_path, "top1", 64, metric="classification/top1")],
            f"{tmp_path / 'top1'} is read by 'classification/top1' but {tmp_path / 'b16'} by "
            "'bbox/AP50': read all runs by one metric",
        ),
        (
            [b16, law_run(tmp_path, "other", 64, dataset_size=640)],
            f"{tmp_path / 'other'} trained on 640 images but {tmp_path / 'b16'} on 1280: compare "
            "runs on one training set",
        ),
        ([], "runs: give finished runs at two or more batch sizes"),
    ]
    for runs, message in cases:
        with pytest.raises(ConfigError) as error:
            fit_from_runs(runs)
        assert str(error.value) == message
    with pytest.raises(ConfigError) as error:
        fit_from_runs([b16], margin=-1.0)
    assert str(error.value) == "margin must be a number >= 0, got -1.0"


def test_a_run_whose_batch_grows_is_refused(tmp_path):
    folder = write_run(tmp_path / "adabatch", batch=16, max_iter=40, curve=lambda e: e)
    stages = [
        {"index": 0, "start_iter": 0, "num_iters": 20, "start_images": 0, "ims_per_batch": 16},
        {"index": 1, "start_iter": 20, "num_iters": 20, "start_images": 320, "ims_per_batch": 32},
    ]
    written = json.loads((folder / "summary.json").read_text())
    written["batch_stages"] = [s | {"grad_accum_steps": 1, "lr_factor": 1.0} for s in stages]
    written["images_seen"] = 960
    (folder / "summary.json").write_text(json.dumps(written))
    run = read_finished_run(folder)
    assert run.batch_grows
    with pytest.raises(ConfigError, match="its batch grows during training"):
        fit_from_runs([run, law_run(tmp_path, "b64", 64)])

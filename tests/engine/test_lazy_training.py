"""Training a LazyConfig: the same engine as a yacs config (a twin trains to the same weights),
several processes, resume at another GPU count, tools/train.py end to end.

The tiny box regressor, its 8 PNG images and the helpers come from test_engine; here they are
built from a LazyConfig as detectron2's lazyconfig_train_net builds models and loaders.
"""

from __future__ import annotations

import functools
import json

import detectron2.data.build
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data.samplers import TrainingSampler
from helpers import REPO
from helpers.processes import run_train_tool_on_two_processes, synthetic_voc_test_ap50
from helpers.tiny import (
    _resume_worker,
    assert_same_parameters,
    build_trainer,
    continue_from,
    lazy_resume_cfg,
    lr_history,
    parameters,
    resume_cfg,
)

from det_scaling.config import config_format, read_recipe
from det_scaling.engine import LazyScalingTrainer, nan_advice
from det_scaling.engine.launch import launch
from det_scaling.tasks import synthetic_voc_dir_for


def test_a_lazyconfig_and_its_yacs_twin_train_to_the_same_weights(tmp_path, data, monkeypatch):
    # detectron2 main seeds the YAML loader's sampler with SEED; its LazyConfig loader (and
    # v0.6's YAML one) take a shared random seed. The same data order for both: SEED (7).
    monkeypatch.setattr(
        detectron2.data.build, "TrainingSampler", functools.partial(TrainingSampler, seed=7)
    )
    yacs = build_trainer(resume_cfg(tmp_path / "yacs", 1), data)
    yacs_summary = yacs.train()
    lazy = build_trainer(lazy_resume_cfg(tmp_path / "lazy", 1), data)
    lazy_summary = lazy.train()
    assert_same_parameters(parameters(yacs), parameters(lazy))
    assert lr_history(lazy) == pytest.approx(lr_history(yacs), rel=1e-12)
    for key in ("ims_per_batch", "base_lr", "max_iter", "images_seen", "epochs_seen", "final_lr"):
        assert lazy_summary[key] == pytest.approx(yacs_summary[key]), key
    assert (tmp_path / "lazy" / "summary.json").exists()


@pytest.mark.slow
def test_two_process_lazyconfig_run_resumed_on_one_process_continues_at_the_same_images(
    tmp_path, data
):
    uninterrupted = build_trainer(lazy_resume_cfg(tmp_path / "one", 1), data)
    reference = uninterrupted.train()
    reference_lr = lr_history(uninterrupted)

    # 2 processes: batch 4, LR x2, 6 steps, a checkpoint every 2 steps (8 images).
    cfg_two = lazy_resume_cfg(tmp_path / "two", 2)
    assert (cfg_two.dataloader.train.total_batch_size, cfg_two.train.max_iter) == (4, 6)
    assert list(cfg_two.lr_multiplier.scheduler.milestones) == [3, 5]
    # (--resume in an empty output directory starts afresh.)
    launch(_resume_worker, 2, dist_url="auto", args=(cfg_two, str(data), str(tmp_path / "two")))
    two = torch.load(tmp_path / "two" / "result.pt")
    for iteration, lr in two["lr"].items():  # the same schedule at the same images, LR x2
        assert lr == pytest.approx(2 * reference_lr[2 * iteration], rel=1e-9), iteration
    saved = torch.load(tmp_path / "two" / "model_0000003.pth", weights_only=False)
    assert saved["trainer"]["hooks"]["ScalingProgress"]["images_seen"] == 16
    assert saved["trainer"]["hooks"]["ScalingProgress"]["world_size"] == 2

    # 1 process from the 2-process checkpoint after 4 steps = 16 images: step 8 of 12.
    continue_from(tmp_path / "two" / "model_0000003.pth", tmp_path / "again")
    resumed = build_trainer(lazy_resume_cfg(tmp_path / "again", 1), data, resume=True)
    final = resumed.train()
    assert final["start_iter"] == 8
    assert final["resumed_from"]["world_size"] == 2
    for key in ("iterations_done", "images_seen", "epochs_seen", "final_lr"):
        assert final[key] == pytest.approx(reference[key]), key
    assert lr_history(resumed) == pytest.approx({i: reference_lr[i] for i in range(8, 12)})


@pytest.mark.slow
def test_train_tool_trains_a_lazyconfig_on_two_processes(tmp_path):
    """tools/train.py with the `make demo-lazy` config, made small by key=value overrides:
    written for 2 processes x 1 image, run on 2, on the synthetic VOC set it generates."""
    out = tmp_path / "out"
    overrides = [
        f"train.output_dir={out}",
        "train.max_iter=8",
        "train.eval_period=0",
        "train.checkpointer.period=4",
        "train.reference_world_size=1",  # written for 1 GPU x 2 images: rescaled for 2
        "dataloader.synthetic_voc.num_trainval=8",
        # Enough test images that the final evaluation finds an object (AP50 above 0 tells
        # the evaluation of one set of weights from another's): AP50 0.014 measured.
        "dataloader.synthetic_voc.num_test=16",
        "dataloader.synthetic_voc.image_size=64",
        "train.scaling.dataset_size=0",  # filled in from the generated set
    ]
    config = REPO / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny.py"
    log = run_train_tool_on_two_processes(tmp_path, config, *overrides)

    assert "optimizer.lr: 0.01 -> 0.02" in log
    assert log.index("Scaling plan for 2 process(es)") < log.index("Starting training")
    plan = json.loads((out / "scaling_plan.json").read_text())
    assert plan["config_file"] == str(config) and plan["overrides"] == overrides
    changed = {c["key"] for c in plan["changes"]}
    assert {"dataloader.train.total_batch_size", "lr_multiplier.scheduler.milestones"} <= changed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ims_per_batch"] == 4
    assert summary["max_iter"] == 4 and summary["images_seen"] == 16
    assert summary["epochs_seen"] == 2.0  # 16 images of the 8 generated
    assert (out / "config.yaml").exists() and (out / "model_final.pth").exists()

    # The reported AP50 is the final weights' on the test set: detectron2's own evaluation of
    # model_final.pth here, with the saved config's model and test loader, gives the same figure
    # (the untrained weights give 0.18).
    saved = LazyConfig.load(str(out / "config.yaml"))

    def test_loader(name: str):
        saved.dataloader.test.dataset.names = name
        return instantiate(saved.dataloader.test)

    data = synthetic_voc_dir_for(config_format(saved), tmp_path / "datasets")
    final_ap50 = synthetic_voc_test_ap50(
        instantiate(saved.model), out / "model_final.pth", data, test_loader
    )
    assert final_ap50 > 0  # else the comparison could not tell one set of weights from another
    assert summary["metrics"]["bbox/AP50"] == pytest.approx(final_ap50, rel=1e-9)


def test_trainer_refuses_a_lazyconfig_written_for_another_world_size(tmp_path):
    cfg = lazy_resume_cfg(tmp_path, 2)  # written for 2 processes; this one is alone
    with pytest.raises(ValueError, match=r"train\.reference_world_size is 2 but .*plan_scaling"):
        LazyScalingTrainer(cfg)


def test_nan_advice_names_the_lazyconfig_keys(tmp_path):
    advice = nan_advice(read_recipe(lazy_resume_cfg(tmp_path, 2)), 2)
    assert "this run uses optimizer.lr 0.02 on 2 process(es) with a total batch of 4" in advice
    assert "(dataloader.train.total_batch_size, 1 micro-batch(es) per step)" in advice
    assert "set train.reference_world_size to the GPU count it was written for" in advice
    assert "train.scaling.rule sqrt or a longer lr_multiplier's warmup_length" in advice

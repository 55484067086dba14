"""A pretrained detector backbone made by the project: a classifier on detectron2's ResNet, the
ResNet of a classifier or of a detector exported and loaded into the tiny detector by
MODEL.WEIGHTS, and the once-per-machine cache of a pretraining."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

import det_scaling
from det_scaling.classification.model import BackboneClassifier
from det_scaling.commands.pretrain import export_backbone, pretrained_backbone

REPO = Path(__file__).resolve().parents[2]
DETECTOR = REPO / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny.yaml"
DIGITS_SWEEP = REPO / "configs" / "ImageNet-Classification" / "resnet18_digits_sweep.yaml"
# A classifier on the tiny detector's ResNet-18 with GroupNorm, BGR like the detector.
D2_CLASSIFIER = [
    "MODEL.CLASSIFIER.BACKBONE", "detectron2",
    "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.RESNETS.NORM", "GN", "MODEL.BACKBONE.FREEZE_AT", "0",
    "MODEL.DEVICE", "cpu",
]  # fmt: skip
# Small enough for a test: digits at 8x8, 3 steps of 16 images on one process.
TINY_PRETRAINING = [
    *D2_CLASSIFIER,
    "INPUT.CLS_TRAIN_SIZE", "8", "INPUT.CLS_TEST_RESIZE", "8", "INPUT.CLS_TEST_SIZE", "8",
    "SOLVER.IMS_PER_BATCH", "16", "SOLVER.REFERENCE_WORLD_SIZE", "1",
    "SCALING.EPOCHS.MAX", "0.034", "SCALING.EPOCHS.STEPS", "()", "SCALING.EPOCHS.WARMUP", "0.0",
]  # fmt: skip


def saved_model(cfg, path: Path) -> dict[str, torch.Tensor]:
    """A randomly initialised model of ``cfg``, saved as a trainer's checkpoint."""
    torch.manual_seed(0)
    state = build_model(cfg).state_dict()
    torch.save({"model": state, "iteration": 9}, path)
    return state


def load_into_the_tiny_detector(weights: Path) -> tuple[dict, dict]:
    """The tiny detector's state before and after loading ``weights`` by MODEL.WEIGHTS."""
    cfg = det_scaling.load_cfg(str(DETECTOR), ["MODEL.WEIGHTS", str(weights)])
    torch.manual_seed(1)
    detector = build_model(cfg)
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    DetectionCheckpointer(detector).load(cfg.MODEL.WEIGHTS)
    return before, detector.state_dict()


@pytest.mark.parametrize("source", ["classifier", "detector"])
def test_exported_resnet_loads_into_the_tiny_detector_by_model_weights(tmp_path, source):
    if source == "classifier":
        cfg = det_scaling.load_cfg(str(DIGITS_SWEEP), D2_CLASSIFIER)
        assert isinstance(build_model(cfg).net, BackboneClassifier)
        prefix = "net.backbone."
    else:  # another detector of the same ResNet (pretrained on other data)
        cfg = det_scaling.load_cfg(str(DETECTOR))
        prefix = "backbone.bottom_up."
    state = saved_model(cfg, tmp_path / "model.pth")
    weights = export_backbone(tmp_path / "model.pth", tmp_path / "backbone.pth")
    before, after = load_into_the_tiny_detector(weights)
    resnet = {k for k in after if k.startswith("backbone.bottom_up.")}
    assert len(resnet) == len([k for k in state if k.startswith(prefix)]) > 50
    for key in resnet:  # every weight of the ResNet comes from the exported model
        assert torch.equal(after[key], state[prefix + key.removeprefix("backbone.bottom_up.")])
    for key in set(after) - resnet:  # FPN, RPN and box head keep their initialisation
        assert torch.equal(after[key], before[key]), key


def test_export_refuses_a_checkpoint_without_a_detectron2_resnet(tmp_path):
    torch.save({"model": {"net.conv1.weight": torch.zeros(1)}}, tmp_path / "tv.pth")
    with pytest.raises(ValueError, match="no detectron2 ResNet"):
        export_backbone(tmp_path / "tv.pth", tmp_path / "out.pth")


@pytest.mark.slow
def test_pretraining_runs_once_and_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    weights = pretrained_backbone(DIGITS_SWEEP, TINY_PRETRAINING)
    root = tmp_path / "pretrained" / DIGITS_SWEEP.stem
    assert weights == root / "backbone.pth"
    assert (root / "datasets" / "digits").is_dir()  # its data made in the cache, apart
    assert not (tmp_path / "digits").exists()
    saved = torch.load(weights, weights_only=False)
    assert saved["matching_heuristics"] and "res5.1.conv2.weight" in saved["model"]
    mtime = weights.stat().st_mtime_ns
    assert pretrained_backbone(DIGITS_SWEEP, TINY_PRETRAINING) == weights
    assert weights.stat().st_mtime_ns == mtime  # cached: not trained again
    pretrained_backbone(DIGITS_SWEEP, [*TINY_PRETRAINING, "SEED", "5"])  # another config
    assert weights.stat().st_mtime_ns != mtime

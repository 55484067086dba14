"""A pretrained detector backbone made by the project itself, since none can be downloaded: the
ImageNet step of a VOC detector, in this world.

:func:`export_backbone` takes a checkpoint of a model with a detectron2 ResNet (a detector, where
it is ``backbone.bottom_up`` with FPN or ``backbone`` without, or an ``ImageClassifier`` with
``MODEL.CLASSIFIER.BACKBONE "detectron2"``, where it is ``net.backbone``) and writes its weights
under detectron2's ResNet names (``stem.conv1.weight``, ``res2.0.conv1.norm.weight`` ...), marked
for detectron2's name matching (``matching_heuristics``, as its ImageNet ``.pkl`` files are): a
detector of the same ``MODEL.RESNETS`` loads them with ``MODEL.WEIGHTS``, its other layers
keeping their initialisation.

:func:`pretrained_backbone` trains a config once per machine (``det-scaling train``) and caches
its exported backbone under ``$DETECTRON2_DATASETS/pretrained/<config name>/`` with a manifest of
the config, so that later runs load it. Data sets the pretraining generates are made in the
cache's own data folder, apart from those of the runs that load the backbone.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from det_scaling.commands.train import launch_training, training_args
from det_scaling.config import load_cfg
from det_scaling.data import datasets_root
from det_scaling.data.generated import GeneratedSet
from det_scaling.errors import ConfigError

__all__ = ["BACKBONE_FILE", "BACKBONE_PREFIXES", "export_backbone", "pretrained_backbone"]

logger = logging.getLogger(__name__)

BACKBONE_FILE = "backbone.pth"
# Where a detectron2 ResNet sits in a model's state dict: FPN detector, classifier, C4 detector
# (tried in this order: "backbone." also prefixes the FPN's own layers).
BACKBONE_PREFIXES = ("backbone.bottom_up.", "net.backbone.", "backbone.")
_MANIFEST = "pretrained.json"


def export_backbone(checkpoint: str | Path, output: str | Path) -> Path:
    """Writes the ResNet weights of ``checkpoint`` to ``output`` in the form ``MODEL.WEIGHTS``
    loads into a detector (see the module); returns ``output`` as a Path. Raises ``ConfigError``
    when the checkpoint holds no detectron2 ResNet."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = state.get("model", state)
    for prefix in BACKBONE_PREFIXES:
        weights = {k.removeprefix(prefix): v for k, v in model.items() if k.startswith(prefix)}
        if "stem.conv1.weight" in weights:
            break
    else:
        raise ConfigError(
            f"{checkpoint}: no detectron2 ResNet (stem.conv1.weight under any of "
            f"{', '.join(BACKBONE_PREFIXES)}); export a detector or an ImageClassifier with "
            'MODEL.CLASSIFIER.BACKBONE "detectron2"'
        )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": weights,
            "__author__": "det_scaling.commands.pretrain",
            "matching_heuristics": True,
        },
        output,
    )
    return output


def pretrained_backbone(
    config_file: str | Path,
    overrides: Sequence[str] = (),
    num_gpus: int = 1,
    data_root: str | Path | None = None,
) -> Path:
    """The exported backbone of ``config_file`` trained with ``overrides`` on ``num_gpus``
    processes: trained and cached under ``$DETECTRON2_DATASETS/pretrained/<config name>/`` on the
    first call, read from there after (a cache made from another config or overrides is
    replaced). Its data sets are read, or generated, under ``data_root`` (default: the cache's
    ``datasets/``; pass ``det_scaling.data.datasets_root()`` for real data such as ImageNet).
    Call it outside a process group: it launches its own."""
    cfg = load_cfg(str(config_file), list(overrides))
    root = datasets_root() / "pretrained" / Path(config_file).stem
    cache = GeneratedSet(root, _MANIFEST, ("train", "datasets"), {"config": cfg.dump()})
    weights = root / BACKBONE_FILE
    with cache.locked():
        if cache.is_complete([weights]):
            return weights
        logger.info("Pretraining a backbone with %s into %s", config_file, root)
        cache.begin()
        output = root / "train"
        args = training_args(
            config_file, [*overrides, "OUTPUT_DIR", str(output)], num_gpus=num_gpus
        )
        saved = os.environ.get("DETECTRON2_DATASETS")
        os.environ["DETECTRON2_DATASETS"] = str(data_root or root / "datasets")
        try:
            launch_training(args)  # spawned processes inherit the data root
        finally:
            if saved is None:
                del os.environ["DETECTRON2_DATASETS"]
            else:
                os.environ["DETECTRON2_DATASETS"] = saved
        export_backbone(output / "model_final.pth", weights)
        summary = json.loads((output / "summary.json").read_text())
        cache.finish(metrics=summary["metrics"], train_time_s=summary["train_time_s"])
    return weights

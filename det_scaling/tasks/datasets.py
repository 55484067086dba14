"""The data sets a config names: registered, sized and checked against its model.

Detection and classification differ only in model, data and metric; this package is the one place
that tells them apart. A LazyConfig builds its model, data and evaluator itself (its trainer
instantiates them); its data sets are the names its loaders read
(``dataloader.{train,test}.dataset.names``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog

from det_scaling.classification.data import (
    DIGITS_SPLITS,
    EVALUATOR_TYPE,
    IMAGENET_SPLITS,
    register_classification_datasets,
    register_imagenet,
)
from det_scaling.classification.digits import digits_counts
from det_scaling.config import ConfigFormat
from det_scaling.data import (
    SYNTHETIC_CLASS_NAMES,
    count_images,
    datasets_root,
    generate_synthetic_voc,
    register_synthetic_voc,
    register_voc2007,
    synthetic_voc_dir,
)
from det_scaling.data.classes import check_class_count
from det_scaling.data.generated import generate_once
from det_scaling.errors import ConfigError

__all__ = [
    "SYNTHETIC_VOC_SPLITS",
    "check_task",
    "generate_synthetic_voc_for",
    "register_datasets",
    "synthetic_voc_dir_for",
    "training_set_size",
]

# Registered name -> split of the set DATASETS.SYNTHETIC_VOC generates.
SYNTHETIC_VOC_SPLITS = {"synthetic_voc_trainval": "trainval", "synthetic_voc_test": "test"}
# The folder under the data sets root that holds a folder per parameter set of the synthetic set.
_SYNTHETIC_VOC_FOLDER = "synthetic_voc"
# The key of each meta-architecture's number of classes.
_NUM_CLASSES_KEYS = {
    "ImageClassifier": "MODEL.CLASSIFIER.NUM_CLASSES",
    "GeneralizedRCNN": "MODEL.ROI_HEADS.NUM_CLASSES",
    "RetinaNet": "MODEL.RETINANET.NUM_CLASSES",
}
# sklearn's digits: labels 0 to 9, one class folder each.
_DIGITS_CLASS_NAMES = tuple(str(label) for label in range(10))


def register_datasets(adapter: ConfigFormat) -> None:
    """Registers the data sets the config names, under ``$DETECTRON2_DATASETS`` (``./datasets``):
    ``voc_2007_*`` from ``VOC2007/``; ``synthetic_voc_*`` from the folder of the parameters of
    ``DATASETS.SYNTHETIC_VOC`` (``dataloader.synthetic_voc``), :func:`synthetic_voc_dir_for`,
    generated on first use; ``digits_*`` (exported on first use) and ``imagenet_*``. Generated
    sets are written once per machine (:func:`~det_scaling.data.generated.generate_once`)."""
    train, test = adapter.dataset_names()
    names = (*train, *test)
    register_voc2007()
    if set(names) & set(SYNTHETIC_VOC_SPLITS):
        generate_once(lambda: generate_synthetic_voc_for(adapter))
        register_synthetic_voc(synthetic_voc_dir_for(adapter))
    register_classification_datasets(names)


def check_task(adapter: ConfigFormat) -> None:
    """Raises ``ConfigError`` when a data set of ``DATASETS.TRAIN`` is of the other task than the
    model (a detection set for ``ImageClassifier``, a classification set for a detector) or has
    more classes than the model has outputs. Reads nothing that is not there: generated sets are
    known from the config; call after :func:`training_set_size` (which registers the others).
    A LazyConfig's model is known only once instantiated, so it is not checked here."""
    if adapter.is_lazy:
        return
    cfg = adapter.cfg
    classifier = cfg.MODEL.META_ARCHITECTURE == "ImageClassifier"
    task = "classification" if classifier else "detection"
    key = _NUM_CLASSES_KEYS.get(cfg.MODEL.META_ARCHITECTURE)
    for name in cfg.DATASETS.TRAIN:
        dataset_task, classes = _task_and_classes(name)
        if dataset_task is not None and dataset_task != task:
            raise ConfigError(
                f"DATASETS.TRAIN: {name!r} is a {dataset_task} data set but "
                f"MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE} is a {task} model; "
                f"use a {task} data set, or a config written for {dataset_task}"
            )
        if key is not None and classes is not None:
            outputs = functools.reduce(lambda node, part: node[part], key.split("."), cfg)
            check_class_count(key, outputs, name, classes)


def _task_and_classes(name: str) -> tuple[str | None, tuple[str, ...] | None]:
    """The task ("detection", "classification" or None: unknown) and classes of a data set."""
    if name in SYNTHETIC_VOC_SPLITS:
        return "detection", SYNTHETIC_CLASS_NAMES
    if name in DIGITS_SPLITS:
        return "classification", _DIGITS_CLASS_NAMES
    if name not in DatasetCatalog.list():
        return None, None
    meta = MetadataCatalog.get(name)
    evaluator = getattr(meta, "evaluator_type", None)
    classes = getattr(meta, "thing_classes", None)
    if evaluator is None:
        task = None
    else:
        task = "classification" if evaluator == EVALUATOR_TYPE else "detection"
    return task, tuple(classes) if classes is not None else None


def training_set_size(adapter: ConfigFormat) -> int:
    """Images in the training data sets (``DATASETS.TRAIN``, ``dataloader.train.dataset.names``),
    without writing anything: generated sets from their parameters, the others read from disk.
    Raises ``ConfigError`` naming the data sets when they are not registered, not on disk or
    empty."""
    key = adapter.keys.train_datasets
    names = list(adapter.dataset_names()[0])
    if not names:
        raise ConfigError(f"{key} is empty: training needs a data set")
    try:
        size = sum(_size(adapter, name) for name in names)
    except (FileNotFoundError, NotADirectoryError) as error:
        raise ConfigError(
            f"cannot load the training data {names}: {error}; put the data set under "
            f"{datasets_root()} or point $DETECTRON2_DATASETS at the folder that holds it"
        ) from error
    if size == 0:
        raise ConfigError(f"{key}: the training data {names} has no images")
    return size


def _size(fmt: ConfigFormat, name: str) -> int:
    if name in SYNTHETIC_VOC_SPLITS:
        split = SYNTHETIC_VOC_SPLITS[name]
        return fmt.synthetic_voc()["num_trainval" if split == "trainval" else "num_test"]
    if name in DIGITS_SPLITS:
        return digits_counts()[DIGITS_SPLITS[name]]
    register_voc2007()
    if name in IMAGENET_SPLITS:
        register_imagenet()
    if name not in DatasetCatalog.list():
        raise ConfigError(
            f"{fmt.keys.train_datasets}: data set {name!r} is not registered; use a registered "
            "name or register it with detectron2's DatasetCatalog first"
        )
    return count_images(name)


def synthetic_voc_dir_for(adapter: ConfigFormat, root: str | os.PathLike | None = None) -> Path:
    """The folder of the synthetic VOC-layout set that ``DATASETS.SYNTHETIC_VOC``
    (``dataloader.synthetic_voc``) describes: ``<root>/synthetic_voc/<key>``, ``root`` as in
    :func:`~det_scaling.data.datasets_root` (``$DETECTRON2_DATASETS``), the key of its parameters
    (:func:`~det_scaling.data.synthetic_voc_dir`); whether or not it is made yet."""
    return synthetic_voc_dir(_synthetic_voc_root(root), **_synthetic_voc_args(adapter))


def generate_synthetic_voc_for(
    adapter: ConfigFormat, root: str | os.PathLike | None = None
) -> Path:
    """Generates (or finds already made) the synthetic VOC-layout set that
    ``DATASETS.SYNTHETIC_VOC`` (``dataloader.synthetic_voc``) describes, in its folder
    :func:`synthetic_voc_dir_for` under the data sets root ``root``; returns that folder."""
    return generate_synthetic_voc(_synthetic_voc_root(root), **_synthetic_voc_args(adapter))


def _synthetic_voc_root(root: str | os.PathLike | None) -> Path:
    return datasets_root(root) / _SYNTHETIC_VOC_FOLDER


def _synthetic_voc_args(adapter: ConfigFormat) -> dict[str, Any]:
    spec = adapter.synthetic_voc()
    return {
        "num_trainval": spec["num_trainval"],
        "num_test": spec["num_test"],
        "image_size": spec["image_size"],
        "seed": spec["seed"],
        "objects_per_image": tuple(spec["objects_per_image"]),
        "object_size": tuple(spec["object_size"]),
    }

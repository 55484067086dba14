"""ImageNet-style folders as detectron2 data sets, and the classification loaders.

A split is a folder of class folders (``train/<class>/*.jpg``, ``val/<class>/*.png`` ...): the
layout of ImageNet once unpacked, and of the embedded digits (:mod:`.digits`).
:func:`register_image_folder` puts one split in detectron2's ``DatasetCatalog`` as a list of
``{"file_name", "label", "image_id"}`` dicts, with the class names in ``MetadataCatalog``
(``thing_classes``, which detectron2 checks for consistency across ``DATASETS.TRAIN``).

The loaders are detectron2's: :func:`build_classification_train_loader` is
``build_detection_train_loader`` with :class:`ClassificationDatasetMapper` (detectron2's
sampler, ``SOLVER.IMS_PER_BATCH / world size`` images per process and batch, workers), and
:func:`build_classification_test_loader` is ``build_detection_test_loader`` with
``TEST.CLS_IMS_PER_PROCESS`` images a batch (:func:`det_scaling.compat.build_test_loader`: v0.6's
has 1 image a batch).

Nothing is registered at import. The standard names the configs use (``digits_train``,
``digits_val``, ``imagenet_train``, ``imagenet_val``) are registered by
:func:`register_classification_datasets`, in every process, like any detectron2 data set.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.detection_utils import read_image
from torchvision.transforms import v2

from det_scaling.classification.digits import digits_dir, export_digits
from det_scaling.compat import build_test_loader
from det_scaling.data import datasets_root
from det_scaling.data.generated import generate_once
from det_scaling.errors import ConfigError

__all__ = [
    "DIGITS_SPLITS",
    "IMAGENET_SPLITS",
    "IMAGE_EXTENSIONS",
    "ClassificationDatasetMapper",
    "build_classification_test_loader",
    "build_classification_train_loader",
    "load_image_folder",
    "register_classification_datasets",
    "register_digits",
    "register_image_folder",
    "register_imagenet",
]

# What the loader reads (case-insensitive); ImageNet ships JPEG, the digits are PNG.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Registered name -> split folder, in the export's folder under <datasets root>/digits
# (digits_dir) and under <datasets root>/imagenet.
DIGITS_SPLITS = {"digits_train": "train", "digits_val": "val"}
IMAGENET_SPLITS = {"imagenet_train": "train", "imagenet_val": "val"}
EVALUATOR_TYPE = "classification"


# ---- data sets ----


def load_image_folder(
    split_dir: str | os.PathLike, class_names: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """The images of an ImageNet-style split, sorted by class then file name: one dict per image
    with ``file_name`` (absolute), ``label`` (the index of its folder in ``class_names``) and
    ``image_id`` (``<class>/<file stem>``).

    ``class_names`` defaults to the sorted folder names (torchvision's ``ImageFolder`` order);
    given (a validation split uses its training split's), a folder not in it is an error.
    """
    split_dir = Path(split_dir)
    folders = _class_folders(split_dir)
    class_names = list(folders if class_names is None else class_names)
    unknown = sorted(set(folders) - set(class_names))
    if unknown:
        raise ConfigError(
            f"{split_dir} has class folders that are not among the {len(class_names)} classes "
            f"of its data set: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}"
        )
    label_of = {name: label for label, name in enumerate(class_names)}
    records = []
    for name in folders:
        with os.scandir(split_dir / name) as entries:
            files = sorted(
                entry.name
                for entry in entries
                if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
            )
        records += [
            {
                "file_name": str(split_dir / name / file),
                "label": label_of[name],
                "image_id": f"{name}/{os.path.splitext(file)[0]}",
            }
            for file in files
        ]
    if not records:
        raise FileNotFoundError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders of {split_dir}"
        )
    return records


def register_image_folder(
    name: str, split_dir: str | os.PathLike, class_names: Sequence[str] | None = None
) -> None:
    """Registers the ImageNet-style split ``split_dir`` as the detectron2 data set ``name``.

    ``class_names`` as in :func:`load_image_folder` (default: the sorted class folders, listed
    now; the images are listed when the data set is loaded). The metadata holds
    ``thing_classes``, ``split_dir`` and ``evaluator_type`` "classification". A registration of
    ``name`` that reads another folder or other classes is replaced; the same one is kept.
    """
    split_dir = Path(os.path.abspath(os.path.expanduser(split_dir)))
    class_names = list(_class_folders(split_dir) if class_names is None else class_names)
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if getattr(meta, "split_dir", None) == str(split_dir) and list(
            getattr(meta, "thing_classes", [])
        ) == list(class_names):
            return
        # MetadataCatalog refuses to change an attribute in place, so the entry goes first.
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_image_folder(split_dir, class_names))
    MetadataCatalog.get(name).set(
        thing_classes=class_names, split_dir=str(split_dir), evaluator_type=EVALUATOR_TYPE
    )


def register_digits(root: str | os.PathLike | None = None, **export_args: Any) -> tuple[str, str]:
    """Exports the digits when needed (:func:`export_digits`, with ``export_args``) in their
    parameters' folder under ``<root>/digits`` (:func:`digits_dir`) and registers ``digits_train``
    and ``digits_val`` from it (metadata ``split_dir``: ``<folder>/train``, ``<folder>/val``);
    returns the two names.

    ``root`` defaults to ``$DETECTRON2_DATASETS``, else ``./datasets``. In a multi-process run
    each process calls it: the first process of each machine exports, the others wait for it.
    """
    exports = datasets_root(root) / "digits"
    generate_once(lambda: export_digits(exports, **export_args))
    return _register_splits(digits_dir(exports, **export_args), DIGITS_SPLITS)


def register_imagenet(root: str | os.PathLike | None = None) -> tuple[str, str]:
    """Registers ``imagenet_train`` and ``imagenet_val`` from ``<root>/imagenet/{train,val}``
    (``root`` as in :func:`register_digits`); returns the two names. Raises
    ``FileNotFoundError`` with the expected layout when the folders are missing."""
    directory = datasets_root(root) / "imagenet"
    missing = [split for split in IMAGENET_SPLITS.values() if not (directory / split).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"ImageNet not found: {', '.join(str(directory / s) for s in missing)} missing. "
            "Expected the ImageNet-1k folder layout, imagenet/train/<wnid>/*.JPEG and "
            "imagenet/val/<wnid>/*.JPEG (validation images sorted into class folders), under "
            "$DETECTRON2_DATASETS (default ./datasets)"
        )
    return _register_splits(directory, IMAGENET_SPLITS)


def register_classification_datasets(
    names: Iterable[str], root: str | os.PathLike | None = None
) -> list[str]:
    """Registers the standard classification data sets among ``names`` (e.g. a config's
    ``DATASETS.TRAIN`` + ``DATASETS.TEST``): the digits (exported if needed) and ImageNet;
    returns the names registered. Other names are left alone."""
    names = set(names)
    registered: list[str] = []
    if names & set(DIGITS_SPLITS):
        registered += register_digits(root)
    if names & set(IMAGENET_SPLITS):
        registered += register_imagenet(root)
    return registered


def _register_splits(directory: Path, splits: dict[str, str]) -> tuple[str, ...]:
    """Registers each split folder of ``directory``, all with the first (training) split's
    classes, so that a label means the same class in every split."""
    class_names = _class_folders(directory / next(iter(splits.values())))
    for name, split in splits.items():
        register_image_folder(name, directory / split, class_names)
    return tuple(splits)


def _class_folders(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise FileNotFoundError(f"no such data set folder: {split_dir}")
    folders = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
    if not folders:
        raise FileNotFoundError(f"{split_dir} has no class folders (expected <class>/<image>)")
    return folders


# ---- mapper and loaders ----


class ClassificationDatasetMapper:
    """Turns a data set dict into the model's input: ``{"image": uint8 CHW tensor, "label": int,
    "file_name", "image_id"}``; the model converts to float and normalises (as detectron2's
    ``DatasetMapper`` and models share the work).

    Training: a random-resized crop (area in ``crop_scale`` of the image, aspect in
    ``crop_ratio``) to ``train_size`` square, then a random flip (``flip``: "horizontal",
    "vertical" or "none"). Evaluation: shorter side resized to ``test_resize``, center crop of
    ``test_size``. Small images are upscaled by the same operations, with antialiasing.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        image_format: str,
        train_size: int,
        crop_scale: tuple[float, float],
        crop_ratio: tuple[float, float],
        flip: str,
        test_resize: int,
        test_size: int,
    ) -> None:
        self.is_train = is_train
        self.image_format = image_format
        if is_train:
            steps: list[Any] = [
                v2.RandomResizedCrop(
                    train_size, scale=tuple(crop_scale), ratio=tuple(crop_ratio), antialias=True
                )
            ]
            if flip == "horizontal":
                steps.append(v2.RandomHorizontalFlip())
            elif flip == "vertical":
                steps.append(v2.RandomVerticalFlip())
            elif flip != "none":
                raise ConfigError(
                    f"INPUT.RANDOM_FLIP must be 'horizontal', 'vertical' or 'none', got {flip!r}"
                )
        else:
            steps = [v2.Resize(test_resize, antialias=True), v2.CenterCrop(test_size)]
        self.transform = v2.Compose(steps)

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> dict[str, Any]:
        return {
            "is_train": is_train,
            "image_format": cfg.INPUT.FORMAT,
            "train_size": cfg.INPUT.CLS_TRAIN_SIZE,
            "crop_scale": tuple(cfg.INPUT.CLS_CROP_SCALE),
            "crop_ratio": tuple(cfg.INPUT.CLS_CROP_RATIO),
            "flip": cfg.INPUT.RANDOM_FLIP,
            "test_resize": cfg.INPUT.CLS_TEST_RESIZE,
            "test_size": cfg.INPUT.CLS_TEST_SIZE,
        }

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        # detectron2's reader: EXIF orientation, grayscale and palette images to INPUT.FORMAT.
        image = read_image(dataset_dict["file_name"], format=self.image_format)
        chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return {
            "image": self.transform(chw),
            "label": int(dataset_dict["label"]),
            "file_name": dataset_dict["file_name"],
            "image_id": dataset_dict["image_id"],
        }


def build_classification_train_loader(cfg: CfgNode) -> torch.utils.data.DataLoader:
    """detectron2's training loader over ``DATASETS.TRAIN`` with the classification mapper:
    an infinite stream of lists of ``SOLVER.IMS_PER_BATCH / world size`` mapped dicts (the
    engine passes a config whose ``IMS_PER_BATCH`` is one micro-batch over all processes).
    Aspect-ratio grouping is off: every crop has the same size."""
    return build_detection_train_loader(
        cfg, mapper=ClassificationDatasetMapper(cfg, True), aspect_ratio_grouping=False
    )


def build_classification_test_loader(
    cfg: CfgNode, dataset_name: str
) -> torch.utils.data.DataLoader:
    """The images of ``dataset_name`` once each, split among the processes by detectron2's
    ``InferenceSampler``, in batches of ``TEST.CLS_IMS_PER_PROCESS`` (lists of mapped dicts)."""
    return build_test_loader(
        get_detection_dataset_dicts([dataset_name], filter_empty=False),
        ClassificationDatasetMapper(cfg, False),
        batch_size=cfg.TEST.CLS_IMS_PER_PROCESS,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )

"""Registration of VOC-layout data sets (PASCAL VOC2007 and the synthetic set) with detectron2.

Both go through detectron2's own ``register_pascal_voc``, so training reads them with
``load_voc_instances`` and evaluation uses ``PascalVOCDetectionEvaluator`` (``evaluator_type``
"pascal_voc", year 2007: the VOC07 11-point metric).

Names. detectron2 registers ``voc_2007_trainval`` / ``voc_2007_test`` (and others) when
``detectron2.data`` is imported, under ``$DETECTRON2_DATASETS`` (default ``datasets``) as it was
at that moment, relative to the working directory of that moment. :func:`register_voc2007` keeps
those standard names, which the configs use, and points them at the requested root: when the
existing registration already reads the same directory it is left as it is, otherwise it is
replaced. Re-registering is per process, like every detectron2 catalog entry: each worker of a
multi-process run calls these functions itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.pascal_voc import CLASS_NAMES as _DETECTRON2_VOC_CLASS_NAMES
from detectron2.data.datasets.pascal_voc import register_pascal_voc

from det_scaling.data.synthetic_voc import CLASS_NAMES as SYNTHETIC_CLASS_NAMES
from det_scaling.data.synthetic_voc import MANIFEST_NAME, read_manifest

__all__ = [
    "VOC2007_SPLITS",
    "VOC_CLASS_NAMES",
    "count_images",
    "datasets_root",
    "register_synthetic_voc",
    "register_voc2007",
]

VOC_CLASS_NAMES: tuple[str, ...] = tuple(_DETECTRON2_VOC_CLASS_NAMES)
# The registered name of each VOC2007 split this toolkit uses, as detectron2 names them.
VOC2007_SPLITS = {"voc_2007_trainval": "trainval", "voc_2007_test": "test"}


def datasets_root(root: str | os.PathLike | None = None) -> Path:
    """The data sets directory: ``root`` if given, else ``$DETECTRON2_DATASETS``, else
    ``./datasets`` (detectron2's convention), as an absolute path."""
    if root is None:
        root = os.environ.get("DETECTRON2_DATASETS", "datasets")
    return Path(os.path.abspath(os.path.expanduser(root)))


def register_voc2007(root: str | os.PathLike | None = None) -> tuple[str, str]:
    """Points ``voc_2007_trainval`` and ``voc_2007_test`` at ``<root>/VOC2007`` (``root`` as in
    :func:`datasets_root`), with the 20 VOC classes; returns the two names (train, test).

    Nothing is read from disk until a data set is loaded; a missing directory is reported then by
    detectron2's loader.
    """
    dirname = datasets_root(root) / "VOC2007"
    for name, split in VOC2007_SPLITS.items():
        _register(name, dirname, split, VOC_CLASS_NAMES)
    return tuple(VOC2007_SPLITS)


def register_synthetic_voc(
    root: str | os.PathLike, name_prefix: str = "synthetic_voc"
) -> tuple[str, str]:
    """Registers the synthetic set in the folder ``root`` (its parameters' own, as
    ``generate_synthetic_voc`` returns it and ``synthetic_voc_dir`` names it) as
    ``<name_prefix>_trainval`` and ``<name_prefix>_test``; returns the two names (train, test).

    The metadata's ``dirname`` is that folder. The class names come from the set's manifest; the
    year is 2007, so the evaluator uses the VOC07 11-point AP. Raises ``FileNotFoundError`` when
    ``root`` holds no complete generated set.
    """
    dirname = Path(os.path.abspath(os.path.expanduser(root)))
    manifest = read_manifest(dirname)
    if manifest is None or not manifest.get("complete", False):
        state = "is missing" if manifest is None else "says the set is incomplete"
        sets = sorted(p.parent.name for p in dirname.glob(f"*/{MANIFEST_NAME}"))
        hint = (
            f"; it holds the folders of parameter sets ({', '.join(sets[:3])}"
            f"{' ...' if len(sets) > 3 else ''}): pass one of them"
            if manifest is None and sets
            else ""
        )
        raise FileNotFoundError(
            f"no complete synthetic data set in {dirname} (its {MANIFEST_NAME} {state}){hint}; "
            "make one with det_scaling.data.generate_synthetic_voc(root, num_trainval, num_test), "
            "which returns its folder, or `det-scaling data synthetic-voc ROOT`"
        )
    class_names = tuple(manifest.get("class_names", SYNTHETIC_CLASS_NAMES))
    names = (f"{name_prefix}_trainval", f"{name_prefix}_test")
    for name, split in zip(names, ("trainval", "test"), strict=True):
        _register(name, dirname, split, class_names)
    return names


def count_images(names: str | Sequence[str]) -> int:
    """Number of images in the registered data set(s) ``names`` (what ``SCALING.DATASET_SIZE``
    holds for ``DATASETS.TRAIN``); loads each through ``DatasetCatalog``."""
    if isinstance(names, str):
        names = (names,)
    return sum(len(DatasetCatalog.get(name)) for name in names)


def _register(name: str, dirname: Path, split: str, class_names: tuple[str, ...]) -> None:
    """Registers a VOC-layout split, replacing an existing registration that reads elsewhere."""
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        current = getattr(meta, "dirname", None)
        if (
            current is not None
            and os.path.abspath(current) == str(dirname)
            and getattr(meta, "split", None) == split
            and tuple(getattr(meta, "thing_classes", ())) == class_names
        ):
            return
        # MetadataCatalog refuses to change an attribute in place, so the entry goes first.
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_pascal_voc(name, str(dirname), split, 2007, class_names)
    MetadataCatalog.get(name).evaluator_type = "pascal_voc"

"""scikit-learn's digits, written once as an ImageNet-style folder: the embedded classification set.

``sklearn.datasets.load_digits`` ships with scikit-learn (no download): 1797 grayscale 8x8 images
of handwritten digits, 10 classes, about 180 per class. :func:`export_digits` writes them in the
layout ImageNet is distributed in once unpacked, so the folder loader reads both the same way, in
a folder of each parameter set's own under ``root`` (in a run, ``$DETECTRON2_DATASETS/digits``),
named by :func:`digits_dir`::

    root/<key>/train/<class>/<index>.png   class directories "0" .. "9"; index: sklearn's, 4 digits
    root/<key>/val/<class>/<index>.png
    root/<key>/digits.json                 the parameters, counts and whether the export is complete

``<key>`` is ``<upscale>px-val<val_fraction>-seed<seed>-<hash>``, the hash that of all the
parameters (:class:`DigitsParams`): exports with other parameters go to other folders, and a
complete one is never rewritten while a run may read it.

Pixels go from sklearn's 0..16 to 0..255 and are upscaled (bilinear by default) to ``upscale``
pixels a side; PNG keeps them exactly. The validation split takes ``val_fraction`` of each class
(stratified), chosen by a random stream seeded with ``seed``: the same parameters give the same
files, byte for byte (with the same Pillow). A complete export with the same parameters is reused.

Only one process per machine should call it (:func:`det_scaling.data.generated.generate_once`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from det_scaling.data.generated import GeneratedSet, parameter_key
from det_scaling.data.generated import read_manifest as _read_manifest
from det_scaling.errors import ConfigError

__all__ = [
    "MANIFEST_NAME",
    "DigitsParams",
    "digits_counts",
    "digits_dir",
    "digits_params",
    "export_digits",
    "read_manifest",
]

MANIFEST_NAME = "digits.json"
SPLITS = ("train", "val")
# Bumped whenever a change here changes the files a given set of parameters makes.
EXPORT_VERSION = 1
_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


@dataclass(frozen=True)
class DigitsParams:
    """Everything that determines the exported files; stored in the manifest."""

    upscale: int
    val_fraction: float
    seed: int
    resample: str
    version: int = EXPORT_VERSION

    def key(self) -> str:
        """The name of this parameter set's folder (:func:`digits_dir`)."""
        label = f"{self.upscale}px-val{self.val_fraction:g}-seed{self.seed}"
        return parameter_key(label, asdict(self))


def digits_params(
    upscale: int = 32, val_fraction: float = 0.2, seed: int = 0, *, resample: str = "bilinear"
) -> DigitsParams:
    """The parameters of :func:`export_digits`, checked (``ConfigError``)."""
    params = DigitsParams(int(upscale), float(val_fraction), int(seed), str(resample))
    _check_params(params)
    return params


def digits_dir(root: str | Path, *args: Any, **kwargs: Any) -> Path:
    """The folder under ``root`` of the export :func:`export_digits` makes with the same arguments
    (``root/<key>``; the arguments after ``root`` as :func:`digits_params` takes them), whether or
    not it is made yet."""
    return Path(root) / digits_params(*args, **kwargs).key()


def export_digits(
    root: str | Path,
    upscale: int = 32,
    val_fraction: float = 0.2,
    seed: int = 0,
    *,
    resample: str = "bilinear",
) -> Path:
    """Writes sklearn's digits as ``train/`` and ``val/`` class folders of PNG files, ``upscale``
    pixels a side (8: as shipped), in the parameters' own folder under ``root``
    (:func:`digits_dir`), and returns that folder.

    ``resample`` is the upscaling filter: "nearest", "bilinear" or "bicubic". Does nothing when
    the folder already holds the complete export, and never rewrites it then (``ConfigError`` when
    its files are missing); replaces an incomplete one; refuses (``FileExistsError``) to write
    into ``train/`` or ``val/`` folders that it did not make.
    """
    from sklearn.datasets import load_digits  # only here: the rest of the package needs no sklearn

    params = digits_params(upscale, val_fraction, seed, resample=resample)
    folder = Path(root) / params.key()
    digits = load_digits()
    split_of = _split(digits.target, params.val_fraction, params.seed)
    paths = [
        _image_path(folder, split_of[index], int(label), index)
        for index, label in enumerate(digits.target)
    ]
    target = GeneratedSet(folder, MANIFEST_NAME, SPLITS, asdict(params))
    with target.locked():
        if target.reusable(paths):
            return folder
        target.begin()
        # 0..16 -> 0..255, rounded: the 17 grey levels stay distinct.
        pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
        for image, path in zip(pixels, paths, strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            picture = Image.fromarray(image)  # 2-D uint8: grayscale ("L")
            if params.upscale != image.shape[0]:
                size = (params.upscale, params.upscale)
                picture = picture.resize(size, _RESAMPLING[params.resample])
            picture.save(path)
        target.finish(counts=_counts(split_of), num_classes=len(digits.target_names))
    return folder


def digits_counts(val_fraction: float = 0.2, seed: int = 0) -> dict[str, int]:
    """Images per split of :func:`export_digits` with these parameters, without writing them."""
    from sklearn.datasets import load_digits

    return _counts(_split(load_digits().target, val_fraction, seed))


def read_manifest(root: str | Path) -> dict | None:
    """The parameters and counts of the export in the folder ``root``, or None if there is
    none."""
    return _read_manifest(root, MANIFEST_NAME)


def _check_params(params: DigitsParams) -> None:
    if params.upscale < 8:
        raise ConfigError(f"upscale must be at least 8 (the images are 8x8), got {params.upscale}")
    if not 0.0 < params.val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1, got {params.val_fraction}")
    if params.resample not in _RESAMPLING:
        raise ConfigError(f"resample must be one of {sorted(_RESAMPLING)}, got {params.resample!r}")


def _split(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """The split ("train" or "val") of each image: ``val_fraction`` of each class, at random."""
    rng = np.random.default_rng(seed)
    split_of = np.full(len(labels), "train", dtype=object)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        num_val = max(1, round(len(members) * val_fraction))
        split_of[rng.permutation(members)[:num_val]] = "val"
    return split_of


def _image_path(root: Path, split: str, label: int, index: int) -> Path:
    return root / split / str(label) / f"{index:04d}.png"


def _counts(split_of: np.ndarray) -> dict[str, int]:
    return {split: int(np.sum(split_of == split)) for split in SPLITS}

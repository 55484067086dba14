"""scikit-learn's digits, written once as an ImageNet-style folder: the embedded classification set.

``sklearn.datasets.load_digits`` ships with scikit-learn (no download): 1797 grayscale 8x8 images
of handwritten digits, 10 classes, about 180 per class. :func:`export_digits` writes them in the
layout ImageNet is distributed in once unpacked, so the folder loader reads both the same way::

    root/train/<class>/<index>.png     class directories "0" .. "9"; index: sklearn's, 4 digits
    root/val/<class>/<index>.png
    root/digits.json                   the parameters, counts and whether the export is complete

Pixels go from sklearn's 0..16 to 0..255 and are upscaled (bilinear by default) to ``upscale``
pixels a side; PNG keeps them exactly. The validation split takes ``val_fraction`` of each class
(stratified), chosen by a random stream seeded with ``seed``: the same parameters give the same
files, byte for byte (with the same Pillow). A complete set with the same parameters is reused.

Only one process per machine should call it (:func:`det_scaling.data.generated.generate_once`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from det_scaling.data.generated import GeneratedSet
from det_scaling.data.generated import read_manifest as _read_manifest
from det_scaling.errors import ConfigError

__all__ = ["MANIFEST_NAME", "DigitsParams", "digits_counts", "export_digits", "read_manifest"]

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


def export_digits(
    root: str | Path,
    upscale: int = 32,
    val_fraction: float = 0.2,
    seed: int = 0,
    *,
    resample: str = "bilinear",
) -> Path:
    """Writes sklearn's digits under ``root`` as ``train/`` and ``val/`` class folders of PNG
    files, ``upscale`` pixels a side (8: as shipped), and returns ``root`` as a Path.

    ``resample`` is the upscaling filter: "nearest", "bilinear" or "bicubic". Does nothing when
    ``root`` already holds a complete export with the same parameters; replaces an export made
    with other parameters; refuses (``FileExistsError``) to write into ``train/`` or ``val/``
    folders that it did not make.
    """
    from sklearn.datasets import load_digits  # only here: the rest of the package needs no sklearn

    params = DigitsParams(int(upscale), float(val_fraction), int(seed), str(resample))
    _check_params(params)
    root = Path(root)
    digits = load_digits()
    split_of = _split(digits.target, params.val_fraction, params.seed)
    paths = [
        _image_path(root, split_of[index], int(label), index)
        for index, label in enumerate(digits.target)
    ]
    target = GeneratedSet(root, MANIFEST_NAME, SPLITS, asdict(params))
    with target.locked():
        if target.is_complete(paths):
            return root
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
    return root


def digits_counts(val_fraction: float = 0.2, seed: int = 0) -> dict[str, int]:
    """Images per split of :func:`export_digits` with these parameters, without writing them."""
    from sklearn.datasets import load_digits

    return _counts(_split(load_digits().target, val_fraction, seed))


def read_manifest(root: str | Path) -> dict | None:
    """The parameters and counts of the export under ``root``, or None if there is none."""
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


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m det_scaling.classification.digits ROOT``: export (or reuse) and print ROOT."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("root", type=Path)
    parser.add_argument("--upscale", type=int, default=32)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resample", default="bilinear", choices=sorted(_RESAMPLING))
    args = parser.parse_args(argv)
    print(
        export_digits(args.root, args.upscale, args.val_fraction, args.seed, resample=args.resample)
    )


if __name__ == "__main__":
    main()

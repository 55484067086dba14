"""A deterministic synthetic detection data set in the PASCAL VOC on-disk layout.

Nothing can be downloaded where this project is developed and tested, so the demo and the tests
train and evaluate on images made here: coloured shapes (:data:`CLASS_NAMES`) of varied size,
aspect, rotation and colour, several to an image and partly overlapping, on a smooth, noisy,
striped background. The files are those of VOC2007, so detectron2's own loader
(``load_voc_instances``) and evaluator (``PascalVOCDetectionEvaluator``) read them exactly as they
read the real data set. Each parameter set has a folder of its own under ``root`` (in a run,
``$DETECTRON2_DATASETS/synthetic_voc``), named by :func:`synthetic_voc_dir`::

    root/<key>/Annotations/000001.xml       VOC XML: size, objects with 1-based inclusive bndbox
    root/<key>/JPEGImages/000001.jpg
    root/<key>/ImageSets/Main/trainval.txt  image ids, one a line (trainval first, then test)
    root/<key>/ImageSets/Main/test.txt
    root/<key>/synthetic.json               the parameters and whether the set is complete
                                            (:mod:`det_scaling.data.generated`)

``<key>`` is ``tv<num_trainval>-test<num_test>-<height>x<width>-seed<seed>-<hash>``, the hash
that of all the parameters (:class:`SyntheticVOCParams`): runs with other parameters write other
folders, and a complete folder is never rewritten while a run may read it.

Each image is drawn from its own random stream, seeded by ``(seed, image index)``, so a set is the
same, byte for byte, on every run with the same parameters and the same Pillow version (the JPEG
encoder is Pillow's). :func:`generate_synthetic_voc` does nothing when the parameters' folder
already holds a complete set.

Only one process per machine should call it (:func:`det_scaling.data.generated.generate_once`).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from det_scaling.data.generated import GeneratedSet, parameter_key
from det_scaling.data.generated import read_manifest as _read_manifest
from det_scaling.errors import ConfigError

__all__ = [
    "CLASS_NAMES",
    "MANIFEST_NAME",
    "SyntheticVOCParams",
    "generate_synthetic_voc",
    "read_manifest",
    "synthetic_voc_dir",
    "synthetic_voc_params",
]

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star")
MANIFEST_NAME = "synthetic.json"
_OWNED = ("Annotations", "JPEGImages", "ImageSets")
_FILES = (("Annotations", "xml"), ("JPEGImages", "jpg"))
# Bumped whenever a change to the drawing code changes the images a given set of parameters makes,
# so that sets made by an older version are regenerated rather than reused.
GENERATOR_VERSION = 1

_SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down: anti-aliased edges
_JPEG_QUALITY = 92
# A new object may cover at most this fraction of an earlier object's box, so that every object
# stays recognisable (and its full-shape box stays a fair target).
_MAX_COVERED_FRACTION = 0.35
_PLACEMENT_ATTEMPTS = 30
# Minimum Euclidean distance (0-255 RGB) between an object's colour and the background under it.
_MIN_COLOUR_CONTRAST = 90.0


@dataclass(frozen=True)
class SyntheticVOCParams:
    """Everything that determines the generated set; stored in the manifest to detect changes."""

    num_trainval: int
    num_test: int
    image_size: tuple[int, int]  # (height, width)
    seed: int
    objects_per_image: tuple[int, int]  # inclusive range
    object_size: tuple[float, float]  # object side as a fraction of the shorter image side
    noise_std: float  # per-pixel Gaussian noise, 0-255 scale
    texture: float  # 0: flat grey background; 1: strong colour blotches and stripes
    class_names: tuple[str, ...] = CLASS_NAMES
    version: int = GENERATOR_VERSION

    def to_json(self) -> dict:
        return {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(self).items()}

    def key(self) -> str:
        """The name of this parameter set's folder (:func:`synthetic_voc_dir`)."""
        height, width = self.image_size
        label = f"tv{self.num_trainval}-test{self.num_test}-{height}x{width}-seed{self.seed}"
        return parameter_key(label, self.to_json())


def synthetic_voc_params(
    num_trainval: int,
    num_test: int,
    image_size: int | tuple[int, int] = 128,
    seed: int = 0,
    *,
    objects_per_image: tuple[int, int] = (3, 6),
    object_size: tuple[float, float] = (0.15, 0.4),
    noise_std: float = 8.0,
    texture: float = 1.0,
) -> SyntheticVOCParams:
    """The parameters of :func:`generate_synthetic_voc`, checked (``ConfigError``) and in one
    form (``image_size`` as ``(height, width)``, numbers as ints and floats)."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    params = SyntheticVOCParams(
        num_trainval=int(num_trainval),
        num_test=int(num_test),
        image_size=(int(height), int(width)),
        seed=int(seed),
        objects_per_image=(int(objects_per_image[0]), int(objects_per_image[1])),
        object_size=(float(object_size[0]), float(object_size[1])),
        noise_std=float(noise_std),
        texture=float(texture),
    )
    _check_params(params)
    return params


def synthetic_voc_dir(root: str | Path, *args: Any, **kwargs: Any) -> Path:
    """The folder under ``root`` of the set :func:`generate_synthetic_voc` makes with the same
    arguments (``root/<key>``; the arguments after ``root`` as :func:`synthetic_voc_params`
    takes them), whether or not it is made yet."""
    return Path(root) / synthetic_voc_params(*args, **kwargs).key()


def generate_synthetic_voc(
    root: str | Path,
    num_trainval: int,
    num_test: int,
    image_size: int | tuple[int, int] = 128,
    seed: int = 0,
    *,
    objects_per_image: tuple[int, int] = (3, 6),
    object_size: tuple[float, float] = (0.15, 0.4),
    noise_std: float = 8.0,
    texture: float = 1.0,
) -> Path:
    """Writes a synthetic VOC-layout data set in its parameters' own folder under ``root``
    (:func:`synthetic_voc_dir`) and returns that folder.

    ``image_size`` is one side (square images) or ``(height, width)``. Each image holds between
    ``objects_per_image[0]`` and ``objects_per_image[1]`` shapes whose side is a random fraction
    (in ``object_size``) of the shorter image side. Does nothing when the folder already holds the
    complete set, and never rewrites it then (``ConfigError`` when its files are missing);
    replaces an incomplete one; refuses (``FileExistsError``) to write into a VOC-layout folder
    that it did not make.
    """
    params = synthetic_voc_params(
        num_trainval,
        num_test,
        image_size,
        seed,
        objects_per_image=objects_per_image,
        object_size=object_size,
        noise_std=noise_std,
        texture=texture,
    )
    folder = Path(root) / params.key()
    ids = [f"{index + 1:06d}" for index in range(params.num_trainval + params.num_test)]
    target = GeneratedSet(folder, MANIFEST_NAME, _OWNED, params.to_json())
    files = [folder / sub / f"{i}.{ext}" for i in ids for sub, ext in _FILES]
    with target.locked():
        if target.reusable(files):
            return folder
        target.begin()
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        for index, image_id in enumerate(ids):
            image, objects = _draw_image(params, np.random.default_rng([params.seed, index]))
            image.save(folder / "JPEGImages" / f"{image_id}.jpg", quality=_JPEG_QUALITY)
            _write_annotation(folder / "Annotations" / f"{image_id}.xml", image_id, params, objects)
        splits = {"trainval": ids[: params.num_trainval], "test": ids[params.num_trainval :]}
        for split, split_ids in splits.items():
            (folder / "ImageSets" / "Main" / f"{split}.txt").write_text(
                "".join(f"{i}\n" for i in split_ids)
            )
        target.finish()
    return folder


def read_manifest(root: str | Path) -> dict | None:
    """The manifest of the synthetic set in the folder ``root`` (its parameters, and
    ``complete``), or None if there is none."""
    return _read_manifest(root, MANIFEST_NAME)


def _check_params(params: SyntheticVOCParams) -> None:
    if params.num_trainval < 2 or params.num_test < 2:
        # detectron2's load_voc_instances reads the split with np.loadtxt, which returns a 0-d
        # array (that cannot be iterated) for a one-line file.
        raise ConfigError(
            f"num_trainval and num_test must be >= 2 (detectron2's VOC loader cannot read a "
            f"one-image split), got {params.num_trainval} and {params.num_test}"
        )
    if min(params.image_size) < 32:
        raise ConfigError(f"image_size must be at least 32 pixels a side, got {params.image_size}")
    low, high = params.objects_per_image
    if not 1 <= low <= high:
        raise ConfigError(
            f"objects_per_image must be (low, high) with 1 <= low <= high, got {low, high}"
        )
    low, high = params.object_size
    if not 0.05 <= low <= high <= 0.9:
        raise ConfigError(
            f"object_size must be (low, high) fractions with 0.05 <= low <= high <= 0.9, "
            f"got {low, high}"
        )
    if params.noise_std < 0:
        raise ConfigError(f"noise_std must be >= 0, got {params.noise_std}")
    if not 0 <= params.texture <= 1:
        raise ConfigError(f"texture must be between 0 and 1, got {params.texture}")


# ---- drawing ----


@dataclass(frozen=True)
class _Object:
    name: str
    box: tuple[int, int, int, int]  # 0-based inclusive pixel bounds: x0, y0, x1, y1


def _draw_image(
    params: SyntheticVOCParams, rng: np.random.Generator
) -> tuple[Image.Image, list[_Object]]:
    height, width = params.image_size
    canvas = _background(height, width, params.texture, rng)
    objects: list[_Object] = []
    boxes: list[tuple[int, int, int, int]] = []
    low, high = params.objects_per_image
    for _ in range(int(rng.integers(low, high + 1))):
        for _attempt in range(_PLACEMENT_ATTEMPTS):
            name = params.class_names[int(rng.integers(len(params.class_names)))]
            alpha = _shape_mask(name, height, width, params.object_size, rng)
            box = _mask_box(alpha)
            if box is not None and _fits(box, boxes):
                break
        else:
            continue  # the image is too crowded for another object; keep what it has
        colour = _contrasting_colour(canvas, box, rng)
        # Shading across the object: objects of a class are not flat copies of one another.
        shade = 1.0 + rng.uniform(-0.25, 0.25) * np.linspace(-1, 1, width)[None, :]
        fill = np.clip(colour[None, None, :] * shade[..., None], 0, 255)
        canvas = canvas * (1 - alpha[..., None]) + fill * alpha[..., None]
        objects.append(_Object(name, box))
        boxes.append(box)
    canvas += rng.normal(0.0, params.noise_std, canvas.shape)
    image = Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8), "RGB")
    return image, objects


def _background(height: int, width: int, texture: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth colour blotches plus stripes, scaled by ``texture`` around mid-grey: clutter the
    detector must learn to ignore."""
    coarse = rng.uniform(30, 225, size=(4, 4, 3)).astype(np.uint8)
    smooth = np.asarray(
        Image.fromarray(coarse, "RGB").resize((width, height), Image.BICUBIC), dtype=np.float64
    )
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(6, 20)
    ys, xs = np.mgrid[0:height, 0:width]
    stripes = np.sin((xs * math.cos(angle) + ys * math.sin(angle)) * 2 * math.pi / period)
    clutter = smooth - 128.0 + rng.uniform(5, 20) * stripes[..., None]
    return 128.0 + texture * clutter


def _shape_mask(
    name: str,
    height: int,
    width: int,
    object_size: tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """An anti-aliased coverage mask (values in [0, 1], shape HxW) of one randomly placed shape."""
    size = rng.uniform(*object_size) * min(height, width)
    half = size / 2
    cx = rng.uniform(half, width - half)
    cy = rng.uniform(half, height - half)
    aspect = rng.uniform(0.75, 1.33)
    s = _SUPERSAMPLE
    mask = Image.new("L", (width * s, height * s), 0)
    draw = ImageDraw.Draw(mask)
    _SHAPES[name](draw, (cx * s, cy * s), half * s, aspect, rng)
    small = mask.resize((width, height), Image.BOX)
    return np.asarray(small, dtype=np.float64) / 255.0


def _polygon(
    points: Sequence[tuple[float, float]], center: tuple[float, float], angle: float
) -> list[tuple[float, float]]:
    """``points`` (relative to the shape's centre) rotated by ``angle`` and moved to ``center``."""
    cos, sin = math.cos(angle), math.sin(angle)
    cx, cy = center
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]


def _circle(draw: ImageDraw.ImageDraw, center, half: float, aspect: float, rng) -> None:
    cx, cy = center
    rx, ry = half * min(1.0, aspect), half * min(1.0, 1 / aspect)
    draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)


def _square(draw: ImageDraw.ImageDraw, center, half: float, aspect: float, rng) -> None:
    # Rotated by at most 15 degrees: a square turned by 45 degrees would look like a diamond.
    hx, hy = 0.8 * half * min(1.0, aspect), 0.8 * half * min(1.0, 1 / aspect)
    corners = [(-hx, -hy), (hx, -hy), (hx, hy), (-hx, hy)]
    draw.polygon(_polygon(corners, center, rng.uniform(-0.26, 0.26)), fill=255)


def _triangle(draw: ImageDraw.ImageDraw, center, half: float, aspect: float, rng) -> None:
    corners = [
        (half * math.cos(a), half * math.sin(a))
        for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
    ]
    corners = [(x * aspect, y) for x, y in corners]
    draw.polygon(_polygon(corners, center, rng.uniform(0, 2 * math.pi)), fill=255)


def _cross(draw: ImageDraw.ImageDraw, center, half: float, aspect: float, rng) -> None:
    arm = half * rng.uniform(0.28, 0.38)
    angle = rng.uniform(0, math.pi / 2)
    draw.polygon(
        _polygon([(-half, -arm), (half, -arm), (half, arm), (-half, arm)], center, angle), fill=255
    )
    draw.polygon(
        _polygon([(-arm, -half), (arm, -half), (arm, half), (-arm, half)], center, angle), fill=255
    )


def _star(draw: ImageDraw.ImageDraw, center, half: float, aspect: float, rng) -> None:
    inner = half * rng.uniform(0.38, 0.5)
    points = [
        (
            (half if i % 2 == 0 else inner) * math.cos(i * math.pi / 5 - math.pi / 2),
            (half if i % 2 == 0 else inner) * math.sin(i * math.pi / 5 - math.pi / 2),
        )
        for i in range(10)
    ]
    draw.polygon(_polygon(points, center, rng.uniform(0, 2 * math.pi)), fill=255)


_SHAPES: dict[str, Callable[..., None]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "star": _star,
}


def _mask_box(alpha: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box around the pixels the shape covers at least half of (what a person would draw)."""
    ys, xs = np.nonzero(alpha >= 0.5)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _fits(box: tuple[int, int, int, int], earlier: list[tuple[int, int, int, int]]) -> bool:
    """Whether ``box`` leaves every earlier box mostly visible."""
    for other in earlier:
        ix = min(box[2], other[2]) - max(box[0], other[0]) + 1
        iy = min(box[3], other[3]) - max(box[1], other[1]) + 1
        if ix > 0 and iy > 0:
            other_area = (other[2] - other[0] + 1) * (other[3] - other[1] + 1)
            if ix * iy > _MAX_COVERED_FRACTION * other_area:
                return False
    return True


def _contrasting_colour(
    canvas: np.ndarray, box: tuple[int, int, int, int], rng: np.random.Generator
) -> np.ndarray:
    """A random saturated colour that stands out from the background under ``box``."""
    x0, y0, x1, y1 = box
    under = canvas[y0 : y1 + 1, x0 : x1 + 1].reshape(-1, 3).mean(axis=0)
    best, best_distance = None, -1.0
    for _ in range(20):
        colour = rng.uniform(0, 255, size=3)
        colour[rng.integers(3)] = rng.choice([rng.uniform(0, 40), rng.uniform(215, 255)])
        distance = float(np.linalg.norm(colour - under))
        if distance >= _MIN_COLOUR_CONTRAST:
            return colour
        if distance > best_distance:
            best, best_distance = colour, distance
    return best


# ---- annotations ----


def _write_annotation(
    path: Path, image_id: str, params: SyntheticVOCParams, objects: list[_Object]
) -> None:
    """Writes a VOC XML annotation with the fields detectron2's loader and evaluator read."""
    height, width = params.image_size
    annotation = ET.Element("annotation")
    _text(annotation, "folder", "VOC2007")
    _text(annotation, "filename", f"{image_id}.jpg")
    source = ET.SubElement(annotation, "source")
    _text(source, "database", "det_scaling synthetic shapes")
    size = ET.SubElement(annotation, "size")
    _text(size, "width", width)
    _text(size, "height", height)
    _text(size, "depth", 3)
    _text(annotation, "segmented", 0)
    for obj in objects:
        node = ET.SubElement(annotation, "object")
        _text(node, "name", obj.name)
        _text(node, "pose", "Unspecified")
        _text(node, "truncated", 0)
        _text(node, "difficult", 0)
        bndbox = ET.SubElement(node, "bndbox")
        # VOC boxes are 1-based, inclusive pixel indices.
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.box, strict=True):
            _text(bndbox, key, value + 1)
    ET.indent(annotation)
    ET.ElementTree(annotation).write(path, encoding="utf-8", xml_declaration=False)


def _text(parent: ET.Element, tag: str, value: object) -> None:
    ET.SubElement(parent, tag).text = str(value)

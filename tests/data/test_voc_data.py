"""Registering VOC-layout data sets, and detectron2's VOC evaluator on real files."""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import det_scaling  # first: installs the detectron2 compatibility layer
from det_scaling.config import config_format
from det_scaling.data import (
    SYNTHETIC_CLASS_NAMES,
    VOC_CLASS_NAMES,
    count_images,
    datasets_root,
    generate_synthetic_voc,
    register_synthetic_voc,
    register_voc2007,
)
from det_scaling.data.synthetic_voc import read_manifest
from det_scaling.tasks import SYNTHETIC_VOC_SPLITS, register_datasets, synthetic_voc_dir_for

# isort: split
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.structures import Boxes, Instances

_prefixes = (f"test_voc_data_{i}" for i in itertools.count())
REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny.yaml"
# What a run's workers do with their data sets, in a process of its own.
_REGISTER_IN_A_RUN = """
import sys
import det_scaling
from det_scaling.config import config_format
from det_scaling.tasks import register_datasets
register_datasets(config_format(det_scaling.load_cfg(sys.argv[1], sys.argv[2:])))
"""


@pytest.fixture
def prefix():
    """A data set name prefix of this test's own, removed from the catalogs afterwards."""
    name_prefix = next(_prefixes)
    yield name_prefix
    for name in (f"{name_prefix}_trainval", f"{name_prefix}_test"):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


@pytest.fixture
def voc2007_restored():
    """Puts detectron2's voc_2007_* registrations back as they were after the test."""
    before = {
        name: MetadataCatalog.get(name).dirname for name in ("voc_2007_trainval", "voc_2007_test")
    }
    yield
    roots = {str(datasets_root(dirname).parent) for dirname in before.values()}
    assert len(roots) == 1
    register_voc2007(roots.pop())


def _write_voc_annotation(path, image_id, objects):
    boxes = "".join(
        f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>"
        f"<difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
        f"<ymax>{y1}</ymax></bndbox></object>"
        for name, (x0, y0, x1, y1) in objects
    )
    path.write_text(
        f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"
        f"<size><width>500</width><height>375</height><depth>3</depth></size>{boxes}</annotation>"
    )


def test_synthetic_splits_load_through_the_catalog(tmp_path, prefix):
    root = generate_synthetic_voc(tmp_path, num_trainval=5, num_test=3, image_size=64)
    train, test = register_synthetic_voc(root, name_prefix=prefix)
    assert (train, test) == (f"{prefix}_trainval", f"{prefix}_test")
    records = DatasetCatalog.get(train)
    assert [r["image_id"] for r in records] == ["000001", "000002", "000003", "000004", "000005"]
    assert records[0]["file_name"] == str(root / "JPEGImages" / "000001.jpg")
    assert MetadataCatalog.get(train).dirname == str(root)
    assert count_images(test) == 3
    assert count_images([train, test]) == 8
    meta = MetadataCatalog.get(test)
    assert meta.thing_classes == list(SYNTHETIC_CLASS_NAMES)
    assert (meta.year, meta.split, meta.evaluator_type) == (2007, "test", "pascal_voc")


def test_registering_again_follows_the_new_root(tmp_path, prefix):
    first = generate_synthetic_voc(tmp_path / "a", num_trainval=2, num_test=2, image_size=64)
    second = generate_synthetic_voc(tmp_path / "b", num_trainval=4, num_test=2, image_size=64)
    train, _ = register_synthetic_voc(first, name_prefix=prefix)
    register_synthetic_voc(first, name_prefix=prefix)  # same root: kept as it is
    assert count_images(train) == 2
    register_synthetic_voc(second, name_prefix=prefix)
    assert count_images(train) == 4
    assert MetadataCatalog.get(train).dirname == str(second)


def test_register_synthetic_voc_without_a_generated_set_says_how_to_make_one(tmp_path, prefix):
    with pytest.raises(FileNotFoundError, match="generate_synthetic_voc"):
        register_synthetic_voc(tmp_path, name_prefix=prefix)
    folder = generate_synthetic_voc(tmp_path, num_trainval=2, num_test=2, image_size=32)
    with pytest.raises(FileNotFoundError, match=f"parameter sets \\({folder.name}\\): pass one"):
        register_synthetic_voc(tmp_path, name_prefix=prefix)


@pytest.fixture
def synthetic_voc_unregistered():
    """Removes the registrations of the config's synthetic_voc_* names after the test."""
    yield
    for name in SYNTHETIC_VOC_SPLITS:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def _digests(folder: Path) -> dict[str, tuple[str, int]]:
    """Each file under ``folder``: the SHA-256 of its bytes and its modification time."""
    return {
        str(p.relative_to(folder)): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_second_run_with_other_parameters_leaves_the_first_runs_data_as_it_is(
    tmp_path, monkeypatch, voc2007_restored, synthetic_voc_unregistered
):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    size = ["DATASETS.SYNTHETIC_VOC.IMAGE_SIZE", "48", "DATASETS.SYNTHETIC_VOC.NUM_TEST", "2"]
    first = config_format(
        det_scaling.load_cfg(str(TINY), [*size, "DATASETS.SYNTHETIC_VOC.NUM_TRAINVAL", "4"])
    )
    register_datasets(first)  # the first run: its set generated and registered
    folder = synthetic_voc_dir_for(first)
    assert folder.parent == tmp_path / "synthetic_voc"
    assert {MetadataCatalog.get(name).dirname for name in SYNTHETIC_VOC_SPLITS} == {str(folder)}
    before = _digests(folder)

    # A second run under the same data sets root, in a process of its own, with more images.
    other = [*size, "DATASETS.SYNTHETIC_VOC.NUM_TRAINVAL", "6"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", _REGISTER_IN_A_RUN, str(TINY), *other]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]

    assert _digests(folder) == before  # the first set's files and manifest, not rewritten
    assert {MetadataCatalog.get(name).dirname for name in SYNTHETIC_VOC_SPLITS} == {str(folder)}
    records = DatasetCatalog.get("synthetic_voc_trainval")
    assert [Path(r["file_name"]).parent for r in records] == [folder / "JPEGImages"] * 4
    second = synthetic_voc_dir_for(config_format(det_scaling.load_cfg(str(TINY), other)))
    assert second.parent == folder.parent and second != folder
    assert read_manifest(second)["num_trainval"] == 6 and read_manifest(second)["complete"]


def test_voc2007_names_point_at_the_datasets_root(tmp_path, monkeypatch, voc2007_restored):
    voc = tmp_path / "VOC2007"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("000005\n000007\n")
    (voc / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n")
    _write_voc_annotation(
        voc / "Annotations" / "000005.xml", "000005", [("chair", (263, 211, 324, 339))]
    )
    _write_voc_annotation(
        voc / "Annotations" / "000007.xml", "000007", [("car", (141, 50, 500, 330))]
    )
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))

    assert register_voc2007() == ("voc_2007_trainval", "voc_2007_test")
    meta = MetadataCatalog.get("voc_2007_trainval")
    assert meta.dirname == str(voc)
    assert meta.thing_classes == list(VOC_CLASS_NAMES)
    assert meta.evaluator_type == "pascal_voc"
    records = DatasetCatalog.get("voc_2007_trainval")
    assert [r["image_id"] for r in records] == ["000005", "000007"]
    chair = records[0]["annotations"][0]
    assert chair["category_id"] == VOC_CLASS_NAMES.index("chair")
    assert chair["bbox"] == [262.0, 210.0, 324.0, 339.0]  # VOC's 1-based corner, made 0-based


def _evaluate(test_name, transform):
    """Runs PascalVOCDetectionEvaluator with the ground truth, changed by ``transform``, as the
    predictions; returns its bbox results."""
    evaluator = PascalVOCDetectionEvaluator(test_name)
    evaluator.reset()
    for record in DatasetCatalog.get(test_name):
        boxes = np.array([a["bbox"] for a in record["annotations"]], dtype=np.float32)
        classes = np.array([a["category_id"] for a in record["annotations"]])
        boxes, classes = transform(boxes, classes)
        instances = Instances((record["height"], record["width"]))
        instances.pred_boxes = Boxes(torch.as_tensor(boxes))
        instances.scores = torch.full((len(boxes),), 0.9)
        instances.pred_classes = torch.as_tensor(classes)
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    return evaluator.evaluate()["bbox"]


@pytest.fixture
def evaluation_split(tmp_path, prefix):
    root = generate_synthetic_voc(
        tmp_path, num_trainval=2, num_test=8, image_size=64, objects_per_image=(3, 4)
    )
    _, test = register_synthetic_voc(root, name_prefix=prefix)
    classes = {a["category_id"] for r in DatasetCatalog.get(test) for a in r["annotations"]}
    assert classes == set(range(len(SYNTHETIC_CLASS_NAMES)))  # every class has ground truth
    return test


def test_ground_truth_as_predictions_scores_100(evaluation_split):
    result = _evaluate(evaluation_split, lambda boxes, classes: (boxes, classes))
    assert result["AP50"] == pytest.approx(100.0)
    assert result["AP75"] == pytest.approx(100.0)
    assert result["AP"] == pytest.approx(100.0)


def _shift_right(fraction):
    def shift(boxes, classes):
        widths = boxes[:, 2] - boxes[:, 0]
        zeros = np.zeros_like(widths)
        return boxes + fraction * np.stack([widths, zeros, widths, zeros], axis=1), classes

    return shift


def test_boxes_shifted_by_a_fifth_pass_only_the_loose_thresholds(evaluation_split):
    # IoU about 0.67: a match at IoU 0.5 to 0.65, a miss at 0.75.
    result = _evaluate(evaluation_split, _shift_right(0.2))
    assert result["AP50"] == pytest.approx(100.0)
    assert result["AP75"] == pytest.approx(0.0)
    assert 0 < result["AP"] < 100


def test_boxes_shifted_by_half_miss(evaluation_split):
    result = _evaluate(evaluation_split, _shift_right(0.5))  # IoU about 1/3
    assert result["AP50"] == pytest.approx(0.0)


def test_wrong_classes_score_lower(evaluation_split):
    num_classes = len(SYNTHETIC_CLASS_NAMES)
    result = _evaluate(
        evaluation_split, lambda boxes, classes: (boxes, (classes + 1) % num_classes)
    )
    assert result["AP50"] == pytest.approx(0.0)

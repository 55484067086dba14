"""The synthetic VOC-layout data set: deterministic, in VOC's layout, readable by detectron2."""

from __future__ import annotations

import json
import multiprocessing
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

import det_scaling  # noqa: F401  (first: applies the detectron2 compatibility layer)
from det_scaling.data.synthetic_voc import (
    CLASS_NAMES,
    MANIFEST_NAME,
    generate_synthetic_voc,
    read_manifest,
)

# isort: split
from detectron2.data.datasets.pascal_voc import load_voc_instances

SMALL = {"num_trainval": 6, "num_test": 3, "image_size": 64}


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_writes_the_same_bytes(tmp_path):
    first = _files(generate_synthetic_voc(tmp_path / "a", **SMALL, seed=3))
    second = _files(generate_synthetic_voc(tmp_path / "b", **SMALL, seed=3))
    assert first == second
    # jpg + xml per image, two split files, the manifest and its lock
    assert len(first) == 2 * 9 + 2 + 1 + 1


def test_another_seed_draws_other_images(tmp_path):
    first = _files(generate_synthetic_voc(tmp_path / "a", **SMALL, seed=0))
    second = _files(generate_synthetic_voc(tmp_path / "b", **SMALL, seed=1))
    assert first["JPEGImages/000001.jpg"] != second["JPEGImages/000001.jpg"]


def test_writes_the_voc_layout(tmp_path):
    root = generate_synthetic_voc(tmp_path, num_trainval=4, num_test=2, image_size=(48, 80))
    trainval = (root / "ImageSets/Main/trainval.txt").read_text().split()
    test = (root / "ImageSets/Main/test.txt").read_text().split()
    assert trainval == ["000001", "000002", "000003", "000004"]
    assert test == ["000005", "000006"]
    for image_id in trainval + test:
        with Image.open(root / "JPEGImages" / f"{image_id}.jpg") as image:
            assert image.format == "JPEG"
            assert image.mode == "RGB"
            assert image.size == (80, 48)
        tree = ET.parse(root / "Annotations" / f"{image_id}.xml")
        assert tree.findtext("filename") == f"{image_id}.jpg"
        assert (tree.findtext("size/width"), tree.findtext("size/height")) == ("80", "48")
        for obj in tree.iter("object"):
            # The fields detectron2's evaluator (parse_rec) reads, besides name and bndbox.
            assert obj.findtext("difficult") == "0"
            assert obj.findtext("truncated") == "0"
            assert obj.findtext("pose") == "Unspecified"
    assert read_manifest(root)["class_names"] == list(CLASS_NAMES)


def test_detectron2_loader_reads_boxes_inside_the_images(tmp_path):
    root = generate_synthetic_voc(tmp_path, **SMALL, objects_per_image=(2, 4))
    dicts = load_voc_instances(str(root), "trainval", CLASS_NAMES)
    assert [d["image_id"] for d in dicts] == [f"{i:06d}" for i in range(1, 7)]
    for record in dicts:
        assert (record["height"], record["width"]) == (64, 64)
        assert 1 <= len(record["annotations"]) <= 4  # as many as fit, up to 4
        for annotation in record["annotations"]:
            x0, y0, x1, y1 = annotation["bbox"]
            assert 0 <= x0 < x1 <= record["width"]
            assert 0 <= y0 < y1 <= record["height"]
            assert 0 <= annotation["category_id"] < len(CLASS_NAMES)


def test_every_class_is_drawn(tmp_path):
    root = generate_synthetic_voc(tmp_path, num_trainval=20, num_test=2, image_size=64)
    names = {
        obj.findtext("name")
        for xml in root.glob("Annotations/*.xml")
        for obj in ET.parse(xml).iter("object")
    }
    assert names == set(CLASS_NAMES)


def test_rerun_with_the_same_parameters_writes_nothing(tmp_path):
    root = generate_synthetic_voc(tmp_path, **SMALL)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    generate_synthetic_voc(tmp_path, **SMALL)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamps


def test_rerun_with_other_parameters_replaces_the_set(tmp_path):
    generate_synthetic_voc(tmp_path, **SMALL)
    generate_synthetic_voc(tmp_path, num_trainval=3, num_test=2, image_size=64)
    assert len(list(tmp_path.glob("JPEGImages/*.jpg"))) == 5  # no stale images left behind
    assert len(list(tmp_path.glob("Annotations/*.xml"))) == 5
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["num_trainval"] == 3


def test_incomplete_set_is_made_again(tmp_path):
    generate_synthetic_voc(tmp_path, **SMALL)
    expected = _files(tmp_path)
    (tmp_path / "JPEGImages/000004.jpg").unlink()
    generate_synthetic_voc(tmp_path, **SMALL)
    assert _files(tmp_path) == expected


def test_interrupted_set_is_made_again(tmp_path):
    generate_synthetic_voc(tmp_path, **SMALL)
    expected = _files(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({**manifest, "complete": False}))
    (tmp_path / "ImageSets/Main/test.txt").unlink()
    generate_synthetic_voc(tmp_path, **SMALL)
    assert _files(tmp_path) == expected


def _generate_and_read(root: Path, params: dict) -> None:
    generate_synthetic_voc(root, **params)
    # What this process returned with must be whole, whatever the others are doing.
    for record in load_voc_instances(str(root), "trainval", CLASS_NAMES):
        Image.open(record["file_name"]).load()


@pytest.mark.slow
def test_independent_runs_on_one_machine_write_the_set_once(tmp_path):
    # Separate interpreters, no process group: their starts spread over the time one takes to
    # write the set, so without the lock a later one clears the files an earlier one is writing.
    params, processes = {"num_trainval": 300, "num_test": 4, "image_size": 64, "seed": 5}, 4
    expected = _files(generate_synthetic_voc(tmp_path / "alone", **params))
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_generate_and_read, args=(tmp_path / "shared", params))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
    assert [child.exitcode for child in children] == [0] * processes
    assert _files(tmp_path / "shared") == expected


def test_refuses_to_overwrite_a_data_set_it_did_not_make(tmp_path):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations/000001.xml").write_text("<annotation/>")
    with pytest.raises(FileExistsError, match="real data set"):
        generate_synthetic_voc(tmp_path, **SMALL)
    assert (tmp_path / "Annotations/000001.xml").read_text() == "<annotation/>"


def test_one_image_split_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="num_test"):
        generate_synthetic_voc(tmp_path, num_trainval=4, num_test=1, image_size=64)

"""The synthetic VOC-layout data set: deterministic, in VOC's layout, readable by detectron2, in a
folder of each parameter set's own that is never rewritten once complete."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

import det_scaling  # noqa: F401  (first: installs the detectron2 compatibility layer)
from det_scaling.data.synthetic_voc import (
    CLASS_NAMES,
    MANIFEST_NAME,
    generate_synthetic_voc,
    read_manifest,
    synthetic_voc_dir,
)
from det_scaling.errors import ConfigError

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


def test_the_manifest_records_the_digest_of_every_file(tmp_path):
    folder = generate_synthetic_voc(tmp_path, **SMALL)
    digest = hashlib.sha256()
    for name, data in _files(folder).items():
        if name.split("/")[0] in ("Annotations", "ImageSets", "JPEGImages"):
            digest.update(name.encode() + b"\0" + data)
    assert read_manifest(folder)["files_sha256"] == digest.hexdigest()


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


def _stamps(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "change",
    [
        {"num_trainval": 7},
        {"num_test": 4},
        {"image_size": (64, 72)},
        {"seed": 1},
        {"objects_per_image": (3, 5)},
        {"object_size": (0.15, 0.5)},
        {"noise_std": 4.0},
        {"texture": 0.5},
    ],
)
def test_each_parameter_set_has_a_folder_of_its_own(tmp_path, change):
    folder = synthetic_voc_dir(tmp_path, **SMALL)
    assert folder.parent == tmp_path and folder.name.startswith("tv6-test3-64x64-seed0-")
    assert synthetic_voc_dir(tmp_path, 6, 3, (64, 64), 0) == folder  # the same set, written apart
    assert synthetic_voc_dir(tmp_path, **{**SMALL, **change}) != folder


def test_rerun_with_the_same_parameters_writes_nothing(tmp_path):
    root = generate_synthetic_voc(tmp_path, **SMALL)
    assert root == synthetic_voc_dir(tmp_path, **SMALL)
    stamps = _stamps(tmp_path)
    assert generate_synthetic_voc(tmp_path, **SMALL) == root
    assert _stamps(tmp_path) == stamps


def _remove_an_image(root: Path) -> None:
    (root / "JPEGImages/000004.jpg").unlink()


def _edit_the_seed(root: Path) -> None:
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    (root / MANIFEST_NAME).write_text(json.dumps({**manifest, "seed": 9}))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_remove_an_image, r"1 of its files missing .*000004\.jpg.*delete the folder"),
        (_edit_the_seed, r"made with other seed .* not rewritten"),
    ],
)
def test_a_damaged_complete_set_is_reported_not_rewritten(tmp_path, damage, message):
    root = generate_synthetic_voc(tmp_path, **SMALL)
    damage(root)
    stamps = _stamps(root)
    with pytest.raises(ConfigError, match=message):
        generate_synthetic_voc(tmp_path, **SMALL)
    assert _stamps(root) == stamps


def test_interrupted_set_is_made_again(tmp_path):
    root = generate_synthetic_voc(tmp_path, **SMALL)
    expected = _files(root)
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    (root / MANIFEST_NAME).write_text(json.dumps({**manifest, "complete": False}))
    (root / "ImageSets/Main/test.txt").unlink()
    (root / "JPEGImages/000002.jpg").write_bytes(b"half a JPEG")
    assert generate_synthetic_voc(tmp_path, **SMALL) == root
    assert _files(root) == expected


def _generate_and_read(root: Path, params: dict) -> None:
    folder = generate_synthetic_voc(root, **params)
    # What this process returned with must be whole, whatever the others are doing.
    for record in load_voc_instances(str(folder), "trainval", CLASS_NAMES):
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
    assert _files(synthetic_voc_dir(tmp_path / "shared", **params)) == expected


def test_refuses_to_overwrite_a_data_set_it_did_not_make(tmp_path):
    annotations = synthetic_voc_dir(tmp_path, **SMALL) / "Annotations"
    annotations.mkdir(parents=True)
    (annotations / "000001.xml").write_text("<annotation/>")
    with pytest.raises(FileExistsError, match="real data set"):
        generate_synthetic_voc(tmp_path, **SMALL)
    assert (annotations / "000001.xml").read_text() == "<annotation/>"


def test_one_image_split_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="num_test"):
        generate_synthetic_voc(tmp_path, num_trainval=4, num_test=1, image_size=64)

"""The environment record: what it holds, the data set fingerprints it finds through detectron2's
catalogs, and which of its differences change numbers."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from det_scaling.classification import digits
from det_scaling.classification.data import register_digits
from det_scaling.data import generate_synthetic_voc, register_synthetic_voc, synthetic_voc
from det_scaling.utils.environment import (
    GENERATED_MANIFESTS,
    NUMERICS_VARIABLES,
    collect_environment,
    dataset_fingerprint,
    environment_mismatch,
    numeric_differences,
)

REPO = Path(__file__).resolve().parents[2]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _family_model_from_lscpu() -> str:
    fields = dict(
        line.split(":", 1) for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True, env={"LC_ALL": "C"}
        ).stdout.splitlines() if ":" in line
    )  # fmt: skip
    return f"{fields['CPU family'].strip()}/{fields['Model'].strip()}"


def test_the_manifest_names_are_those_the_generators_write():
    assert GENERATED_MANIFESTS == (synthetic_voc.MANIFEST_NAME, digits.MANIFEST_NAME)


def test_the_record_is_this_process_and_fast(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    monkeypatch.delenv("MKL_CBWR", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        record = collect_environment(world_size=3, seeds=[0, 1], datasets=["no_such_set"])
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    assert seconds < 1.0
    assert json.loads(json.dumps(record)) == record
    # Summaries holding it are saved with torch.save and read back with weights_only loads.
    buffer = io.BytesIO()
    torch.save(record, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == record
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    )
    assert record["det_scaling"]["commit"] == head.stdout.strip()
    assert isinstance(record["det_scaling"]["dirty"], bool)
    assert record["versions"]["torch"] == torch.__version__
    assert record["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["cpu"]["count"] == os.cpu_count() and record["cpu"]["model"]
    assert record["cpu"]["family_model"] == _family_model_from_lscpu()
    assert record["threads"]["torch"] == 1
    assert record["numerics_variables"]["ATEN_CPU_CAPABILITY"] == "default"
    assert record["numerics_variables"]["MKL_CBWR"] is None
    assert set(record["numerics_variables"]) == set(NUMERICS_VARIABLES)
    assert record["deterministic_algorithms"] is torch.are_deterministic_algorithms_enabled()
    assert record["gpu"] is None or record["gpu"]["names"]
    assert (record["world_size"], record["seeds"]) == (3, [0, 1])
    assert record["datasets"] == {"no_such_set": None}


def test_fingerprints_are_found_through_the_catalogs(tmp_path):
    folder = generate_synthetic_voc(tmp_path / "synthetic", 2, 2, 32)
    train, test = register_synthetic_voc(folder)
    manifest = Path(folder) / synthetic_voc.MANIFEST_NAME
    for name in (train, test):
        assert dataset_fingerprint(name) == {"sha256": sha256(manifest), "file": str(manifest)}

    # An image-folder split: its export's manifest is beside the split folders.
    digits_train, _ = register_digits(tmp_path / "datasets", upscale=8)
    split_dir = Path(MetadataCatalog.get(digits_train).split_dir)
    digits_manifest = split_dir.parent / digits.MANIFEST_NAME
    assert dataset_fingerprint(digits_train)["sha256"] == sha256(digits_manifest)

    # A VOC-layout set that was not generated: its split's list of images.
    voc = tmp_path / "voc"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    listing = voc / "ImageSets" / "Main" / "trainval.txt"
    listing.write_text("000001\n000002\n")
    MetadataCatalog.get("test_environment_voc").set(dirname=str(voc), split="trainval")
    DatasetCatalog.register("test_environment_voc", list)
    try:
        assert dataset_fingerprint("test_environment_voc")["sha256"] == sha256(listing)
        listing.unlink()
        assert dataset_fingerprint("test_environment_voc") is None  # nothing identifies it
    finally:
        DatasetCatalog.remove("test_environment_voc")
        MetadataCatalog.remove("test_environment_voc")
    assert dataset_fingerprint("not_registered") is None


@pytest.fixture(scope="module")
def record():
    return collect_environment(world_size=2, seeds={"configured": 0, "used": 0})


def test_numeric_differences_name_what_changes_numbers(record):
    other = copy.deepcopy(record)
    capability = "AVX512" if record["cpu"]["capability"] != "AVX512" else "AVX2"
    other["cpu"]["capability"] = capability
    other["versions"]["torch"] = "1.0.0"
    other["numerics_variables"]["MKL_CBWR"] = "COMPATIBLE"
    other["cpu"]["family_model"] = "25/17"
    assert numeric_differences(record, other) == [
        f"torch {record['versions']['torch']} vs 1.0.0",
        f"CPU family/model {record['cpu']['family_model']} vs 25/17",
        f"CPU capability {record['cpu']['capability']} vs {capability}",
        f"MKL_CBWR {record['numerics_variables']['MKL_CBWR'] or 'none'} vs COMPATIBLE",
    ]
    other = copy.deepcopy(record)
    other["datasets"] = {"a": {"sha256": "1" * 64, "file": "x"}}
    both = copy.deepcopy(other)
    both["datasets"]["a"]["sha256"] = "2" * 64
    assert numeric_differences(other, both) == [f"data set a {'1' * 12} vs {'2' * 12}"]
    assert numeric_differences(record, None) == ["no environment recorded"]


def test_numeric_differences_ignore_the_commit_seeds_and_world_size(record):
    other = copy.deepcopy(record)
    other["det_scaling"].update(commit="0" * 40, dirty=not record["det_scaling"]["dirty"])
    other.update(world_size=8, seeds={"configured": 1, "used": 1})
    other["versions"]["python"] = record["versions"]["python"] + "1"  # another patch release
    assert numeric_differences(record, other) == []


def test_a_mismatch_is_one_line_naming_both_runs(record):
    other = copy.deepcopy(record)
    other["threads"]["torch"] = record["threads"]["torch"] + 1
    line = environment_mismatch({"run a": record, "run b": record, "run c": other})
    assert line == (
        f"run a and run c differ: torch threads {record['threads']['torch']} vs "
        f"{record['threads']['torch'] + 1}"
    )
    assert environment_mismatch({"run a": record, "run b": None}) == (
        "run a and run b differ: no environment recorded for run b"
    )
    assert environment_mismatch({"run a": record, "run b": copy.deepcopy(record)}) is None

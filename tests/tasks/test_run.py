"""The per-process setup and the checks a launching process makes before starting any worker:
config errors in one line, the training set's size without writing it, generation once per
machine."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import det_scaling
from det_scaling.config import config_format
from det_scaling.data.generated import generate_once
from det_scaling.engine.launch import launch
from det_scaling.tasks import prepare_run, register_datasets, resolve_run, training_set_size

# isort: split
from detectron2.data import DatasetCatalog
from detectron2.utils import comm

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny.yaml"
DIGITS = REPO / "configs" / "ImageNet-Classification" / "resnet50_digits.yaml"


@pytest.fixture
def datasets(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "datasets"
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    return root


def run_train_tool(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DETECTRON2_DATASETS": str(tmp_path / "datasets"), "PYTHONPATH": str(REPO)}
    command = [sys.executable, str(REPO / "tools" / "train.py"), *argv]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["SOLVER.IMS_PER_BATCH", "3"],
            "error: SOLVER.IMS_PER_BATCH (3) must be divisible by SOLVER.REFERENCE_WORLD_SIZE (2)",
        ),
        (["SOLVER.BASE_LRR", "0.1"], "error: SOLVER.BASE_LRR: no such config key; did you mean "),
        (["SCALING.GRAD_ACCUM_STEPS", "0"], "error: SCALING.GRAD_ACCUM_STEPS must be >= 1"),
    ],
)
def test_train_tool_refuses_a_bad_config_before_starting_any_process(tmp_path, argv, message):
    out = tmp_path / "out"
    config = ["--config-file", str(TINY), "--num-gpus", "2", "OUTPUT_DIR", str(out)]
    result = run_train_tool(tmp_path, *config, *argv)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    # No worker ran: nothing generated, nothing written, no process group logged.
    assert not (tmp_path / "datasets").exists()
    assert not out.exists()
    assert "Rank of current process" not in result.stdout + result.stderr


def test_train_tool_names_a_missing_config_file(tmp_path):
    result = run_train_tool(tmp_path, "--config-file", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert f"det-scaling train: error: {tmp_path / 'nope.yaml'}: no such config file" in (
        result.stderr
    )


def test_training_set_size_of_generated_sets_is_known_before_they_are_written(datasets):
    detection = det_scaling.load_cfg(str(TINY), ["DATASETS.SYNTHETIC_VOC.NUM_TRAINVAL", "6"])
    classification = det_scaling.load_cfg(str(DIGITS))
    sizes = {
        "detection": training_set_size(config_format(detection)),
        "digits": training_set_size(config_format(classification)),
    }
    assert sizes["detection"] == 6
    assert not datasets.exists()  # counted, not written
    # Once generated and registered, detectron2's catalog has exactly those images.
    detection.DATASETS.SYNTHETIC_VOC.NUM_TEST = 2
    register_datasets(config_format(detection))
    register_datasets(config_format(classification))
    assert len(DatasetCatalog.get("synthetic_voc_trainval")) == sizes["detection"]
    assert len(DatasetCatalog.get("digits_train")) == sizes["digits"]


def test_resolve_run_fills_the_dataset_size_and_checks_the_geometry(datasets):
    sizes = ["SCALING.DATASET_SIZE", "0", "DATASETS.SYNTHETIC_VOC.NUM_TRAINVAL", "40"]
    cfg = det_scaling.load_cfg(str(TINY), sizes)
    run = resolve_run(cfg, 4, device="cpu")
    assert run.cfg.SCALING.DATASET_SIZE == 40
    assert run.cfg.MODEL.DEVICE == "cpu"
    assert run.recipe.dataset_size == 40 and run.schedule.world_size == 4
    assert cfg.SCALING.DATASET_SIZE == 0  # the input is not changed
    assert not datasets.exists()
    # Used as written, 2 images do not divide among 3 processes.
    with pytest.raises(ValueError, match=r"IMS_PER_BATCH \(2\) must be divisible by 3 process"):
        resolve_run(cfg, 3, no_scale=True)
    empty = det_scaling.load_cfg(str(TINY), ["DATASETS.TRAIN", "()"])
    with pytest.raises(ValueError, match=r"DATASETS\.TRAIN is empty"):
        resolve_run(empty, 1)
    unknown = det_scaling.load_cfg(str(TINY), ["DATASETS.TRAIN", "('my_set',)"])
    with pytest.raises(ValueError, match="data set 'my_set' is not registered"):
        resolve_run(unknown, 1)


def test_a_configured_dataset_size_that_differs_is_kept_with_one_warning(datasets):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("det_scaling.tasks.run")
    logger.addHandler(handler)
    try:
        for configured in ("40", "50"):
            keys = ["SCALING.DATASET_SIZE", configured, "DATASETS.SYNTHETIC_VOC.NUM_TRAINVAL", "40"]
            cfg = det_scaling.load_cfg(str(TINY), keys)
            assert resolve_run(cfg, 2, device="cpu").recipe.dataset_size == int(configured)
            assert not records  # a check before the run starts: no warning
            run = prepare_run(cfg, 1)  # one process: the main one
            assert run.recipe.dataset_size == int(configured)
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == [
        "SCALING.DATASET_SIZE is 50 but the training data has 40 images; epochs are counted with 50"
    ]


def test_prepare_run_registers_the_data_and_freezes_the_scaled_config(datasets):
    cfg = det_scaling.load_cfg(str(TINY), ["DATASETS.SYNTHETIC_VOC.NUM_TRAINVAL", "4"])
    run = prepare_run(cfg, 1)
    assert run.cfg.is_frozen()
    assert (run.cfg.SOLVER.IMS_PER_BATCH, run.plan.num_gpus) == (1, 1)  # written for 2 GPUs x 1
    assert len(DatasetCatalog.get("synthetic_voc_trainval")) == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SOLVER:\n  BASE_LRR: 0.1\n", "SOLVER.BASE_LRR: no such config key; did you mean "),
        ("SOLVER:\n  MAX_ITER: many\n", "SOLVER.MAX_ITER: expected int (like 40000), got str"),
        ("- just\n- a list\n", "not a detectron2 YAML config"),
        ("SOLVER: [unclosed\n", "not a detectron2 YAML config"),
        ('_BASE_: "missing.yaml"\n', "not a detectron2 YAML config"),
    ],
)
def test_load_cfg_names_the_file_and_key_of_a_bad_config(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="^" + str(path).replace(".", r"\.")) as error:
        det_scaling.load_cfg(str(path))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_load_cfg_suggests_the_closest_key_of_an_override():
    expected = "MODEL.RESNETS.DEPT: no such config key; did you mean MODEL.RESNETS.DEPTH?"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        det_scaling.load_cfg(None, ["MODEL.RESNETS.DEPT", "50"])


def _failing_generation(marker: str) -> None:
    def make() -> None:
        Path(marker, f"rank{comm.get_rank()}").touch()
        raise OSError("disk full")

    try:
        generate_once(make)
    except (OSError, RuntimeError) as error:
        Path(marker, f"error{comm.get_rank()}").write_text(f"{type(error).__name__}: {error}")


@pytest.mark.slow
def test_a_failed_generation_is_raised_in_every_process_not_left_at_a_barrier(tmp_path):
    launch(_failing_generation, 2, dist_url="auto", args=(str(tmp_path),))
    assert sorted(p.name for p in tmp_path.glob("rank*")) == ["rank0"]  # one writer a machine
    assert (tmp_path / "error0").read_text() == "OSError: disk full"
    assert (tmp_path / "error1").read_text() == (
        "RuntimeError: generating the data set failed on another process: OSError: disk full"
    )

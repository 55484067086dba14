"""summary.json records where a run was made: a real 2-process run of tools/train.py's command on
the tiny model, on a generated synthetic VOC set, compared with this process's own record."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys

import pytest
from helpers.processes import TINY_RUN, tiny_run_setup

import det_scaling
from det_scaling.data import synthetic_voc
from det_scaling.utils.environment import collect_environment

pytestmark = pytest.mark.slow


def key_paths(record: dict, prefix: str = "") -> set[str]:
    """Every key of ``record``, nested ones as ``a.b``; the data sets' by their own fields."""
    paths = set()
    for key, value in record.items():
        path = f"{prefix}{key}"
        paths.add(path)
        if isinstance(value, dict) and key not in ("datasets", "seeds"):
            paths |= key_paths(value, f"{path}.")
    return paths


def test_the_summary_records_the_worker_environment_seed_and_data(tmp_path):
    config, env = tiny_run_setup(tmp_path, max_iter=4, CHECKPOINT_PERIOD=100)
    cfg = det_scaling.load_cfg(str(config))
    cfg.DATASETS.TRAIN = ("synthetic_voc_trainval",)
    cfg.DATASETS.SYNTHETIC_VOC.NUM_TRAINVAL = 4
    cfg.DATASETS.SYNTHETIC_VOC.NUM_TEST = 2
    cfg.DATASETS.SYNTHETIC_VOC.IMAGE_SIZE = 32
    cfg.SEED = -1  # detectron2 draws one
    config.write_text(cfg.dump())
    datasets = tmp_path / "datasets"
    env["DETECTRON2_DATASETS"] = str(datasets)
    # Without OMP_NUM_THREADS the launcher gives each worker its share of the CPUs; the launcher
    # keeps torch's default (all of them).
    del env["OMP_NUM_THREADS"]
    command = [sys.executable, str(TINY_RUN), "--config-file", str(config)]
    command += ["--num-gpus", "2", "--dist-url", "auto"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]

    out = tmp_path / "out"
    recorded = json.loads((out / "summary.json").read_text())["environment"]
    mine = collect_environment()
    assert key_paths(recorded) == key_paths(mine)
    for path in ("versions", "cpu", "gpu", "deterministic_algorithms"):
        assert recorded[path] == mine[path], path
    assert recorded["det_scaling"]["commit"] == mine["det_scaling"]["commit"]
    assert recorded["world_size"] == 2
    assert recorded["threads"]["torch"] == max(1, os.cpu_count() // 2)
    assert recorded["numerics_variables"]["OMP_NUM_THREADS"] is None
    # The seed rank 0 was given: the one detectron2 drew and logged in rank 0's log.
    drawn = re.findall(r"Using a generated random seed (\d+)", (out / "log.txt").read_text())
    assert recorded["seeds"] == {"configured": -1, "used": int(drawn[0])}
    # The training set's manifest, found on disk here and hashed again.
    (manifest,) = datasets.rglob(synthetic_voc.MANIFEST_NAME)
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert recorded["datasets"] == {
        "synthetic_voc_trainval": {"sha256": digest, "file": str(manifest)}
    }

"""One command, one result: the demo's detector trained twice on 2 processes, the second time
beside processes that keep every core busy, ends with bit-identical weights; and the switch to
deterministic kernels."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import REPO

import det_scaling
from det_scaling.config import adapter_of
from det_scaling.errors import ConfigError

DEMO_CONFIG = REPO / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny.yaml"
LAZY_CONFIG = REPO / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny.py"
SHORT_RUN = [
    "SOLVER.MAX_ITER", "6", "SOLVER.STEPS", "(4,)", "SOLVER.WARMUP_ITERS", "2",
    "SOLVER.CHECKPOINT_PERIOD", "1000", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()",
    "DATASETS.SYNTHETIC_VOC.NUM_TRAINVAL", "8", "DATASETS.SYNTHETIC_VOC.NUM_TEST", "2",
]  # fmt: skip


@contextlib.contextmanager
def cpu_burners(count: int) -> Iterator[None]:
    """``count`` processes spinning on the CPU while the block runs."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
        assert all(burner.poll() is None for burner in burners), "a burner ended early"
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


def train_demo_detector(tmp_path: Path, name: str) -> dict[str, torch.Tensor]:
    """The demo's command, shortened, on 2 processes with the threads ``launch`` chooses; the
    final weights."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    env.update(DETECTRON2_DATASETS=str(tmp_path / "datasets"), PYTHONPATH=str(REPO))
    output = tmp_path / name
    command = [sys.executable, str(REPO / "tools" / "train.py"), "--config-file", str(DEMO_CONFIG)]
    command += ["--num-gpus", "2", *SHORT_RUN, "OUTPUT_DIR", str(output)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return torch.load(output / "model_final.pth", map_location="cpu", weights_only=False)["model"]


@pytest.mark.slow
def test_the_same_run_beside_a_cpu_burner_ends_with_bit_identical_weights(tmp_path):
    quiet = train_demo_detector(tmp_path, "quiet")
    with cpu_burners(os.cpu_count() or 1):
        loaded = train_demo_detector(tmp_path, "loaded")
    assert quiet.keys() == loaded.keys()
    differing = [name for name in quiet if not torch.equal(quiet[name], loaded[name])]
    assert not differing, f"{len(differing)} of {len(quiet)} tensors differ, e.g. {differing[:3]}"


@pytest.mark.parametrize(
    ("config", "overrides", "message"),
    [
        (DEMO_CONFIG, ["DETERMINISTIC", "True", "CUDNN_BENCHMARK", "True"],
         "DETERMINISTIC and CUDNN_BENCHMARK exclude each other"),
        (LAZY_CONFIG, ["train.deterministic=True", "+train.cudnn_benchmark=True"],
         "train.deterministic and train.cudnn_benchmark exclude each other"),
    ],
)  # fmt: skip
def test_deterministic_kernels_and_the_cudnn_autotuner_are_refused_together(
    config, overrides, message
):
    cfg = det_scaling.load_cfg(str(config), overrides)
    with pytest.raises(ConfigError, match=message):
        adapter_of(cfg).run_settings()


@pytest.mark.parametrize(
    ("config", "overrides"),
    [(DEMO_CONFIG, ["DETERMINISTIC", "True"]), (LAZY_CONFIG, ["train.deterministic=True"])],
)
def test_both_formats_read_the_deterministic_switch(config, overrides):
    assert not adapter_of(det_scaling.load_cfg(str(config))).run_settings().deterministic
    assert adapter_of(det_scaling.load_cfg(str(config), overrides)).run_settings().deterministic

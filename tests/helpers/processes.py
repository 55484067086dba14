"""Runs of ``tools/train.py``'s command on the tiny model in real processes
(``tests/helpers/tiny_run.py``), and the check of a run's reported AP50 against its weights."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.evaluation import PascalVOCDetectionEvaluator, inference_on_dataset
from torch import nn

from det_scaling.data import register_synthetic_voc
from det_scaling.testing.tiny import write_tiny_run
from helpers import REPO

TINY_RUN = REPO / "tests" / "helpers" / "tiny_run.py"


def tiny_run_setup(tmp_path: Path, max_iter: int = 12, **solver) -> tuple[Path, dict]:
    """A config of the faulty tiny model (written for 1 GPU x 2 images;
    :func:`det_scaling.testing.tiny.write_tiny_run`) and the environment of
    tests/helpers/tiny_run.py."""
    config, data = write_tiny_run(
        tmp_path, max_iter=max_iter, meta_architecture="TinyFaultyRegressor", **solver
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
        "TINY_RUN_DATA": str(data),
        "OMP_NUM_THREADS": "1",
    }
    return config, env


T = TypeVar("T")


def free_port() -> int:
    """A port free now. Another process may take it before the run binds it: pass the run to
    :func:`retry_on_port_clash`, or let the launcher pick (``--dist-url auto`` binds port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_clash(output: str) -> bool:
    """Whether a run's output says its port was taken (by the time it bound it)."""
    lowered = output.lower()
    return "eaddrinuse" in lowered or "address already in use" in lowered


def retry_on_port_clash(
    run: Callable[[int], T], output: Callable[[T], str], attempts: int = 3
) -> T:
    """``run(port)`` on a port free when chosen, again on another (up to ``attempts`` times) when
    ``output`` of its result says another process took the port first."""
    for _ in range(attempts - 1):
        result = run(free_port())
        if not port_clash(output(result)):
            return result
    return run(free_port())


def run_train_tool_on_two_processes(tmp_path: Path, config: Path, *overrides: str) -> str:
    """Runs tools/train.py on 2 gloo processes, with data sets generated under ``tmp_path``;
    returns its log (stdout and stderr), after checking that it succeeded."""
    env = {
        **os.environ,
        "DETECTRON2_DATASETS": str(tmp_path / "datasets"),
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, str(REPO / "tools" / "train.py"), "--config-file", str(config)]
    command += ["--num-gpus", "2", "--dist-url", "auto", *overrides]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=500)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    return log


def synthetic_voc_test_ap50(model: nn.Module, weights: Path, data: Path, loader) -> float:
    """The AP50 of ``weights`` (loaded into ``model``) on the test split of the synthetic set in
    the folder ``data`` (``det_scaling.tasks.synthetic_voc_dir_for``), as detectron2's own
    inference loop and VOC evaluator give it in this process, on one thread as in the runs'
    processes. ``loader(name)`` builds the test loader of the registered split ``name``."""
    _, test_name = register_synthetic_voc(data)
    DetectionCheckpointer(model).load(str(weights))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        evaluator = PascalVOCDetectionEvaluator(test_name)
        results = inference_on_dataset(model, loader(test_name), evaluator)
    finally:
        torch.set_num_threads(threads)
    return results["bbox"]["AP50"]

"""det_scaling.engine.launch: spawned gloo processes on the CPU, torchrun, detectron2's comm
state, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from detectron2.utils import comm
from helpers.processes import TINY_RUN, retry_on_port_clash, tiny_run_setup
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from det_scaling.engine.launch import (
    TORCHRUN_VARIABLES,
    create_ddp_model,
    default_device,
    launch,
    pick_backend,
    under_torchrun,
)

REPO = Path(__file__).resolve().parents[2]


def _report_worker(out_dir: str) -> None:
    """Runs in each launched process: all-reduces, trains one DDP step, reports what it saw."""
    rank = comm.get_rank()
    total = torch.tensor([rank + 1.0])
    dist.all_reduce(total)
    model = create_ddp_model(nn.Linear(2, 1, bias=False))
    model(torch.full((1, 2), rank + 1.0)).sum().backward()
    report = {
        "world_size": comm.get_world_size(),
        "local_rank": comm.get_local_rank(),
        "local_size": comm.get_local_size(),
        "backend": dist.get_backend(),
        "device": default_device(),
        "sum": total.item(),
        "ddp": isinstance(model, DistributedDataParallel),
        "grad": model.module.weight.grad.tolist(),
        "threads": torch.get_num_threads(),
    }
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(report))


def read_reports(out_dir: Path, world_size: int) -> list[dict]:
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(world_size)]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (gloo) path")
def test_two_cpu_processes_all_reduce_and_know_their_ranks(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    launch(_report_worker, 2, dist_url="auto", args=(str(tmp_path),))
    reports = read_reports(tmp_path, 2)
    for rank, report in enumerate(reports):
        # Each process takes its share of the cores, not all of them.
        assert report["threads"] == max(1, (os.cpu_count() or 1) // 2)
        assert report["world_size"] == 2
        assert report["local_rank"] == rank
        assert report["local_size"] == 2
        assert report["backend"] == "gloo"
        assert report["device"] == "cpu"
        assert report["sum"] == 3.0  # 1 + 2
        assert report["ddp"]
        # DDP on CPU models (no device_ids) averages the gradients: inputs 1 and 2 -> 1.5.
        assert report["grad"] == [[1.5, 1.5]]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (gloo) path")
def test_under_torchrun_initialises_from_the_environment(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys

            import det_scaling  # noqa: F401
            from det_scaling.engine.launch import launch
            from test_launch import _report_worker

            # torchrun started the processes: launch must not spawn 4 more.
            launch(_report_worker, 4, dist_url="auto", args=(sys.argv[1],))
            """
        )
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), str(Path(__file__).parent)]),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # its rendezvous store binds a port of its own choosing: no clash
        "--nproc-per-node=2",
        str(script),
        str(tmp_path),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = read_reports(tmp_path, 2)
    assert [r["local_rank"] for r in reports] == [0, 1]
    assert all(r["world_size"] == 2 and r["sum"] == 3.0 for r in reports)
    assert all(r["grad"] == [[1.5, 1.5]] for r in reports)
    assert not (tmp_path / "rank2.json").exists()


def test_one_process_runs_main_here_without_a_process_group():
    seen = []
    launch(lambda x: seen.append((x, comm.get_world_size(), dist.is_initialized())), 1, args=(7,))
    assert seen == [(7, 1, False)]


def test_a_multi_process_launch_needs_a_url():
    with pytest.raises(ValueError, match="dist_url"):
        launch(print, 2)
    with pytest.raises(ValueError, match="one machine"):
        launch(print, 2, num_machines=2, dist_url="auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="no GPU here")
def test_without_gpus_the_backend_is_gloo_on_the_cpu():
    assert pick_backend(1) == "gloo"
    assert default_device() == "cpu"


@pytest.mark.cuda
def test_with_a_gpu_the_backend_is_nccl_and_the_device_cuda():
    assert pick_backend(1) == "nccl"
    assert pick_backend(torch.cuda.device_count() + 1) == "gloo"  # a GPU per process, or none
    assert default_device() == "cuda"


def test_torchrun_is_recognised_by_its_environment(monkeypatch):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not under_torchrun()
    for name, value in zip(TORCHRUN_VARIABLES, ("0", "1", "0", "127.0.0.1", "29500"), strict=True):
        monkeypatch.setenv(name, value)
    assert under_torchrun()


def test_ddp_model_is_the_model_itself_in_one_process():
    model = nn.Linear(2, 1)
    assert create_ddp_model(model) is model


@pytest.mark.slow
def test_under_torchrun_a_process_group_that_cannot_come_up_fails_within_the_timeout(tmp_path):
    """Rank 0 of 2, alone (its peer never starts): one line naming the rank and what it waited
    for, after --dist-timeout, not a hang."""
    config, env = tiny_run_setup(tmp_path)
    env.update(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    command = [sys.executable, str(TINY_RUN), "--config-file", str(config), "--dist-timeout", "5"]

    def alone(port: int) -> tuple[subprocess.CompletedProcess, float]:
        start = time.monotonic()
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        return result, time.monotonic() - start

    result, seconds = retry_on_port_clash(alone, lambda done: done[0].stderr)
    assert seconds < 90
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("det-scaling")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith(
        "det-scaling train: error: rank 0 of 2 failed: RuntimeError: the process group did not "
        "come up within 0:00:05 (torchrun restart attempt 0"
    ), errors[0]

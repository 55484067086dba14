"""benchmarks/gpu_check.sh: its dry run end to end on the CPU (every step run or skipped with a
reason, both summaries written), its clock, and its time box, which ends a step's whole process
tree (torchrun's worker is in a session of its own)."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

STEP_NAMES = [
    "install",
    "environment",
    "cuda_tests",
    "optimizer_step",
    "detector",
    "nccl",
    "auto_micro_batch",
    "determinism",
    "adascale_cost",
    "scaling_table",
]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def run_check(tmp_path: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    command = ["bash", "benchmarks/gpu_check.sh", "--dry-run", "--out", str(tmp_path / "out")]
    command += ["--work", str(tmp_path / "work"), *args]
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_dry_run_runs_every_step_on_the_cpu_and_writes_both_summaries(tmp_path):
    result = run_check(tmp_path, timeout=480)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    steps = {step["name"]: step for step in report["steps"]}
    assert list(steps) == STEP_NAMES
    assert report["mode"] == "dry-run" and report["passed"]
    assert report["skipped"] == {
        "install": "dry run: the environment running the check is used as it is",
        "scaling_table": "dry run: optional, and it trains 7 detectors",
    }
    ran = [s for s in report["steps"] if s["status"] != "skipped"]
    assert all(s["status"] == "passed" and s["checks"] for s in ran), [
        (s["name"], s["status"]) for s in ran
    ]
    # The CUDA tests are collected (the marker selects them) and skipped here.
    counts = steps["cuda_tests"]["figures"]["counts"]
    assert counts["skipped"] >= 5 and counts["passed"] == counts["failure"] == 0
    assert {"float32", "bfloat16"} <= set(steps["optimizer_step"]["figures"]["dtypes"])
    throughput = steps["detector"]["figures"]["throughput"]
    assert [(r["device"], r["batch"]) for r in throughput] == [("cpu", 1), ("cpu", 2)]
    assert all(r["images/s"] > 0 for r in throughput)
    group = steps["nccl"]["figures"]["group"]
    assert group["backend"] == "gloo" and group["timeout_s"] == 90.0
    assert group["ddp_model"] == "DistributedDataParallel"
    assert steps["nccl"]["figures"]["resume"]["start_iter"] == 2
    runs = {r["run"]: r for r in steps["auto_micro_batch"]["figures"]["runs"]}
    assert runs["uncapped"]["micro-batch at end"] == 4
    assert runs["capped"]["micro-batch at end"] == 1 and runs["capped"]["total batch"] == 4
    identical, default = steps["determinism"]["figures"]["determinism"]
    assert identical["tensors differing"] == 0 and default["against the first"] == "default kernels"
    assert steps["adascale_cost"]["figures"]["ratio"] > 0

    summary = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "**Dry run on the CPU: not a GPU run.**" in summary
    for step in report["steps"]:
        assert f"## {step['title']} ({step['name']}): {step['status']}" in summary
    assert "Skipped: dry run: optional, and it trains 7 detectors." in summary
    assert (tmp_path / "out" / "gpu_check.log").stat().st_size > 0


def test_steps_that_the_clock_leaves_no_time_for_are_skipped_saying_so(tmp_path):
    result = run_check(tmp_path, "--budget", "0", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert [s["name"] for s in report["steps"]] == STEP_NAMES
    reasons = report["skipped"]
    assert set(reasons) == set(STEP_NAMES)
    assert reasons["environment"].startswith("the clock: ")
    assert "left of the budget" in reasons["detector"]
    assert "- nccl: the clock: " in (tmp_path / "out" / "gpu_check.md").read_text()


def test_a_step_past_its_time_box_is_ended_with_its_children(gpu_check):
    # The step starts a child in a session of its own (as torchrun starts its worker), prints
    # the child's id, then waits for it; the time box ends both.
    code = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],"
        " start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print(child.pid, flush=True)\n"
        "child.wait()\n"
    )
    log = io.StringIO()
    status, timed_out, lines = gpu_check._run(
        [sys.executable, "-c", code], dict(os.environ), 3, log
    )
    child = int(lines[0])
    assert timed_out and status != 0
    assert lines[-1] == "(ended after 3 s: its time box)"
    assert log.getvalue().splitlines()[0] == str(child)
    try:
        ended = os.pidfd_open(child)  # readable once the process has ended
    except ProcessLookupError:
        return  # ended, and already reaped by its new parent
    try:
        readable, _, _ = select.select([ended], [], [], 30)
        if not readable:  # what this test started: ended here, then the failure reported
            os.kill(child, signal.SIGKILL)
        assert readable, f"process {child} still ran 30 s after the time box"
    finally:
        os.close(ended)


def test_the_cuda_tests_are_found_by_their_marker(gpu_check):
    files = gpu_check.cuda_test_files()
    assert "tests/solver/test_lars.py" in files
    assert "tests/engine/test_launch.py" in files
    assert "tests/benchmarks/test_gpu_check.py" not in files

"""Restarts: a run killed with SIGKILL resumes, at the same or at another process count, losing at
most one checkpoint period; under torchrun a restarted worker group resumes by itself, at the new
world size. In both, the images seen and the LR at the end are an uninterrupted run's.

Real processes: tests/helpers/tiny_run.py (tools/train.py's command for the tiny model), spawned
gloo processes and torchrun agents with a c10d rendezvous, killed with SIGKILL.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers.processes import TINY_RUN, tiny_run_setup
from helpers.stacks import descendants
from helpers.tiny import build_trainer

from det_scaling import plan_scaling
from det_scaling.commands.train import PLAN_FILE, resume_requested
from det_scaling.solver import scheduled_lrs
from det_scaling.testing.tiny import tiny_cfg

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL for ``process`` and everything below it: a machine lost."""
    for pid in [*descendants(process.pid), process.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


def wait_for(condition: Callable[[], bool], what: str, processes, timeout: float) -> None:
    """Polls ``condition``; fails when one of ``processes`` (Popen, stderr to a file named
    ``process.stderr_path``) ends first, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        for process in processes:
            if process.poll() is not None:
                err = Path(process.stderr_path).read_text()[-3000:]
                pytest.fail(f"ended (status {process.returncode}) before {what}:\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout} s")
        time.sleep(0.2)


def last_checkpoint_progress(out: Path) -> dict | None:
    """The ScalingProgress state in OUTPUT_DIR's last checkpoint (written atomically: whole)."""
    pointer = out / "last_checkpoint"
    if not pointer.exists():
        return None
    saved = torch.load(out / pointer.read_text(), weights_only=False)
    return saved["trainer"]["hooks"]["ScalingProgress"]


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def run_tiny(arguments: list[str], env: dict, timeout: float = 400) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(TINY_RUN), *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_at_the_same_and_at_another_gpu_count(tmp_path, data):
    # Written for 1 GPU x 2 images: 24 steps, a checkpoint every 4, LR steps at 12 and 20.
    solver = {"CHECKPOINT_PERIOD": 4, "STEPS": (12, 20)}
    config, env = tiny_run_setup(tmp_path, max_iter=24, **solver)
    out = tmp_path / "out"
    progress = tmp_path / "progress.txt"
    # Killed (SIGKILL, by itself) as its 10th step starts: 8 steps are in the second checkpoint
    # (after step 7), step 8 is done and lost, step 9 is under way.
    env.update(TINY_RUN_FAULT="0:9:kill", TINY_RUN_PROGRESS=str(progress))
    killed = popen_logged(
        [sys.executable, str(TINY_RUN), "--config-file", str(config), "--num-gpus", "1"],
        env,
        tmp_path / "killed",
        start_new_session=True,
    )
    try:
        killed.wait(timeout=300)
    finally:
        kill_tree(killed)
    assert killed.returncode == -signal.SIGKILL, Path(killed.stderr_path).read_text()[-3000:]
    del env["TINY_RUN_FAULT"]
    steps_started = len(progress.read_text().splitlines())
    assert steps_started == 10
    assert (out / "last_checkpoint").read_text() == "model_0000007.pth"
    shutil.copytree(out, tmp_path / "out_two")
    checkpoint = last_checkpoint_progress(out)
    assert checkpoint["iteration"] == 8

    # Uninterrupted, for comparison: the same schedule in this process (the tiny model's LR and
    # images do not depend on the faults or sleeps of the subprocess's variant).
    reference_cfg = tiny_cfg(tmp_path / "reference", ims_per_batch=2, max_iter=24)
    reference_cfg.SOLVER.merge_from_list(
        ["REFERENCE_WORLD_SIZE", 1, "BASE_LR", 0.01, "STEPS", (12, 20), "WARMUP_ITERS", 2]
    )
    reference = build_trainer(plan_scaling(reference_cfg, 1).cfg, data).train()

    run_tiny(["--config-file", str(config), "--num-gpus", "1", "--resume"], env)
    same = summary(out)
    assert same["start_iter"] == checkpoint["iteration"]
    assert steps_started - same["start_iter"] <= solver["CHECKPOINT_PERIOD"]  # lost at most one
    for key in ("iterations_done", "images_seen", "epochs_seen", "final_lr"):
        assert same[key] == pytest.approx(reference[key]), key

    two_out = tmp_path / "out_two"
    run_tiny(
        ["--config-file", str(config), "--num-gpus", "2", "--resume", "OUTPUT_DIR", str(two_out)],
        env,
    )
    two = summary(two_out)
    assert two["world_size"] == 2 and two["ims_per_batch"] == 4
    assert two["start_iter"] * 4 == checkpoint["images_seen"]  # the same images, in steps of 4
    assert two["images_seen"] == reference["images_seen"] == 48
    # The 2-process schedule (linear rule: twice the LR), ending where the uninterrupted one does.
    expected = scheduled_lrs(plan_scaling(reference_cfg, 2).cfg)
    assert two["final_lr"] == pytest.approx(expected[-1])
    assert two["final_lr"] == pytest.approx(2 * reference["final_lr"])


def popen_logged(command: list[str], env: dict, logs: Path, **kwargs) -> subprocess.Popen:
    """``command`` started with its output in ``logs``.out/.err (a pipe nobody reads while the
    test waits could fill up and block it)."""
    stdout, stderr = logs.with_suffix(".out"), logs.with_suffix(".err")
    with open(stdout, "w") as out, open(stderr, "w") as err:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err, **kwargs)
    process.stderr_path = stderr
    return process


def torchrun_agent(config: Path, rendezvous_file: Path, env: dict, logs: Path) -> subprocess.Popen:
    """A torchrun agent of an elastic job of 1 to 2 nodes with one worker each.

    The c10d rendezvous keeps its state in a file store (torchrun's store_type=file), so no port
    is chosen before the agents bind it; the workers' store is the rank 0 agent's, which torchrun
    binds to port 0 itself. The timeouts are short so that the round after a node is lost does
    not wait long: a node silent for 5 s (5 heartbeats of 1 s) is dead, and a round holding fewer
    than 2 nodes completes 2 s after the first joined. (A second agent later than that to the
    first round only costs a restart for the change of membership, which torchrun does not count.)
    """
    rendezvous_conf = (
        "store_type=file,join_timeout=120,last_call_timeout=2,"
        "keep_alive_interval=1,keep_alive_max_attempt=5"
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1:2",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={rendezvous_file}",
        "--rdzv-id=det-scaling-test",
        f"--rdzv-conf={rendezvous_conf}",
        "--max-restarts=2",
        "--monitor-interval=0.5",
        str(TINY_RUN),
        "--config-file",
        str(config),
    ]
    return popen_logged(command, env, logs)


@pytest.mark.slow
def test_torchrun_restarts_at_another_world_size_and_resumes_by_itself(tmp_path):
    # Written for 1 GPU x 2 images: 40 steps (80 images); 20 steps of 4 on 2 workers.
    config, env = tiny_run_setup(tmp_path, max_iter=40, CHECKPOINT_PERIOD=8, STEPS=(20, 32))
    out = tmp_path / "out"
    env["TINY_RUN_STEP_SECONDS"] = "0.4"
    rendezvous = tmp_path / "rendezvous"
    first = torchrun_agent(config, rendezvous, env, tmp_path / "first_agent")
    second = torchrun_agent(config, rendezvous, env, tmp_path / "second_agent")
    try:

        def written_by_two_workers() -> bool:
            state = last_checkpoint_progress(out)
            return state is not None and state["world_size"] == 2

        wait_for(written_by_two_workers, "checkpoint of 2 workers", [first, second], timeout=300)
        kill_tree(second)  # one of the two nodes is lost
        first.wait(timeout=400)
    finally:
        for agent in (first, second):
            if agent.poll() is None:
                kill_tree(agent)
    assert first.returncode == 0, Path(first.stderr_path).read_text()[-4000:]

    result = summary(out)
    assert result["world_size"] == 1 and result["ims_per_batch"] == 2
    assert result["resumed_from"]["world_size"] == 2  # resumed without --resume
    assert result["start_iter"] * 2 == result["resumed_from"]["images_seen"]
    assert result["images_seen"] == 40 * 2  # the schedule's, as written
    one_gpu = tiny_cfg(out, ims_per_batch=2, max_iter=40)
    one_gpu.SOLVER.merge_from_list(
        ["REFERENCE_WORLD_SIZE", 1, "BASE_LR", 0.01, "STEPS", (20, 32), "WARMUP_ITERS", 2]
    )
    assert result["final_lr"] == pytest.approx(scheduled_lrs(plan_scaling(one_gpu, 1).cfg)[-1])
    assert (
        "torchrun restarted the worker group (restart 1, world size 1)"
        in (out / "log.txt").read_text()
    )


def test_a_torchrun_restart_is_told_by_its_count_or_by_this_jobs_saved_plan(tmp_path, monkeypatch):
    args = argparse.Namespace(resume=False)
    out = tmp_path / "out"
    out.mkdir()
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    assert not resume_requested(args, str(out))
    assert resume_requested(argparse.Namespace(resume=True), str(out))

    for name, value in zip(TORCHRUN_ENV, ("0", "2", "0", "127.0.0.1", "29500"), strict=True):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")
    assert not resume_requested(args, str(out))  # a first start
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert resume_requested(args, str(out))  # after a failure
    # A change of membership (not counted by torchrun): OUTPUT_DIR's plan is this job's.
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    (out / PLAN_FILE).write_text(json.dumps({"torchelastic_run_id": "job-7"}))
    assert resume_requested(args, str(out))
    (out / PLAN_FILE).write_text(json.dumps({"torchelastic_run_id": "job-6"}))
    assert not resume_requested(args, str(out))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun's default: every job's id
    (out / PLAN_FILE).write_text(json.dumps({"torchelastic_run_id": "none"}))
    assert not resume_requested(args, str(out))


@pytest.mark.slow
def test_torchrun_single_agent_restarts_after_each_killed_worker_and_ends_as_uninterrupted(
    tmp_path,
):
    # Written for 1 GPU x 2 images: 24 steps (48 images); on 2 workers, 12 steps of 4 images and
    # a checkpoint every 2 steps (after steps 1, 3, 5, ...).
    config, env = tiny_run_setup(tmp_path, max_iter=24, CHECKPOINT_PERIOD=4, STEPS=(12, 20))
    out = tmp_path / "out"
    # Attempt 0: rank 1 killed in step 5 (last checkpoint: step 3); attempt 1 resumes at step 4
    # and rank 0 is killed in its third step, step 6 (last checkpoint: step 5).
    env["TINY_RUN_FAULT"] = "1:5:kill@0,0:2:kill@1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node=2", "--max-restarts=2", "--monitor-interval=0.5"]
    command += [str(TINY_RUN), "--config-file", str(config), "--dist-timeout", "60"]
    agent = popen_logged(command, env, tmp_path / "agent", start_new_session=True)
    try:
        agent.wait(timeout=240)
    except subprocess.TimeoutExpired:
        kill_tree(agent)
        pytest.fail("the restarted worker group hung:\n" + agent.stderr_path.read_text()[-3000:])
    assert agent.returncode == 0, agent.stderr_path.read_text()[-4000:]

    result = summary(out)
    # The last attempt started at step 6 (24 images): nothing lost but the step under way.
    assert (result["world_size"], result["images_seen"], result["start_iter"]) == (2, 48, 6)
    log = (out / "log.txt").read_text()
    for restart in (1, 2):
        assert f"torchrun restarted the worker group (restart {restart}, world size 2)" in log
    # Each load once (upstream detectron2 logs a load in two lines).
    loads = list(dict.fromkeys(re.findall(r"Loading from \S*(model_\d+\.pth)", log)))
    assert loads == ["model_0000003.pth", "model_0000005.pth"]
    reference = tiny_cfg(out, ims_per_batch=2, max_iter=24)
    reference.SOLVER.merge_from_list(
        ["REFERENCE_WORLD_SIZE", 1, "BASE_LR", 0.01, "STEPS", (12, 20), "WARMUP_ITERS", 2]
    )
    assert result["final_lr"] == pytest.approx(scheduled_lrs(plan_scaling(reference, 2).cfg)[-1])

"""Preemption: SIGTERM to the launcher of a spawned run, to one of its workers, or to the torchrun
agent stops every process of the run at one step boundary, after a checkpoint of that step; the
exit status is 143 and no process outlives the run; a resume continues at exactly that step's
images seen, at the same and at another process count, ending on the uninterrupted run's LR.
One run per OUTPUT_DIR: a live run's lock refuses another, a dead run's is taken over.

Real processes: tests/helpers/tiny_run.py, whose TINY_RUN_FAULT sends the signal at the step the
test chooses (no timing)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.processes import TINY_RUN, tiny_run_setup

from det_scaling import plan_scaling
from det_scaling.engine.output_lock import LOCK_FILE, output_dir_lock
from det_scaling.engine.preemption import PREEMPTED_EXIT_STATUS
from det_scaling.errors import ConfigError
from det_scaling.solver import scheduled_lrs
from det_scaling.testing.tiny import tiny_cfg

# Written for 1 GPU x 2 images: 24 steps (48 images), a checkpoint every 8, LR steps at 12, 20.
SOLVER = {"CHECKPOINT_PERIOD": 8, "STEPS": (12, 20)}
PREEMPTED = re.compile(
    r"preempted at iteration (\d+), images seen (\d+), checkpoint (\S+model_(\d+)\.pth)"
)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in {"Z", "X"}


def run(command: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def preempted_run(tmp_path: Path, fault: str, launcher: list[str]) -> tuple[dict, Path, dict]:
    """Runs the tiny config with ``fault``; checks the run stopped for a preemption and that none
    of its processes is left. Returns the preemption (iteration, images seen, checkpoint), the
    config and the environment."""
    config, env = tiny_run_setup(tmp_path, max_iter=24, **SOLVER)
    progress = tmp_path / "progress.txt"
    env.update(TINY_RUN_FAULT=fault, TINY_RUN_PROGRESS=str(progress))
    result = run([*launcher, "--config-file", str(config)], env)
    log = result.stdout + result.stderr
    assert result.returncode == PREEMPTED_EXIT_STATUS, log[-4000:]
    pids = {int(line.split()[3]) for line in progress.read_text().splitlines()}
    assert pids and not [pid for pid in pids if alive(pid)]
    match = PREEMPTED.search(log)
    assert match, log[-4000:]
    iteration, images, checkpoint, number = match.groups()
    assert int(number) == int(iteration) and Path(checkpoint).is_file()
    out = tmp_path / "out"
    assert (out / "last_checkpoint").read_text() == Path(checkpoint).name
    assert not (out / "summary.json").exists()
    return {"iteration": int(iteration), "images": int(images)}, config, env


def uninterrupted_lrs(world_size: int, first: int) -> list[float]:
    """The LR of each step from ``first`` on of the run without a stop, on ``world_size``
    processes."""
    reference = tiny_cfg(Path("unused"), ims_per_batch=2, max_iter=24)
    reference.SOLVER.merge_from_list(
        ["REFERENCE_WORLD_SIZE", 1, "BASE_LR", 0.01, "STEPS", (12, 20), "WARMUP_ITERS", 2]
    )
    return scheduled_lrs(plan_scaling(reference, world_size).cfg)[first:]


def step_lrs(path: Path) -> list[float]:
    """The LR of each step a run took, as tiny_run.py records them (TINY_RUN_LRS)."""
    return [float(line.split()[2]) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_every_process_at_a_step_and_resume_loses_nothing(tmp_path):
    spawn = [sys.executable, str(TINY_RUN), "--num-gpus", "2"]
    # Rank 0 sends SIGTERM to its parent, the launcher, in step 5; the launcher passes it on.
    stop, config, env = preempted_run(tmp_path, "0:5:term-parent", spawn)
    out = tmp_path / "out"
    # Stopped at the end of step 5 (4 images a step on 2 processes): 6 steps done.
    assert (stop["iteration"], stop["images"]) == (5, 24)
    shutil.copytree(out, tmp_path / "out_one")
    env["TINY_RUN_FAULT"] = ""

    resume = [sys.executable, str(TINY_RUN), "--config-file", str(config), "--resume"]
    env["TINY_RUN_LRS"] = str(tmp_path / "lrs_two.txt")
    result = run([*resume, "--num-gpus", "2"], env)
    assert result.returncode == 0, result.stderr[-4000:]
    same = json.loads((out / "summary.json").read_text())
    assert same["start_iter"] == 6  # 24 images, in steps of 4
    assert same["images_seen"] == 48
    assert step_lrs(tmp_path / "lrs_two.txt") == pytest.approx(uninterrupted_lrs(2, first=6))

    one_out = tmp_path / "out_one"
    env["TINY_RUN_LRS"] = str(tmp_path / "lrs_one.txt")
    result = run([*resume, "--num-gpus", "1", "OUTPUT_DIR", str(one_out)], env)
    assert result.returncode == 0, result.stderr[-4000:]
    one = json.loads((one_out / "summary.json").read_text())
    assert one["world_size"] == 1 and one["start_iter"] * 2 == 24  # the same images, steps of 2
    assert one["images_seen"] == 48
    assert step_lrs(tmp_path / "lrs_one.txt") == pytest.approx(uninterrupted_lrs(1, first=12))


@pytest.mark.slow
def test_sigterm_to_one_worker_stops_both_at_the_same_step(tmp_path):
    spawn = [sys.executable, str(TINY_RUN), "--num-gpus", "2"]
    stop, _, _ = preempted_run(tmp_path, "1:3:term", spawn)
    assert (stop["iteration"], stop["images"]) == (3, 16)


@pytest.mark.slow
def test_sigterm_to_the_torchrun_agent_stops_its_workers_with_a_checkpoint(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    torchrun += ["--nproc-per-node=2", "--max-restarts=1", "--monitor-interval=0.5", str(TINY_RUN)]
    # Rank 1's parent is the agent: torchrun passes SIGTERM on to the workers and exits.
    config, env = tiny_run_setup(tmp_path, max_iter=24, **SOLVER)
    progress = tmp_path / "progress.txt"
    env.update(TINY_RUN_FAULT="1:4:term-parent", TINY_RUN_PROGRESS=str(progress))
    result = run([*torchrun, "--config-file", str(config)], env)
    log = result.stdout + result.stderr
    assert result.returncode != 0, log[-4000:]  # the agent was ended by a signal
    pids = {int(line.split()[3]) for line in progress.read_text().splitlines()}
    assert not [pid for pid in pids if alive(pid)]
    match = PREEMPTED.search(log)
    assert match and Path(match.group(3)).is_file(), log[-4000:]
    assert int(match.group(1)) >= 4


def test_a_live_runs_lock_refuses_another_run_and_a_dead_runs_is_taken_over(tmp_path, caplog):
    out = tmp_path / "out"
    with output_dir_lock(str(out)):
        holder = json.loads((out / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid()
        refused = pytest.raises(
            ConfigError, match=rf"OUTPUT_DIR {out}: a run is using it \(process"
        )
        with refused, output_dir_lock(str(out)):
            pass
    assert not (out / LOCK_FILE).exists()  # released

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                           capture_output=True, check=True)  # fmt: skip
    dead = {"host": holder["host"], "pid": int(ended.stdout), "since": "earlier"}
    (out / LOCK_FILE).write_text(json.dumps(dead))
    with caplog.at_level(logging.WARNING), output_dir_lock(str(out)):
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"from a run that ended (process {dead['pid']}" in caplog.text
    (out / LOCK_FILE).write_text(json.dumps({**dead, "host": "another-host"}))
    with pytest.raises(ConfigError, match="on another-host"), output_dir_lock(str(out)):
        pass

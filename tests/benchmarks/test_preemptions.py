"""benchmarks/preemptions.py's plumbing: the seeded plan, the verdict read from a run's logs and
files, and the end of a hung run's whole process tree. The benchmark itself runs the trainings."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

TORCHRUN_SUMMARY = """\
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
Failures:
[1]:
  time      : 2026-12-07_10:08:17
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : {one} (pid: 6253)
  error_file: <N/A>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-07_10:08:17
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : {zero} (pid: 6252)
"""


@pytest.fixture(scope="module")
def bench():
    # benchmarks/ is not a package: load the script as a module (its main() does not run), with
    # its folder on the path as when it runs (it imports benchmarks/faults.py).
    folder = REPO / "benchmarks"
    spec = importlib.util.spec_from_file_location("preemptions_bench", folder / "preemptions.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    sys.path.insert(0, str(folder))
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(folder))
        del sys.modules[spec.name]
        sys.modules.pop("faults", None)


def stopped_at(out: Path, iteration: int) -> str:
    """The files and log line of a run preempted at ``iteration``."""
    out.mkdir()
    name = f"model_{iteration:07d}.pth"
    (out / name).write_bytes(b"weights")
    (out / "last_checkpoint").write_text(name)
    return f"preempted at iteration {iteration}, images seen 8, checkpoint {out / name}\n"


def test_the_plan_is_seeded_and_stops_before_the_last_step(bench):
    runs = bench.plan(0, {"single": 4, "launcher": 30, "torchrun": 5})
    assert runs == bench.plan(0, {"single": 4, "launcher": 30, "torchrun": 5})
    assert runs != bench.plan(1, {"single": 4, "launcher": 30, "torchrun": 5})
    assert [r.mode for r in runs[:3]] == ["single", "launcher", "torchrun"]  # interleaved
    by_mode = {mode: [r for r in runs if r.mode == mode] for mode in bench.MODES}
    assert [len(by_mode[mode]) for mode in bench.MODES] == [4, 30, 5]
    assert {(r.target, r.rank) for r in by_mode["single"]} == {("process", 0)}
    assert {r.target for r in by_mode["launcher"]} == {"launcher", "worker"}
    assert {r.target for r in by_mode["torchrun"]} == {"worker"}
    for run in runs:
        steps = bench.MAX_ITER // (1 if run.mode == "single" else 2)
        assert 1 <= run.step < steps - 2
    launcher = next(r for r in by_mode["launcher"] if r.target == "launcher")
    assert launcher.fault == f"{launcher.rank}:{launcher.step}:term-parent"


def test_torchrun_exiting_1_with_both_workers_at_143_is_clean(bench, tmp_path):
    run = bench.Preemption("torchrun", 0, "worker", 1, 5)
    logs = stopped_at(tmp_path / "out", 5) + TORCHRUN_SUMMARY.format(one=143, zero=143)
    result = bench.outcome(run, 1, logs, tmp_path / "out")
    assert result["worker_exitcodes"] == {1: 143, 0: 143}
    assert (result["verdict"], result["exited_143"], result["checkpoint"]) == ("clean", True, True)


def test_an_aborted_worker_is_an_abort(bench, tmp_path):
    run = bench.Preemption("torchrun", 0, "worker", 1, 5)
    logs = stopped_at(tmp_path / "out", 5) + TORCHRUN_SUMMARY.format(one=-6, zero=143)
    assert bench.outcome(run, 1, logs, tmp_path / "out")["verdict"] == "abort"

    launched = bench.Preemption("launcher", 0, "worker", 1, 5)
    logs = stopped_at(tmp_path / "out2", 5) + "terminate called without an active exception\n"
    result = bench.outcome(launched, 1, logs, tmp_path / "out2")
    assert result["verdict"] == "abort"
    assert result["abort_lines"] == ["terminate called without an active exception"]


def test_a_stop_without_its_checkpoint_or_at_another_step_is_not_clean(bench, tmp_path):
    run = bench.Preemption("single", 0, "process", 0, 5)
    logs = stopped_at(tmp_path / "out", 5)
    assert bench.outcome(run, 143, logs, tmp_path / "out")["verdict"] == "clean"
    assert bench.outcome(run, 1, logs, tmp_path / "out")["verdict"] == "other"
    assert bench.outcome(run, "hang", logs, tmp_path / "out")["verdict"] == "hang"
    (tmp_path / "out" / "last_checkpoint").write_text("model_0000003.pth")
    assert bench.outcome(run, 143, logs, tmp_path / "out")["verdict"] == "other"

    late = stopped_at(tmp_path / "out2", 6)
    assert bench.outcome(run, 143, late, tmp_path / "out2")["verdict"] == "other"
    # A signal passed on by the launcher may reach the workers steps later, never earlier.
    launched = bench.Preemption("launcher", 0, "launcher", 0, 5)
    assert bench.outcome(launched, 143, late, tmp_path / "out2")["verdict"] == "clean"
    early = bench.Preemption("launcher", 0, "launcher", 0, 7)
    assert bench.outcome(early, 143, late, tmp_path / "out2")["verdict"] == "other"


def test_a_hung_runs_tree_is_killed_with_the_processes_that_left_its_session(bench):
    # The child starts a session of its own, as torchrun's workers do, and tells its pid.
    child = "import os, sys; os.setsid(); print(os.getpid(), flush=True); sys.stdin.read()"
    parent = (
        "import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', sys.argv[1]], "
        "stdout=subprocess.PIPE, text=True); print(c.stdout.readline(), end='', flush=True); "
        "sys.stdin.read()"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", parent, child], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    pid = int(process.stdout.readline())
    ended = os.pidfd_open(pid)
    try:
        sys.modules["faults"].kill_tree(process.pid)  # the helper preemptions.py shares
        assert process.wait(timeout=30) == -signal.SIGKILL
        assert select.select([ended], [], [], 30)[0] == [ended]  # readable once the child ended
    finally:
        os.close(ended)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

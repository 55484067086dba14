"""A failure on one rank, told once: a fault injected on rank 1 (an exception, or a NaN loss) ends
every rank within seconds, and the user reads one line naming the rank and the cause, the full
traceback being in that rank's log. Real runs of tools/train.py's command on gloo processes."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from helpers.processes import TINY_RUN, retry_on_port_clash, tiny_run_setup

from det_scaling.cli import parse_args
from det_scaling.engine.failures import (
    ConsequenceOfAnotherRank,
    RankFailedError,
    RankFailure,
    is_consequence,
    read_failures,
    record_failure,
    root_cause,
)
from det_scaling.engine.launch import launch

REPO = Path(__file__).resolve().parents[2]
GLOO_PEER_GONE = (
    "[../third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
    "[127.0.0.1]:4002"
)


def told_once(result: subprocess.CompletedProcess, cause: str) -> str:
    """The one error line of a run that failed with ``cause``; checks it is told once."""
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("det-scaling train:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert (result.stdout + result.stderr).count(cause) <= 1
    return errors[0]


# ---- real runs: 2 gloo processes, a fault on rank 1 ----
@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "cause"),
    [
        ("raise", "RuntimeError: injected fault on rank 1 at step 2"),
        ("nan", "FloatingPointError: Loss became infinite or NaN at iteration=2 on rank 1!"),
        # A ValueError in the step is a bug, not a bad input: a failure with its traceback.
        ("value", "ValueError: injected fault on rank 1 at step 2"),
    ],
)
def test_a_fault_on_rank_1_ends_the_run_with_one_line_naming_it(tmp_path, kind, cause):
    config, env = tiny_run_setup(tmp_path)
    env["TINY_RUN_FAULT"] = f"1:2:{kind}"
    # A rank left waiting for its dead peer would hang until --dist-timeout, past the subprocess
    # timeout: the run must end by itself, long before.
    command = [sys.executable, str(TINY_RUN), "--config-file", str(config), "--num-gpus", "2"]
    result = subprocess.run(
        [*command, "--dist-timeout", "20m"], env=env, capture_output=True, text=True, timeout=400
    )
    line = told_once(result, cause)
    log = tmp_path / "out" / "log.txt.rank1"
    assert line.startswith(f"det-scaling train: error: rank 1 of 2 failed: {cause}")
    assert line.endswith(f"(full traceback in {log})")
    text = log.read_text()
    assert "rank 1 of 2 failed:\nTraceback (most recent call last):" in text
    assert cause.split("!")[0] in text


@pytest.mark.slow
def test_a_config_error_in_a_process_of_the_run_is_one_line_and_exit_status_2(tmp_path):
    config, env = tiny_run_setup(tmp_path)
    env["TINY_RUN_FAULT"] = "1:2:config"
    command = [sys.executable, str(TINY_RUN), "--config-file", str(config), "--num-gpus", "2"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert errors == ["det-scaling train: error: injected fault on rank 1 at step 2"]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_fault_on_another_machine_stops_this_one_which_says_so(tmp_path):
    """Two launches on loopback (2 machines of 1 process): machine 1's rank fails; machine 0's
    stops on its own within seconds, saying the cause is elsewhere."""
    config, env = tiny_run_setup(tmp_path)
    env["TINY_RUN_FAULT"] = "1:2:raise"
    common = [sys.executable, str(TINY_RUN), "--config-file", str(config), "--num-machines", "2"]

    def two_machines(port: int) -> list[subprocess.CompletedProcess]:
        url = f"tcp://127.0.0.1:{port}"
        machines = [
            subprocess.Popen(
                [*common, "--dist-url", url, "--dist-timeout", "20m", "--machine-rank", str(rank)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for rank in (0, 1)
        ]
        results = []
        for machine in machines:
            stdout, stderr = machine.communicate(timeout=400)
            done = subprocess.CompletedProcess(machine.args, machine.returncode, stdout, stderr)
            results.append(done)
        return results

    results = retry_on_port_clash(two_machines, lambda rs: "".join(r.stderr for r in rs))
    cause = "RuntimeError: injected fault on rank 1 at step 2"
    assert told_once(results[1], cause).startswith(
        f"det-scaling train: error: rank 1 of 2 failed: {cause}"
    )
    line = told_once(results[0], "Connection closed by peer")
    assert line.startswith("det-scaling train: error: rank 0 of 2 stopped because another rank")
    assert "Connection closed by peer" in line and "the cause is in that rank's message" in line


# ---- the pieces ----
def test_the_root_cause_is_the_earliest_failure_that_is_not_a_consequence():
    lost_peer = RankFailure(0, 4, time=1.0, cause=GLOO_PEER_GONE, consequence=True)
    first = RankFailure(3, 4, time=2.0, cause="RuntimeError: out of memory")
    later = RankFailure(1, 4, time=3.0, cause="ValueError: bad box")
    assert root_cause([later, lost_peer, first]) is first
    assert root_cause([lost_peer]) is lost_peer
    assert first.describe() == "rank 3 of 4 failed: RuntimeError: out of memory"
    assert RankFailure(0, 1, 0.0, "KeyError: 'x'", log_file="o/log.txt").describe() == (
        "the run failed: KeyError: 'x' (full traceback in o/log.txt)"
    )


def test_lost_peers_and_marked_errors_are_consequences():
    assert is_consequence(RuntimeError(GLOO_PEER_GONE))
    assert is_consequence(RuntimeError("NCCL communicator was aborted on rank 2."))
    assert not is_consequence(RuntimeError("CUDA out of memory"))

    class Marked(ValueError, ConsequenceOfAnotherRank):
        pass

    assert is_consequence(Marked("x"))


def test_a_recorded_failure_goes_to_the_ranks_log_and_to_the_launcher(tmp_path):
    records, logs = tmp_path / "records", tmp_path / "out"
    records.mkdir()
    try:
        raise ValueError("bad box\non two lines")
    except ValueError as error:
        failure = record_failure(error, 2, 4, str(records), str(logs))
    assert failure.cause == "ValueError: bad box on two lines"
    assert failure.log_file == str(logs / "log.txt.rank2") and failure.traceback == ""
    assert "rank 2 of 4 failed:\nTraceback" in (logs / "log.txt.rank2").read_text()
    assert read_failures(str(records)) == [failure]
    assert json.loads((records / "rank2.json").read_text())["rank"] == 2


def test_one_process_with_a_log_dir_fails_as_a_run_does(tmp_path):
    def fails() -> None:
        raise KeyError("missing")

    with pytest.raises(RankFailedError) as error:
        launch(fails, 1, log_dir=str(tmp_path))
    assert str(error.value) == (
        f"the run failed: KeyError: 'missing' (full traceback in {tmp_path / 'log.txt'})"
    )
    with pytest.raises(KeyError):  # without a log directory: as detectron2's launch
        launch(fails, 1)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("5m", 300), ("1.5h", 5400), ("0.5", 0.5)]
)
def test_dist_timeout_takes_seconds_or_units(text, seconds):
    args = parse_args(["train", "--config-file", "x.yaml", "--dist-timeout", text])
    assert args.dist_timeout == timedelta(seconds=seconds)
    assert parse_args(["train", "--config-file", "x.yaml"]).dist_timeout == timedelta(minutes=30)

"""The per-test timeout: a test whose child process hangs fails within its timeout, reporting
"Timeout" with the test's stack and the child's (tests/helpers/stacks_plugin.py), and the session
goes on to the next test. Shown on a throwaway test file run by pytest in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

HUNG = """
import subprocess
import sys


def test_child_hangs():
    subprocess.run([sys.executable, "-c", "import hung_child; hung_child.wait_forever()"])


def test_after_it():
    pass
"""

CHILD = """
import time

import helpers  # registers the stack dump, as every process of a test does


def wait_forever():
    while True:
        time.sleep(1)
"""


def test_a_hung_child_fails_its_test_at_the_timeout_with_the_stacks(tmp_path):
    (tmp_path / "test_hung.py").write_text(textwrap.dedent(HUNG))
    (tmp_path / "hung_child.py").write_text(textwrap.dedent(CHILD))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO / "tests")]),
    }
    env.pop("DET_SCALING_TEST_STACKS", None)
    command = [sys.executable, "-m", "pytest", "-p", "helpers.stacks_plugin", "-p", "timeout"]
    command += ["-p", "no:cacheprovider", "--timeout", "4", "--timeout-method", "signal"]
    command += ["-q", "-rf", str(tmp_path / "test_hung.py")]
    start = time.monotonic()
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert time.monotonic() - start < 60
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 failed, 1 passed" in output, output
    assert "Failed: Timeout (>4.0s) from pytest-timeout." in output, output
    assert "stacks of the test's processes at its timeout" in output, output
    assert 'hung_child.py", line 9 in wait_forever' in output, output  # the child's stack

"""The stacks of a test's processes when pytest-timeout ends the test.

Every process that imports :mod:`helpers` (the test process, the gloo workers ``launch`` spawns
for a test module's function, ``tests/helpers/tiny_run.py`` and its workers) registers
``faulthandler`` on SIGUSR2, writing to a file of its own under ``$DET_SCALING_TEST_STACKS``.
Shortly before a test's timeout, :mod:`helpers.stacks_plugin` sends SIGUSR2 to each such
process below the test process (only those: SIGUSR2 would end any other) and, when the test then
fails with pytest-timeout's "Timeout", adds their stacks to its report (the test's own stack is
pytest-timeout's).
"""

from __future__ import annotations

import faulthandler
import os
import signal
from pathlib import Path
from typing import IO

STACKS_DIR = "DET_SCALING_TEST_STACKS"
_stack_file: IO[str] | None = None


def register_stack_dump() -> None:
    """In this process: SIGUSR2 writes every thread's stack to ``$DET_SCALING_TEST_STACKS/PID``."""
    global _stack_file
    directory = os.environ.get(STACKS_DIR)
    if not directory or _stack_file is not None or not Path(directory).is_dir():
        return
    _stack_file = open(Path(directory) / str(os.getpid()), "w")  # noqa: SIM115 (kept open)
    faulthandler.register(signal.SIGUSR2, file=_stack_file, all_threads=True, chain=False)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (including those in sessions of their own)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *descendants(child)]
    return found

"""A pytest plugin: when pytest-timeout ends a test, its report also holds the stacks of the
processes the test started (see :mod:`helpers.stacks`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

from helpers.stacks import STACKS_DIR, descendants, register_stack_dump


def _timeout(item: pytest.Item) -> float:
    """The test's timeout as pytest-timeout resolves it (marker, then --timeout, then the ini)."""
    marker = item.get_closest_marker("timeout")
    if marker is not None and (marker.args or "timeout" in marker.kwargs):
        return float(marker.args[0] if marker.args else marker.kwargs["timeout"])
    option = item.config.getoption("timeout", None)
    if option is not None:
        return float(option)
    return float(item.config.getini("timeout") or 0)


def _dump_children(directory: Path, into: list[str]) -> None:
    registered = [pid for pid in descendants(os.getpid()) if (directory / str(pid)).exists()]
    for pid in registered:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR2)
    time.sleep(0.5)  # faulthandler writes from the signal handler, at once
    for pid in registered:
        text = (directory / str(pid)).read_text().strip()
        into.append(f"---- process {pid} ----\n{text or '(no stack written)'}")


_created: list[str] = []  # the folder this session made, removed when it ends


def pytest_configure(config: pytest.Config) -> None:
    if STACKS_DIR not in os.environ:
        os.environ[STACKS_DIR] = tempfile.mkdtemp(prefix="det-scaling-stacks-")
        _created.append(os.environ[STACKS_DIR])
    register_stack_dump()


def pytest_unconfigure(config: pytest.Config) -> None:
    for directory in _created:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    timeout = _timeout(item)
    stacks: list[str] = []
    timer = None
    if timeout > 0:
        margin = min(2.0, timeout / 4)
        directory = Path(os.environ[STACKS_DIR])
        timer = threading.Timer(timeout - margin, _dump_children, (directory, stacks))
        timer.daemon = True
        timer.start()
    item.stash[_STACKS] = stacks
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()


_STACKS = pytest.StashKey[list]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    stacks = item.stash.get(_STACKS, None)
    if call.when == "call" and report.failed and stacks:
        report.sections.append(("stacks of the test's processes at its timeout", "\n".join(stacks)))

"""det-scaling's pytest plugin as pytest loads it: the ``config_diff`` fixture, its option and its
summary, without importing det-scaling (hence torch and detectron2) until a test asks for the
fixture. Outside the ``det_scaling`` package because importing any module inside it imports them.

The entry point registers this module under the name ``det_scaling.testing.plugin``, where the
fixture's code lives (:class:`det_scaling.testing.plugin.ConfigDiff`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from det_scaling.testing.plugin import ConfigDiff

UPDATE_OPTION = "--det-scaling-update"
UPDATE_VARIABLE = "DET_SCALING_UPDATE"

REWRITTEN = pytest.StashKey[list]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("det-scaling", "config-diff golden files (det_scaling.testing)")
    group.addoption(
        UPDATE_OPTION,
        action="store_true",
        default=False,
        help="write the config_diff golden files that are missing or differ, instead of failing "
        f"(also: {UPDATE_VARIABLE}=1)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[REWRITTEN] = []


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    rewritten = config.stash.get(REWRITTEN, [])
    if rewritten:
        terminalreporter.write_sep("-", "det-scaling: golden files written (review with git diff)")
        for path in rewritten:
            terminalreporter.write_line(path)


def update_requested(config: pytest.Config) -> bool:
    variable = os.environ.get(UPDATE_VARIABLE, "").strip().lower()
    return config.getoption(UPDATE_OPTION) or variable not in ("", "0", "false", "no")


@pytest.fixture
def config_diff(request: pytest.FixtureRequest) -> ConfigDiff:
    """``config_diff.check(config, num_gpus=[1, 2, 4, 8])``: the config's plan table and every
    changed key with its reason, compared with the test's golden file."""
    from det_scaling.testing.plugin import ConfigDiff

    return ConfigDiff(request)

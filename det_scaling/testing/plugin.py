"""The pytest plugin: a ``config_diff`` fixture that keeps a config's scaled values in a golden
file and fails, with why and a short unified diff, when they change.

::

    def test_my_rcnn_scales(config_diff):
        config_diff.check("configs/my_rcnn.yaml", num_gpus=[1, 2, 4, 8])

Installing det-scaling registers it (the ``pytest11`` entry point, named after this module, so
that ``-p det_scaling.testing.plugin`` as well registers it once). Loading it imports neither
torch nor detectron2: :mod:`.config_diff` does, when a test first asks for the fixture.
``--det-scaling-update`` (or ``DET_SCALING_UPDATE=1``) writes the golden files that are missing or
differ, and lists them at the end of the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from det_scaling.testing.update import REWRITTEN, UPDATE_OPTION, UPDATE_VARIABLE

if TYPE_CHECKING:
    from det_scaling.testing.config_diff import ConfigDiff


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


@pytest.fixture
def config_diff(request: pytest.FixtureRequest) -> ConfigDiff:
    """``config_diff.check(config, num_gpus=[1, 2, 4, 8])``: the config's plan table and every
    changed key with its reason, compared with the test's golden file."""
    from det_scaling.testing.config_diff import ConfigDiff

    return ConfigDiff(request)

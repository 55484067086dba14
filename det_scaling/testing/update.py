"""The switch that has the ``config_diff`` fixture write its golden files instead of comparing:
an option of pytest's and an environment variable, and the list of the files it wrote."""

from __future__ import annotations

import os

import pytest

__all__ = ["ACCEPT", "REWRITTEN", "UPDATE_OPTION", "UPDATE_VARIABLE", "update_requested"]

UPDATE_OPTION = "--det-scaling-update"
UPDATE_VARIABLE = "DET_SCALING_UPDATE"
ACCEPT = f"pytest {UPDATE_OPTION} (or {UPDATE_VARIABLE}=1), then review the change with git diff"

# The golden files this pytest run wrote, for its terminal summary.
REWRITTEN = pytest.StashKey[list]()


def update_requested(config: pytest.Config) -> bool:
    variable = os.environ.get(UPDATE_VARIABLE, "").strip().lower()
    return config.getoption(UPDATE_OPTION) or variable not in ("", "0", "false", "no")

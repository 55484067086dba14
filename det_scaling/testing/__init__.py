"""Config-diff goldens for users' test suites: what a config gives at each GPU count, kept as a
text file and compared on every run.

:mod:`.golden` builds the text (the plan table, every changed key with its reason, and where each
value is written), compares it with a file and explains a difference; ``diff --check`` and
``plan --check`` use it, and so does the pytest plugin :mod:`.plugin` (its ``config_diff``
fixture, :mod:`.config_diff`), which installing det-scaling registers (entry point ``pytest11``).
The names below load :mod:`.golden` (hence torch and detectron2) when first used, so that pytest
can load the plugin cheaply. :mod:`.tiny` is a detectron2 model small enough for tests of the
training plumbing (the project's tests and benchmarks share it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "Golden",
    "compare_golden",
    "config_golden",
    "diff_golden",
    "plan_golden",
    "write_golden",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'det_scaling.testing' has no attribute {name!r}")
    return getattr(importlib.import_module("det_scaling.testing.golden"), name)


if TYPE_CHECKING:
    from det_scaling.testing.golden import (
        Golden,
        compare_golden,
        config_golden,
        diff_golden,
        plan_golden,
        write_golden,
    )

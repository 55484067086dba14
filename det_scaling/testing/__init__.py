"""Config-diff goldens for users' test suites: what a config gives at each GPU count, kept as a
text file and compared on every run.

:mod:`.golden` builds the text (the plan table, every changed key with its reason, and where each
value is written), compares it with a file and explains a difference; ``diff --check`` and
``plan --check`` use it, and so does the pytest plugin :mod:`.plugin` (its ``config_diff``
fixture), which installing det-scaling registers (entry point ``pytest11``).
"""

from det_scaling.testing.golden import (
    Golden,
    compare_golden,
    config_golden,
    diff_golden,
    plan_golden,
    write_golden,
)

__all__ = [
    "Golden",
    "compare_golden",
    "config_golden",
    "diff_golden",
    "plan_golden",
    "write_golden",
]

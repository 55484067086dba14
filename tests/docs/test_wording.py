"""The project speaks of itself, not of its history: no issue numbers or work sessions in the
README, the docs, the code or the configs."""

from __future__ import annotations

import re

from helpers import REPO

PLACES = ("README.md", "docs", "det_scaling", "configs")
HISTORY = re.compile(r"issue [0-9]|session", re.IGNORECASE)


def test_no_issue_numbers_or_sessions() -> None:
    files = [REPO / "README.md"] + [
        path
        for place in PLACES[1:]
        for path in sorted((REPO / place).rglob("*"))
        if path.suffix in (".md", ".py", ".yaml")
    ]
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if HISTORY.search(line)
    ]
    assert found == []

"""The command line run in this process, and its output compared with golden files."""

from __future__ import annotations

import difflib
import os

import pytest

from det_scaling.cli import main
from helpers import REPO

GOLDEN = REPO / "tests" / "golden"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_matches_golden(text: str, name: str) -> None:
    """Compares with tests/golden/NAME; UPDATE_GOLDEN=1 rewrites it (review the git diff)."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    expected = path.read_text()
    if text != expected:
        delta = difflib.unified_diff(
            expected.splitlines(), text.splitlines(), str(path), "actual", lineterm=""
        )
        pytest.fail("output differs from the golden file:\n" + "\n".join(delta))

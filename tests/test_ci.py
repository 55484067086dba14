"""The CI entry point (.ci/run): without an upstream detectron2 snapshot, CI fails in one line (the
upstream parity tests cannot drop out unnoticed) and a developer's run skips the leg, saying so.
``make`` is replaced by a stub: only the script's own logic runs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_ci(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    bin_dir, vendor = tmp_path / "bin", tmp_path / "vendor"
    bin_dir.mkdir()
    vendor.mkdir()  # no detectron2-*.tar.gz in it
    make = bin_dir / "make"
    make.write_text('#!/bin/sh\necho "make $*"\necho "===== 3 passed in 0.01s ====="\n')
    make.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", DETECTRON2_VENDOR_DIR=str(vendor))
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        ["bash", str(REPO / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("ci", ["true", "1"])
def test_in_ci_a_missing_upstream_snapshot_fails_the_run_in_one_line(tmp_path, ci):
    result = run_ci(tmp_path, ci)
    assert result.returncode == 1, result.stdout + result.stderr
    failed = [line for line in result.stderr.splitlines() if "upstream leg: FAILED" in line]
    assert len(failed) == 1 and "no detectron2-*.tar.gz in" in failed[0], result.stderr
    assert "v0.6 leg: passed (pytest: 3 passed in 0.01s)" in result.stdout  # it still ran


@pytest.mark.parametrize("ci", [None, ""])
def test_outside_ci_a_missing_upstream_snapshot_skips_the_leg_saying_so(tmp_path, ci):
    result = run_ci(tmp_path, ci)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "upstream leg: skipped (CI is not set): no detectron2-*.tar.gz in" in result.stdout


def test_with_a_snapshot_the_upstream_leg_runs_at_once_in_a_copy_of_the_working_tree(tmp_path):
    bin_dir, vendor = tmp_path / "bin", tmp_path / "vendor"
    bin_dir.mkdir()
    vendor.mkdir()
    (vendor / "detectron2-0123abcd.tar.gz").write_bytes(b"")
    make = bin_dir / "make"
    # Each leg says where it runs, and waits until both have started: a leg that waits for the
    # other to end never sees it start, and the stub then fails.
    make.write_text(
        "#!/bin/sh\n"
        f'touch "{tmp_path}/started.$$"\n'
        f'for i in $(seq 100); do [ $(ls "{tmp_path}" | grep -c started) -ge 2 ] && break; '
        "sleep 0.1; done\n"
        f'[ $(ls "{tmp_path}" | grep -c started) -ge 2 ] || exit 3\n'
        'echo "make $* in $(pwd)"\n'
        "test -f .ci/run || exit 4\n"
        "git rev-parse --verify --quiet HEAD >/dev/null || exit 5\n"  # tests read the commit
        'echo "===== 3 passed in 0.01s ====="\n'
    )
    make.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", DETECTRON2_VENDOR_DIR=str(vendor))
    result = subprocess.run(
        ["bash", str(REPO / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "v0.6 leg: passed (pytest: 3 passed in 0.01s)" in result.stdout
    assert "upstream leg: passed (pytest: 3 passed in 0.01s)" in result.stdout
    upstream = next(line for line in result.stdout.splitlines() if "make test-upstream" in line)
    assert f"DETECTRON2_SOURCE={vendor}/detectron2-0123abcd.tar.gz" in upstream
    assert not upstream.endswith(f" in {REPO}")  # a copy, not this checkout
    v06 = next(line for line in result.stdout.splitlines() if line.startswith("make test "))
    assert v06.endswith(f" in {REPO}")

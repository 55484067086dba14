"""The fixture as a user's CI runs it: pytest in a subprocess, in a small repository of its own
(configs built on base files, a test module per config format using ``config_diff``). It passes;
an edited LR in a base file fails it with a diff naming the file and the key;
``--det-scaling-update`` accepts the change.

The subprocess imports this checkout's det_scaling (PYTHONPATH), and loads the plugin with
``-p det_scaling.testing.plugin``: an environment installed before the ``pytest11`` entry point
existed does not register it (one that has it skips the second registration of the same name).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO
from helpers.user_repo import (
    GOLDEN,
    LAZY_BASE,
    LAZY_CONFIG,
    TEST,
    YAML_BASE,
    YAML_CONFIG,
    change_lr,
    write_user_repo,
)

from det_scaling.testing import compare_golden, write_golden
from det_scaling.testing.config_diff import fixture_golden

GPU_COUNTS = [1, 2, 4, 8]
# The LazyConfig's test module beside the YAML one of write_user_repo, and its golden file (the
# fixture's name for it: module, then test).
LAZY_TEST_MODULE = "tests/test_lazy_configs.py"
LAZY_TEST = TEST.replace("test_my_rcnn_scales", "test_my_lazy_rcnn_scales")
LAZY_GOLDEN = "tests/config_diff/test_lazy_configs.test_my_lazy_rcnn_scales.txt"
# Per format: its config, the base file setting its LR, the key, its golden file and test.
FORMATS = {
    "yaml": (YAML_CONFIG, YAML_BASE, "SOLVER.BASE_LR", GOLDEN, "test_my_rcnn_scales"),
    "lazyconfig": (LAZY_CONFIG, LAZY_BASE, "optimizer.lr", LAZY_GOLDEN, "test_my_lazy_rcnn_scales"),
}


def run_pytest(repo, *args: str, load: bool = True) -> subprocess.CompletedProcess:
    """pytest in ``repo``; ``load``: with ``-p det_scaling.testing.plugin``, else as installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for name in ("DET_SCALING_UPDATE", "PYTEST_ADDOPTS"):
        env.pop(name, None)
    command = [sys.executable, "-m", "pytest", *(["-p", "det_scaling.testing.plugin"] * load)]
    return subprocess.run(
        [*command, "-p", "no:cacheprovider", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def failure_sections(output: str) -> dict[str, str]:
    """pytest's report of each failed test, by test name."""
    parts = re.split(r"^_{3,} (test_\w+) _{3,}$", output, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.fixture(scope="module")
def user_ci(tmp_path_factory) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    """The user's repository, with a test of each format, through three pytest runs: as written
    (golden files as --det-scaling-update writes them), with the LR of both base files edited,
    then with --det-scaling-update."""
    repo = write_user_repo(tmp_path_factory.mktemp("user") / "repo", YAML_CONFIG)
    (repo / LAZY_TEST_MODULE).write_text(LAZY_TEST.format(config=LAZY_CONFIG))
    (repo / GOLDEN).parent.mkdir()
    with contextlib.chdir(repo):  # golden files name configs relative to the repository
        for config, _, _, golden, _ in FORMATS.values():
            write_golden(golden, fixture_golden(config, GPU_COUNTS))
    runs = {"passed": run_pytest(repo)}
    for _, base, _, _, _ in FORMATS.values():
        change_lr(repo, base, "0.04")
    runs["failed"] = run_pytest(repo)
    runs["updated"] = run_pytest(repo, "--det-scaling-update")
    return repo, runs


@pytest.mark.slow
@pytest.mark.parametrize("config_format", list(FORMATS))
def test_passes_then_fails_on_an_edited_base_file_then_passes_once_updated(
    user_ci, monkeypatch, config_format
):
    repo, runs = user_ci
    config, base, key, golden, test_name = FORMATS[config_format]
    monkeypatch.chdir(repo)

    passed = runs["passed"]
    assert passed.returncode == 0, passed.stdout[-3000:] + passed.stderr[-3000:]
    assert "2 passed" in passed.stdout

    failed = runs["failed"]
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]
    sections = failure_sections(failed.stdout)
    assert test_name in sections, failed.stdout[-3000:]
    out = sections[test_name]
    assert (
        f"{golden} differs from what {config} gives at 1, 2, 4, 8 GPUs; accept with: pytest "
        "--det-scaling-update" in out
    )
    assert "why: the config as written changed:" in out
    assert f"  {key}: 0.02 -> 0.04  (set in {base})" in out
    assert "and so did how it is scaled" not in out  # same rule, reference, toolkit
    # The unified diff: each hunk names its section; at 2 GPUs the LR is twice what it was.
    assert f"--- {golden}\n+++ now\n" in out
    hunk = re.search(r"^@@ [-+\d, ]+ @@ == diff at 2 GPUs\n(.*?)^(@@|==)", out, re.M | re.S)[1]
    assert f"-{key}: 0.02 -> 0.005  (linear rule" in hunk
    assert f"+{key}: 0.04 -> 0.01  (linear rule" in hunk
    assert "Traceback" not in out and "config_diff.check(" not in out  # the report, not our code

    updated = runs["updated"]
    assert updated.returncode == 0, updated.stdout[-3000:]
    assert "det-scaling: golden files written" in updated.stdout and golden in updated.stdout
    # What a run without the flag compares now matches.
    assert compare_golden(golden, fixture_golden(config, GPU_COUNTS)) is None
    assert f"#   {key}: 0.04  ({base})" in (repo / golden).read_text()


@pytest.mark.slow
def test_pytest_starts_without_torch_until_a_test_asks_for_the_fixture(tmp_path):
    """As installed (entry point, no -p): a suite that never uses config_diff never pays for
    importing torch and detectron2."""
    repo = write_user_repo(tmp_path / "repo", YAML_CONFIG)
    (repo / "tests" / "test_imports.py").write_text(
        "import sys\n\n\n"
        "def test_before_the_fixture():\n"
        "    assert 'torch' not in sys.modules and 'detectron2' not in sys.modules\n\n\n"
        "def test_the_fixture_loads_det_scaling(config_diff):\n"
        "    assert 'detectron2' in sys.modules\n"
    )
    run = run_pytest(repo, "tests/test_imports.py", load=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2 passed" in run.stdout

"""``diff --check`` and ``plan --check``: a config-diff test for CI. Exit status 0 when the golden
file holds what the command prints, 1 with why and a unified diff when not, 2 when it is missing;
``--update`` writes it. YAML and LazyConfig files, in a small repository of the user's."""

from __future__ import annotations

import pytest
from helpers.cli import run_cli
from helpers.user_repo import (
    LAZY_BASE,
    LAZY_CONFIG,
    YAML_BASE,
    YAML_CONFIG,
    change_lr,
    write_user_repo,
)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.chdir(write_user_repo(tmp_path))  # golden files name paths relative to it
    return tmp_path


@pytest.mark.parametrize(
    ("config", "base", "key"),
    [(YAML_CONFIG, YAML_BASE, "SOLVER.BASE_LR"), (LAZY_CONFIG, LAZY_BASE, "optimizer.lr")],
    ids=["yaml", "lazyconfig"],
)
def test_diff_check_exits_2_when_missing_0_when_equal_1_with_a_diff_when_not(
    capsys, repo, config, base, key
):
    command = ["diff", config, "--num-gpus", "2"]
    update = f"det-scaling diff {config} --num-gpus 2 --update expected.diff"

    code, out, err = run_cli(capsys, *command, "--check", "expected.diff")
    assert (code, out) == (2, "")
    assert err == f"det-scaling diff: error: expected.diff: no such file; write it with: {update}\n"

    assert run_cli(capsys, *command, "--update", "expected.diff")[:2] == (
        0,
        "det-scaling diff: wrote expected.diff\n",
    )
    written = (repo / "expected.diff").read_text()
    assert written.startswith(f"# det-scaling diff {config} --num-gpus 2\n")
    assert str(repo) not in written  # paths relative to the repository
    body = [line for line in written.splitlines() if not line.startswith("#")]
    assert body == run_cli(capsys, *command)[1].splitlines()  # what diff prints

    code, out, _ = run_cli(capsys, *command, "--check", "expected.diff")
    assert (code, out) == (0, "det-scaling diff: expected.diff matches\n")

    change_lr(repo, base, "0.04")
    code, out, err = run_cli(capsys, *command, "--check", "expected.diff")
    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert lines[0] == (
        f"det-scaling diff: expected.diff differs from what the config gives now; accept with: "
        f"{update}"
    )
    assert lines[1:3] == [
        "why: the config as written changed:",
        f"  {key}: 0.02 -> 0.04  (set in {base})",
    ]
    assert lines[3:5] == ["--- expected.diff", "+++ now"]
    assert f"-{key}: 0.02 -> 0.005  (linear rule: batch x0.25, LR x0.25)" in lines
    assert f"+{key}: 0.04 -> 0.01  (linear rule: batch x0.25, LR x0.25)" in lines

    assert run_cli(capsys, *command, "--update", "expected.diff")[1] == (
        "det-scaling diff: wrote expected.diff\n"
    )
    assert run_cli(capsys, *command, "--check", "expected.diff")[0] == 0
    assert run_cli(capsys, *command, "--update", "expected.diff")[1] == (
        "det-scaling diff: expected.diff is up to date\n"
    )


def test_plan_check_compares_the_table(capsys, repo):
    command = ["plan", YAML_CONFIG, "--num-gpus", "1", "8"]
    code, _, err = run_cli(capsys, *command, "--check", "plan.txt")
    assert code == 2
    assert err.endswith(
        f"write it with: det-scaling plan {YAML_CONFIG} --num-gpus 1 8 --update plan.txt\n"
    )
    run_cli(capsys, *command, "--update", "plan.txt")
    assert run_cli(capsys, *command, "--check", "plan.txt")[:2] == (
        0,
        "det-scaling plan: plan.txt matches\n",
    )
    table = run_cli(capsys, *command)[1]
    assert (repo / "plan.txt").read_text().endswith(table)
    # An override on the command line is not the config as written: the change is the command.
    code, out, _ = run_cli(capsys, *command, "SOLVER.IMS_PER_BATCH", "32", "--check", "plan.txt")
    assert code == 1
    assert out.splitlines()[1:4] == [
        "why: the config as written is the same (every value recorded under 'as written'); what "
        "changed is how it is scaled:",
        f"  was made by: det-scaling plan {YAML_CONFIG} --num-gpus 1 8",
        f"  now made by: det-scaling plan {YAML_CONFIG} --num-gpus 1 8 SOLVER.IMS_PER_BATCH 32",
    ]


def test_check_and_update_are_one_or_the_other_and_update_needs_a_folder(capsys, repo):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(capsys, "diff", YAML_CONFIG, "--check", "a.diff", "--update", "a.diff")
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    code, _, err = run_cli(capsys, "diff", YAML_CONFIG, "--update", "nothere/a.diff")
    assert code == 2 and "--update nothere/a.diff: no such directory" in err

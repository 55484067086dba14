"""Golden text: stable (no absolute paths, # lines not compared, any line ending), and a
difference explained: a value as written and the file that sets it, a default, or how the config
is scaled (the command, the toolkit version), or, none of these having changed, the code."""

from __future__ import annotations

import pytest
from helpers.user_repo import YAML_BASE, YAML_CONFIG, write_user_repo

import det_scaling
from det_scaling.testing import compare_golden, config_golden

COUNTS = [1, 2, 4, 8]
LR_AT_2_GPUS = "SOLVER.BASE_LR: 0.02 -> 0.005  (linear rule: batch x0.25, LR x0.25)"


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.chdir(write_user_repo(tmp_path))
    return tmp_path


def golden(title: str = "the title"):
    return config_golden(YAML_CONFIG, (), COUNTS, title=title, accept="the update")


def write_drifted(path, text: str) -> None:
    """``text`` with a body line the config no longer gives, as after a change."""
    assert LR_AT_2_GPUS in text
    path.write_text(text.replace(LR_AT_2_GPUS, LR_AT_2_GPUS.replace("0.005", "0.004")))


def test_the_text_is_stable_and_only_its_body_is_compared(repo):
    text = golden().text()
    assert str(repo) not in text
    notes = [line for line in text.splitlines() if line.startswith("#   ")]
    assert notes == sorted(notes)
    assert "#   SOLVER.BASE_LR: 0.02  (configs/Base-RCNN.yaml)" in notes
    assert text.endswith(golden().body)
    path = repo / "golden.txt"
    # Notes edited or gone, and Windows line endings: the same body still.
    edited = text.replace("#   SOLVER.BASE_LR: 0.02", "#   SOLVER.BASE_LR: 7")
    path.write_bytes(edited.replace("\n", "\r\n").encode())
    assert compare_golden(path, golden()) is None
    path.write_text(golden().body)
    assert compare_golden(path, golden()) is None
    write_drifted(path, golden().body)
    assert compare_golden(path, golden())[0] == (
        "why: not known (the golden file has no # lines saying how it was made)"
    )


def test_a_value_moved_to_another_file_and_changed_names_both_files(repo):
    path = repo / "golden.txt"
    path.write_text(golden().text())
    config = repo / YAML_CONFIG
    config.write_text(config.read_text() + "  BASE_LR: 0.01\n")
    assert compare_golden(path, golden())[:2] == [
        "why: the config as written changed:",
        f"  SOLVER.BASE_LR: 0.02 -> 0.01  (set in {YAML_CONFIG}; was set in {YAML_BASE})",
    ]


def test_a_changed_default_is_named_a_default(repo):
    """What a new detectron2 default looks like: a key no file sets, with another value."""
    path = repo / "golden.txt"
    note = "#   TEST.EVAL_PERIOD: 0  (default)"
    write_drifted(path, golden().text().replace(note, note.replace(" 0 ", " 5000 ")))
    assert compare_golden(path, golden())[:2] == [
        "why: the config as written changed:",
        "  TEST.EVAL_PERIOD: 5000 -> 0  (a default: no file sets it)",
    ]


def test_the_same_config_scaled_otherwise_names_the_command_and_the_toolkit_version(repo):
    path = repo / "golden.txt"
    version = det_scaling.__version__
    old = golden("the old title").text().replace(f"det-scaling {version} (", "det-scaling 0.0.9 (")
    write_drifted(path, old)
    assert compare_golden(path, golden())[:4] == [
        "why: the config as written is the same (every value recorded under 'as written'); what "
        "changed is how it is scaled:",
        "  was made by: the old title",
        "  now made by: the title",
        f"  det-scaling 0.0.9 -> {version}",
    ]


def test_nothing_recorded_changed_blames_the_code_and_hunks_name_their_section(repo):
    path = repo / "golden.txt"
    write_drifted(path, golden().text())
    report = compare_golden(path, golden())
    assert report[0] == (
        "why: the config as written is the same (every value recorded under 'as written'), and "
        f"so are the rule (linear), the reference (8 GPUs) and the toolkit (det-scaling "
        f"{det_scaling.__version__}): the scaled result changed with det-scaling's or "
        "detectron2's code"
    )
    assert report[1:] == [
        f"--- {path}",
        "+++ now",
        "@@ -19,3 +19,3 @@ == diff at 2 GPUs",
        " == diff at 2 GPUs",
        f"-{LR_AT_2_GPUS.replace('0.005', '0.004')}",
        f"+{LR_AT_2_GPUS}",
        " SOLVER.CHECKPOINT_PERIOD: 10000 -> 40000  (same images seen: 10000 steps x 16 = 160000 "
        "images)",
    ]

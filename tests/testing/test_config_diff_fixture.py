"""The config_diff fixture: this repository's VOC07 config kept in a golden file (the same text
under detectron2 v0.6 and upstream main), and small suites run in this process by pytester:
golden file names, a missing golden file, DET_SCALING_UPDATE, a config error."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import REPO
from helpers.user_repo import FILES, YAML_CONFIG

from det_scaling.testing.config_diff import fixture_golden

pytest_plugins = ["pytester"]

VOC07 = "configs/VOC07-Detection/faster_rcnn_R_50_FPN.yaml"
VOC07_GOLDEN = (
    Path(__file__).parent / "config_diff" / f"{Path(__file__).stem}.test_voc07_at_1_2_4_8_gpus.txt"
)


def test_voc07_at_1_2_4_8_gpus(config_diff):
    """Written for 1 GPU x 2 images; the golden file is config_diff/<module>.<this test>.txt."""
    config_diff.check(VOC07, num_gpus=[1, 2, 4, 8])


def test_voc07_golden_text_is_byte_identical_notes_included(monkeypatch):
    """The whole file, # lines too: CI runs this under detectron2 v0.6 and upstream main, whose
    defaults differ only in keys the toolkit adds under v0.6 with upstream's values."""
    monkeypatch.chdir(REPO)
    assert VOC07_GOLDEN.read_bytes() == fixture_golden(VOC07, [1, 2, 4, 8]).text().encode(), (
        "rewrite it with: pytest tests/testing --det-scaling-update, and review the git diff"
    )


@pytest.fixture
def suite(pytester, monkeypatch):
    """A pytester folder with the small repository's configs, and no update requested."""
    monkeypatch.delenv("DET_SCALING_UPDATE", raising=False)
    pytester.makefile(".ini", pytest="[pytest]\n")
    for name, text in FILES.items():
        path = pytester.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return pytester


def run(pytester, *args: str):
    return pytester.runpytest("-p", "det_scaling.testing.plugin", "-p", "no:cacheprovider", *args)


def test_a_missing_golden_fails_naming_the_update_then_the_variable_writes_one_per_check(
    suite, monkeypatch
):
    suite.makepyfile(
        test_mine=f"""
        import pytest

        @pytest.mark.parametrize("counts", [[1, 8], [2]], ids=["1-8", "2"])
        def test_scales(config_diff, counts):
            config_diff.check("{YAML_CONFIG}", num_gpus=counts)
            config_diff.check("{YAML_CONFIG}", 4, overrides=["SOLVER.BASE_LR", "0.01"])
        """
    )
    missing = run(suite)
    missing.assert_outcomes(failed=2)
    missing.stdout.fnmatch_lines(
        [
            "config_diff/test_mine.test_scales_1-8_.txt: no such file; write it with: pytest "
            "--det-scaling-update (or DET_SCALING_UPDATE=1), then review the change with git diff"
        ]
    )
    monkeypatch.setenv("DET_SCALING_UPDATE", "1")
    written = run(suite)
    written.assert_outcomes(passed=2)
    folder = suite.path / "config_diff"
    assert sorted(p.name for p in folder.iterdir()) == [
        "test_mine.test_scales_1-8_.2.txt",
        "test_mine.test_scales_1-8_.txt",
        "test_mine.test_scales_2_.2.txt",
        "test_mine.test_scales_2_.txt",
    ]
    written.stdout.fnmatch_lines(["*det-scaling: golden files written*", "config_diff/*.txt"])
    second = (folder / "test_mine.test_scales_2_.2.txt").read_text()
    assert second.startswith(
        f"# det-scaling config-diff golden: {YAML_CONFIG} at 4 GPUs with SOLVER.BASE_LR 0.01\n"
    )
    assert "SOLVER.BASE_LR: 0.02 -> 0.005  (override, then linear rule" in second
    monkeypatch.setenv("DET_SCALING_UPDATE", "0")
    run(suite).assert_outcomes(passed=2)


def test_a_config_error_fails_the_test_in_one_line(suite):
    suite.makepyfile(
        test_bad="""
        def test_misspelt(config_diff):
            config_diff.check("configs/my_rcnn.yaml", overrides=["SOLVER.BASE_RL", "0.1"])

        def test_missing(config_diff):
            config_diff.check("configs/nothere.yaml")
        """
    )
    result = run(suite, "--det-scaling-update")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*SOLVER.BASE_RL: no such config key; did you mean SOLVER.BASE_LR?",
            "*configs/nothere.yaml: no such config file*",
        ],
        consecutive=False,
    )
    assert "Traceback" not in result.stdout.str()
    assert not (suite.path / "config_diff").exists()

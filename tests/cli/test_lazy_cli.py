"""The commands on LazyConfig (.py) files: plan (golden file), diff, lr-plot, errors."""

from __future__ import annotations

import pytest
from detectron2 import model_zoo
from helpers import REPO
from helpers.cli import assert_matches_golden, run_cli

LSJ_100EP = model_zoo.get_config_file("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")
TINY = str(REPO / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny.py")


@pytest.fixture(autouse=True)
def run_from_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)


def test_plan_of_the_model_zoo_lsj_config_written_for_64_gpus_matches_golden_file(capsys):
    code, out, _ = run_cli(
        capsys,
        "plan",
        LSJ_100EP,
        "train.reference_world_size=64",
        "--num-gpus",
        "8",
        "16",
        "32",
        "64",
    )
    assert code == 0
    assert_matches_golden(out, "mask_rcnn_R_50_FPN_100ep_LSJ_64gpu_plan.txt")


def test_diff_of_a_lazyconfig_names_its_keys_and_why(capsys):
    code, out, _ = run_cli(capsys, "diff", TINY, "--num-gpus", "4", "optimizer.lr=0.02")
    assert code == 0
    lines = out.splitlines()
    assert (
        "dataloader.train.total_batch_size: 2 -> 4  (1 images/GPU x 4 GPUs; reference 2 GPUs)"
        in lines
    )
    assert "optimizer.lr: 0.01 -> 0.04  (override, then linear rule: batch x2, LR x2)" in lines
    assert (
        "lr_multiplier.scheduler.milestones: (1125, 1350) -> (562, 675)  (same images seen as "
        "[1125, 1350] at 2 images/step)" in lines
    )
    assert any(line.startswith("train.max_iter: 1500 -> 750  (same images seen") for line in lines)


def test_lr_plot_of_a_lazyconfig_writes_the_figure(capsys, tmp_path):
    png = tmp_path / "lr.png"
    code, out, _ = run_cli(capsys, "lr-plot", TINY, "--num-gpus", "1", "2", "-o", str(png))
    assert code == 0 and out == f"wrote {png}\n"
    assert png.stat().st_size > 10_000


def test_overrides_of_the_other_format_are_one_line_errors(capsys):
    code, out, err = run_cli(capsys, "plan", TINY, "SOLVER.BASE_LR", "0.1")
    assert (code, out) == (2, "")
    assert err.startswith("det-scaling plan: error: ") and err.count("\n") == 1
    assert "a LazyConfig takes key=value overrides" in err
    yaml = str(REPO / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny.yaml")
    code, _, err = run_cli(capsys, "plan", yaml, "optimizer.lr=0.1")
    assert code == 2 and "key=value overrides are for LazyConfig (.py) files" in err


def test_a_misspelt_key_or_a_missing_file_exits_2_in_one_line(capsys):
    code, _, err = run_cli(capsys, "plan", TINY, "train.max_ite=10")
    assert code == 2
    assert err == (
        "det-scaling plan: error: train.max_ite: no such config key; did you mean train.max_iter?\n"
    )
    code, _, err = run_cli(capsys, "diff", "configs/nothere.py")
    assert code == 2
    assert err == (
        "det-scaling diff: error: configs/nothere.py: no such config file (nor a config name of "
        "det-scaling's or detectron2's model zoo)\n"
    )


def test_diff_refuses_configs_of_two_formats(capsys):
    yaml = str(REPO / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny.yaml")
    code, _, err = run_cli(capsys, "diff", yaml, TINY)
    assert code == 2 and "one is YAML, the other a LazyConfig (.py)" in err

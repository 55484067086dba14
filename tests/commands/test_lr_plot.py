"""``lr-plot``: the curves it draws are the schedules training uses, and it writes the PNG."""

from __future__ import annotations

from pathlib import Path

import pytest

import det_scaling
from det_scaling.cli import main
from det_scaling.commands.lr_plot import LRCurve, lr_curve, plot_lr_curves
from det_scaling.scaling.batch_schedule import BatchSchedule
from det_scaling.solver import build_lr_multiplier, scheduled_lrs

VOC_CONFIG = str(
    Path(__file__).resolve().parents[2] / "configs/VOC07-Detection/faster_rcnn_R_50_FPN.yaml"
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_lr_plot_writes_the_png_for_a_larc_poly_config(tmp_path: Path, capsys) -> None:
    output = tmp_path / "lr.png"
    argv = ["lr-plot", VOC_CONFIG, "--num-gpus", "1", "2", "4", "8", "-o", str(output)]
    argv += ["SOLVER.OPTIMIZER", "LARC", "SOLVER.LR_SCHEDULER_NAME", "WarmupPolyLR"]
    assert main(argv) == 0
    assert output.read_bytes().startswith(PNG_SIGNATURE)
    assert output.stat().st_size > 10_000  # two panels of curves, not an empty canvas
    assert f"wrote {output}" in capsys.readouterr().out


def test_scheduled_lrs_are_the_multiplier_of_progress_times_base_lr() -> None:
    cfg = det_scaling.load_cfg(VOC_CONFIG, ["SOLVER.MAX_ITER", "3000", "SOLVER.STEPS", "(1500,)"])
    multiplier = build_lr_multiplier(cfg)
    expected = [cfg.SOLVER.BASE_LR * multiplier(i / 3000) for i in range(3000)]
    assert scheduled_lrs(cfg) == pytest.approx(expected, rel=1e-12)


def test_curves_of_scaled_configs_coincide_in_images_seen_up_to_the_lr_factor() -> None:
    cfg = det_scaling.load_cfg(VOC_CONFIG, ["SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR"])
    one, four = lr_curve(cfg, 1), lr_curve(cfg, 4)
    assert (four.ims_per_batch, four.lr_factor) == (8, 4.0)
    assert len(one.lrs) == 4 * len(four.lrs)
    assert four.images() == one.images()[::4]
    assert four.lrs == pytest.approx([4 * lr for lr in one.lrs[::4]], rel=1e-9)


def test_epoch_axis_is_images_seen_when_the_dataset_size_is_unknown(tmp_path: Path) -> None:
    schedule = BatchSchedule(ims_per_batch=4, grad_accum_steps=1, total_images=12, world_size=2)
    curves = [LRCurve(num_gpus=2, lr_factor=2.0, schedule=schedule, lrs=[0.1, 0.2, 0.2])]
    figure = plot_lr_curves(curves, str(tmp_path / "a.png"), dataset_size=0)
    assert figure.axes[1].get_xlabel() == "images seen"
    assert list(figure.axes[1].lines[0].get_xdata()) == [0, 4, 8]
    figure = plot_lr_curves(curves, str(tmp_path / "b.png"), dataset_size=8, relative=True)
    assert figure.axes[1].get_xlabel() == "epoch (8 images)"
    assert list(figure.axes[1].lines[0].get_xdata()) == [0.0, 0.5, 1.0]
    assert list(figure.axes[1].lines[0].get_ydata()) == [0.05, 0.1, 0.1]

"""The LR range test: a real sweep on a tiny classifier finishes with a suggestion inside the
swept range, the ``lr-find`` command writes the curve and leaves the config and OUTPUT_DIR alone,
and a config that cannot train is refused with exit status 2.

The model is the digits config's ResNet-18 at 8x8 inputs (the digits' own size) with a batch of
32 written for 2 GPUs, so one process accumulates 2 micro-batches of 16: the reference batch
path. A sweep of 40 steps takes seconds; the refusals stop after at most two steps.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

import det_scaling
from det_scaling.classification import export_digits
from det_scaling.cli import main
from det_scaling.commands.lr_find import (
    LRFindPoint,
    LRFindResult,
    exponential_lrs,
    launch_lr_range_test,
    lr_range_test,
    plot_lr_find,
)

REPO = Path(__file__).resolve().parents[2]
DIGITS_SWEEP = REPO / "configs" / "ImageNet-Classification" / "resnet18_digits_sweep.yaml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Five decades in 40 steps: from where the loss barely moves to where it diverges.
SWEEP = {"start_lr": 1e-3, "end_lr": 100.0, "num_iter": 40}


@pytest.fixture(scope="module")
def datasets_dir(tmp_path_factory) -> Path:
    """A data sets root holding the digits export, made once for the module."""
    root = tmp_path_factory.mktemp("datasets")
    export_digits(root / "digits")
    return root


@pytest.fixture(scope="module", autouse=True)
def environment(datasets_dir: Path):
    """The digits root as ``$DETECTRON2_DATASETS``, and one torch thread: the steps are so small
    that splitting them over the (shared) cores costs more than it gains."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DETECTRON2_DATASETS", str(datasets_dir))
        yield
    torch.set_num_threads(threads)


def write_config(directory: Path, **sections: str) -> Path:
    """A config file over the digits sweep config: ResNet-18 at 8x8, 32 images written for 2
    GPUs, OUTPUT_DIR under ``directory``; ``sections`` adds YAML text (e.g. DATASETS=...)."""
    text = (
        f'_BASE_: "{DIGITS_SWEEP}"\n'
        'MODEL:\n  DEVICE: "cpu"\n'
        "INPUT:\n  CLS_TRAIN_SIZE: 8\n"
        "SOLVER:\n  IMS_PER_BATCH: 32\n  REFERENCE_WORLD_SIZE: 2\n"
        "SEED: 1\n"
        f'OUTPUT_DIR: "{directory / "output"}"\n'
    )
    text += "".join(f"{key}:\n{value}\n" for key, value in sections.items())
    path = directory / "tiny.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> LRFindResult:
    cfg = det_scaling.load_cfg(str(write_config(tmp_path_factory.mktemp("sweep"))))
    return lr_range_test(cfg, **SWEEP)


# ---- a real sweep ----


def test_sweep_on_a_tiny_classifier_finishes_with_a_suggestion_inside_the_range(
    sweep: LRFindResult,
) -> None:
    assert (sweep.ims_per_batch, sweep.grad_accum_steps, sweep.world_size) == (32, 2, 1)
    first, best = sweep.points[0], sweep.best()
    assert best.smoothed_loss < 0.9 * first.smoothed_loss  # the loss fell
    for rule in ("best/10", "steepest"):
        suggestion = sweep.suggest(rule)
        assert SWEEP["start_lr"] <= suggestion.lr <= SWEEP["end_lr"]
    assert sweep.suggest().lr == pytest.approx(best.lr / 10)
    assert sweep.suggest("steepest").lr < best.lr  # read on the falling part


def test_sweep_stops_at_the_first_step_whose_smoothed_loss_exceeds_4x_the_lowest(
    sweep: LRFindResult,
) -> None:
    assert sweep.diverged_at is not None and sweep.diverged_at < SWEEP["num_iter"] - 1
    last = sweep.points[-1]
    assert last.iteration == sweep.diverged_at
    assert last.smoothed_loss > 4 * sweep.best().smoothed_loss
    assert all(p.smoothed_loss <= 4 * sweep.best().smoothed_loss for p in sweep.points[:-1])
    assert "exceeds 4 x the lowest" in sweep.divergence


def test_sweep_lrs_grow_exponentially_and_the_loss_is_smoothed_with_bias_correction(
    sweep: LRFindResult,
) -> None:
    # 1e-3 to 100 in 40 LRs: 5 decades over 39 steps.
    expected_lrs = [1e-3 * 10 ** (5 * i / 39) for i in range(40)]
    assert sweep.lrs == pytest.approx(expected_lrs[: len(sweep.points)], rel=1e-12)
    assert [p.iteration for p in sweep.points] == list(range(len(sweep.points)))
    beta, average = sweep.smoothing, 0.0
    for i, point in enumerate(sweep.points):
        average = beta * average + (1 - beta) * point.loss
        assert point.smoothed_loss == pytest.approx(average / (1 - beta ** (i + 1)), rel=1e-12)
    assert sweep.points[0].smoothed_loss == sweep.points[0].loss


def test_exponential_lrs_run_from_start_to_end_included_evenly_per_decade() -> None:
    assert exponential_lrs(1e-3, 100.0, 6) == pytest.approx(
        [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0], rel=1e-12
    )
    assert exponential_lrs(0.5, 8.0, 5) == pytest.approx([0.5, 1.0, 2.0, 4.0, 8.0], rel=1e-12)
    assert exponential_lrs(1e-4, 1.0, 2) == pytest.approx([1e-4, 1.0], rel=1e-12)


def test_sweep_result_keeps_the_config_as_written_with_the_dataset_size(
    sweep: LRFindResult,
) -> None:
    # The config the suggestion is for: not scaled to the 1 process the sweep ran on.
    assert sweep.cfg.SOLVER.REFERENCE_WORLD_SIZE == 2
    assert sweep.cfg.SOLVER.IMS_PER_BATCH == 32
    assert sweep.cfg.SCALING.GRAD_ACCUM_STEPS == 1
    assert sweep.cfg.SCALING.DATASET_SIZE == 1438  # the digits' training split


# ---- the command ----


def test_lr_find_command_writes_the_curve_and_prints_the_suggestion_and_plan(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    config = write_config(tmp_path)
    config_bytes = config.read_bytes()
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    png = tmp_path / "curve" / "lr.png"
    png.parent.mkdir()
    argv = ["lr-find", str(config), "--start-lr", "1e-3", "--end-lr", "100", "--num-iter", "40"]
    # Options and KEY VALUE overrides mixed, as the other commands take them.
    argv += ["SOLVER.WEIGHT_DECAY", "0.0001", "-o", str(png)]

    assert main(argv) == 0

    out = capsys.readouterr().out
    assert "32 images/step as written for 2 GPU(s) (1 process(es) x 2 micro-batch(es))" in out
    assert "stopped at step" in out
    suggested = float(out.split("suggested SOLVER.BASE_LR: ")[1].split()[0])
    assert 1e-3 <= suggested <= 100
    assert "steepest descent at LR" in out
    assert f"wrote {png} and {png.with_suffix('.csv')}" in out
    # The plan table for the suggestion: BASE_LR x GPUs / 2 under the linear rule.
    assert f"reference: 2 GPUs, 32 images/step, BASE_LR {suggested:g}; rule: linear" in out
    for gpus in (1, 2, 4, 8):
        assert f"|      {gpus} | {16 * gpus} (16/GPU)" in out
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    with open(png.with_suffix(".csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) > 10
    assert math.isclose(float(rows[0]["lr"]), 1e-3)
    # Nothing else written: the config file, OUTPUT_DIR and the working directory are untouched.
    assert config.read_bytes() == config_bytes
    assert not (tmp_path / "output").exists()
    assert list(workdir.iterdir()) == []
    assert sorted(p.name for p in png.parent.iterdir()) == ["lr.csv", "lr.png"]


def test_lr_find_refuses_a_config_that_diverges_from_the_first_step(tmp_path: Path, capsys) -> None:
    png = tmp_path / "lr.png"
    argv = ["lr-find", str(write_config(tmp_path)), "-o", str(png)]
    argv += ["--start-lr", "1e4", "--end-lr", "1e5", "--num-iter", "5"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "stopped at step 1" in captured.out
    error = captured.err
    assert error.startswith("det-scaling lr-find: error: the loss never decreased")
    assert "lower the start LR (now 10000)" in error
    assert f"(the curve is in {png})" in error
    assert png.read_bytes().startswith(PNG_SIGNATURE)


def test_lr_find_refuses_missing_training_data_before_training(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    config = write_config(
        tmp_path, DATASETS='  TRAIN: ("imagenet_train",)\n  TEST: ("imagenet_val",)'
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DETECTRON2_DATASETS", str(tmp_path / "empty"))
        # Also with several processes: refused before any is started.
        assert main(["lr-find", str(config), "--num-gpus", "2", "-o", "x.png"]) == 2
    error = capsys.readouterr().err
    assert "error: cannot load the training data ['imagenet_train']: ImageNet not found" in error
    assert not (tmp_path / "x.png").exists()


def test_a_model_whose_first_loss_is_not_finite_cannot_train(tmp_path: Path) -> None:
    # A zero PIXEL_STD divides the input by 0: the loss is NaN before any update.
    cfg = det_scaling.load_cfg(str(write_config(tmp_path)), ["MODEL.PIXEL_STD", "[0.0, 0.0, 0.0]"])
    with pytest.raises(ValueError, match=r"loss is nan before any update: the config cannot train"):
        lr_range_test(cfg, **SWEEP)


def test_more_processes_than_the_reference_batch_has_micro_batches_is_refused(
    tmp_path: Path,
) -> None:
    cfg = det_scaling.load_cfg(str(write_config(tmp_path)))
    with pytest.raises(ValueError, match="do not divide evenly among 4 GPUs"):
        launch_lr_range_test(cfg, 4, **SWEEP)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"start_lr": 1.0, "end_lr": 1.0}, "need 0 < start LR < end LR"),
        ({"start_lr": 0.0}, "need 0 < start LR < end LR"),
        ({"num_iter": 1}, "--num-iter 1: the sweep needs at least 2 steps"),
        ({"smoothing": 1.0}, r"--smoothing 1: must be in \[0, 1\)"),
        ({"diverge_factor": 1.0}, "--diverge-factor 1: must be > 1"),
    ],
)
def test_bad_sweep_settings_are_refused_before_anything_runs(arguments: dict, message: str) -> None:
    cfg = det_scaling.load_cfg(str(DIGITS_SWEEP))
    with pytest.raises(ValueError, match=message):
        lr_range_test(cfg, **arguments)
    with pytest.raises(ValueError, match=message):
        launch_lr_range_test(cfg, 2, **arguments)


# ---- reading a recorded curve ----


def recorded(losses: list[float], *, smoothing: float = 0.0) -> LRFindResult:
    """A result over ``losses`` (at most 10) at the first LRs of a 10-step sweep from 1e-4 to 1,
    smoothed as the sweep smooths."""
    lrs = exponential_lrs(1e-4, 1.0, 10)[: len(losses)]
    points, average = [], 0.0
    for i, (lr, loss) in enumerate(zip(lrs, losses, strict=True)):
        average = smoothing * average + (1 - smoothing) * loss
        points.append(LRFindPoint(i, lr, loss, average / (1 - smoothing ** (i + 1))))
    return LRFindResult(
        points=points,
        start_lr=1e-4,
        end_lr=1.0,
        num_iter=10,
        smoothing=smoothing,
        diverge_factor=4.0,
        diverged_at=None,
        divergence=None,
        cfg=det_scaling.get_cfg(),
        world_size=1,
        ims_per_batch=16,
        grad_accum_steps=1,
    )


def test_suggestions_are_a_tenth_of_the_best_lr_and_the_steepest_fall_before_it() -> None:
    # Flat, a steep drop between steps 3 and 5, a slow fall to the minimum at step 7, a rise.
    result = recorded([3.0, 3.0, 2.9, 2.8, 1.8, 1.0, 0.9, 0.8, 1.5, 3.0])
    assert result.best().iteration == 7
    best10 = result.suggest("best/10")
    assert best10.lr == pytest.approx(result.points[7].lr / 10)
    assert (best10.rule, best10.iteration) == ("best/10", 7)
    steepest = result.suggest("steepest")
    assert steepest.iteration == 4  # central difference (1.0 - 2.8) / 2 steps: the largest fall
    assert steepest.lr == result.points[4].lr


def test_steepest_skips_the_first_steps_of_the_moving_average() -> None:
    losses = [4.0, 2.6, 2.5, 2.4, 2.0, 1.6, 1.2, 1.0, 1.1, 3.0]
    assert recorded(losses).suggest("steepest").iteration == 0  # unsmoothed: the first drop
    # Averaged over about 4 steps, the first 3 smoothed losses rest on too few losses to read.
    smoothed = recorded(losses, smoothing=0.75)
    assert smoothed.suggest("steepest").iteration == 5
    assert smoothed.best().iteration == 8


@pytest.mark.parametrize(
    "losses",
    [
        [2.0, 2.5, 3.0, 9.0],  # rises at once: the start LR is already too high
        [2.0, 2.01, 1.98, 1.99, 2.0, 1.97],  # flat: less than 5% below the first loss
        [2.0],  # a single finite step
    ],
)
def test_a_loss_that_never_decreases_has_no_suggestion(losses: list[float]) -> None:
    result = recorded(losses)
    for rule in ("best/10", "steepest"):
        with pytest.raises(ValueError, match="the loss never decreased"):
            result.suggest(rule)


def test_unknown_suggestion_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown suggestion rule 'valley'"):
        recorded([3.0, 2.0, 1.0]).suggest("valley")


def test_plot_marks_the_suggestions_on_a_log_lr_axis(tmp_path: Path) -> None:
    result = recorded([3.0, 3.0, 2.9, 2.8, 1.8, 1.0, 0.9, 0.8, 1.5, 3.0], smoothing=0.5)
    suggestions = [result.suggest("best/10"), result.suggest("steepest")]
    figure = plot_lr_find(result, tmp_path / "lr.png", suggestions=suggestions, title="t")
    axes = figure.axes[0]
    assert axes.get_xscale() == "log"
    raw, smoothed = axes.lines[0], axes.lines[1]
    assert list(raw.get_ydata()) == result.losses
    assert list(smoothed.get_ydata()) == result.smoothed_losses
    vertical = [line.get_xdata()[0] for line in axes.lines[3:]]
    assert vertical == [s.lr for s in suggestions]
    assert (tmp_path / "lr.png").read_bytes().startswith(PNG_SIGNATURE)

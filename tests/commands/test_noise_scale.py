"""``noise-scale``: the estimate from step norms, a real measurement on a tiny classifier (one
process accumulating; one process at a batch that must be doubled; two gloo processes; by module
group), the command's output and its refusals.

The model is the digits sweep config's ResNet-18 at 8x8 inputs, as in tests/test_lr_find.py.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import det_scaling
from det_scaling.classification import export_digits
from det_scaling.cli import main
from det_scaling.commands.noise_scale import estimate, launch_noise_scale, measure_noise_scale
from det_scaling.engine import StepNorms
from det_scaling.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DIGITS_SWEEP = REPO / "configs" / "ImageNet-Classification" / "resnet18_digits_sweep.yaml"
# The classifier's module groups: its ResNet's top-level children with parameters.
RESNET_GROUPS = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]


@pytest.fixture(scope="module", autouse=True)
def environment(tmp_path_factory):
    """The digits under a data sets root of the module's own, and one torch thread."""
    root = tmp_path_factory.mktemp("datasets")
    export_digits(root / "digits")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DETECTRON2_DATASETS", str(root))
        yield
    torch.set_num_threads(threads)


def write_config(directory: Path, ims_per_batch: int = 32, reference: int = 2) -> Path:
    text = (
        f'_BASE_: "{DIGITS_SWEEP}"\n'
        'MODEL:\n  DEVICE: "cpu"\n'
        "INPUT:\n  CLS_TRAIN_SIZE: 8\n"
        f"SOLVER:\n  IMS_PER_BATCH: {ims_per_batch}\n  REFERENCE_WORLD_SIZE: {reference}\n"
        "SEED: 1\n"
        f'OUTPUT_DIR: "{directory / "output"}"\n'
    )
    path = directory / "tiny.yaml"
    path.write_text(text)
    return path


# ---- the estimate ----


def norms_for(sq_grad_norm: float, trace: float, iteration: int) -> StepNorms:
    """A step whose norms are the expected ones at b = 2 and B = 8: its estimates are exact."""
    return StepNorms(iteration, sq_grad_norm + trace / 2, 2, sq_grad_norm + trace / 8, 8)


def test_estimate_is_the_ratio_of_the_mean_estimates() -> None:
    steps = [norms_for(1.0, 10.0, 0), norms_for(3.0, 50.0, 1)]
    result = estimate(steps)
    assert (result.sq_grad_norm, result.trace_sigma) == pytest.approx((2.0, 30.0))
    assert result.noise_scale == pytest.approx(15.0)  # not the mean of 10 and 16.7
    assert (result.first, result.last, result.steps) == (0, 1, 2)
    # Residuals t - 15 g: -5 and +5, sample variance 50: sqrt(50 / 2 steps) / mean |G|^2 2.
    assert result.standard_error == pytest.approx(2.5)
    unresolved = estimate([StepNorms(0, 10.0, 2, 1.0, 8)])  # |G|^2 estimate < 0
    assert unresolved.noise_scale is None and unresolved.standard_error is None
    with pytest.raises(ValueError, match="no step"):
        estimate([])


# ---- measurements ----


def test_measurement_on_the_reference_batch_with_accumulation(tmp_path: Path) -> None:
    cfg = det_scaling.load_cfg(str(write_config(tmp_path)))
    result = measure_noise_scale(cfg, num_iter=12)
    # 32 images written for 2 GPUs, on 1 process: 2 micro-batches of 16.
    assert (result.ims_per_batch, result.grad_accum_steps, result.micro_batch) == (32, 2, 16)
    assert {(n.small_batch, n.big_batch) for n in result.norms} == {(16, 32)}
    assert [n.iteration for n in result.norms] == list(range(12))
    assert len(result.losses) == len(result.lrs) == 12 and result.notes == []
    assert result.per_gpu_batch == 16 and result.cfg.SCALING.DATASET_SIZE == 1438
    windows = result.windows(3)
    assert [(w.first, w.last) for w in windows] == [(0, 3), (4, 7), (8, 11)]
    assert result.overall.steps == 12
    # The LR follows the config's schedule from its warmup (WarmupMultiStepLR, factor 0.1).
    assert result.lrs[0] == pytest.approx(0.1 * 0.05, rel=1e-6)
    assert result.lrs[-1] > result.lrs[0]
    # The noise averages down with the batch: over the steps, a micro-batch of 16 has a larger
    # squared norm than the step's 32, so tr(Sigma) and |G|^2 are both positive and B_simple is
    # resolved (SEED and one thread: the same figures on every run; B_simple 314 measured).
    overall = result.overall
    assert overall.trace_sigma > 0 and overall.sq_grad_norm > 0
    assert overall.noise_scale == pytest.approx(overall.trace_sigma / overall.sq_grad_norm)
    assert overall.noise_scale > 16
    assert len(result.step_seconds) == 12 and result.micro_batch_seconds > 0


def test_one_process_without_accumulation_measures_at_twice_the_batch(tmp_path: Path) -> None:
    cfg = det_scaling.load_cfg(str(write_config(tmp_path, ims_per_batch=16, reference=1)))
    result = measure_noise_scale(cfg, num_iter=4, start_iter=10)
    assert (result.ims_per_batch, result.grad_accum_steps) == (32, 2)
    assert {(n.small_batch, n.big_batch) for n in result.norms} == {(16, 32)}
    # Step 10 of the config's schedule (160 images seen) is step 5 of the doubled one.
    assert [n.iteration for n in result.norms] == [5, 6, 7, 8]
    assert "one batch size per step" in result.notes[0]
    assert result.notes[1] == "step 10 of the config's schedule is step 5 here"
    assert result.per_gpu_batch == 16  # the limit is counted in the config's own per-GPU batch


def check_groups_add_up(result) -> None:
    """Every step holds the classifier's groups, whose squared norms add up to the step's."""
    for n in result.norms:
        assert list(n.groups) == RESNET_GROUPS
        assert all(small > 0 and big > 0 for small, big in n.groups.values())
        assert sum(small for small, _ in n.groups.values()) == pytest.approx(
            n.small_sq_norm, rel=1e-6
        )
        assert sum(big for _, big in n.groups.values()) == pytest.approx(n.big_sq_norm, rel=1e-6)


def test_measurement_by_module(tmp_path: Path) -> None:
    cfg = det_scaling.load_cfg(str(write_config(tmp_path)))
    result = measure_noise_scale(cfg, num_iter=4, by_module=True)
    assert {(n.small_batch, n.big_batch) for n in result.norms} == {(16, 32)}
    check_groups_add_up(result)
    estimates = result.module_estimates()
    assert list(estimates) == RESNET_GROUPS
    assert {(e.first, e.last, e.steps) for e in estimates.values()} == {(0, 3, 4)}
    # Each group's estimate is the estimate over its own norms.
    layer4 = [
        StepNorms(n.iteration, n.groups["layer4"][0], 16, n.groups["layer4"][1], 32)
        for n in result.norms
    ]
    assert estimates["layer4"] == estimate(layer4)
    assert estimates["layer4"] != estimates["fc"]

    # One group holding everything: its estimates are the whole gradient's, over every step and
    # over a window.
    whole = replace(
        result,
        norms=[replace(n, groups={"all": (n.small_sq_norm, n.big_sq_norm)}) for n in result.norms],
    )
    assert whole.module_estimates() == {"all": result.overall}
    window = result.windows(2)[1]
    assert whole.module_estimates(window.first, window.last) == {"all": window}

    with pytest.raises(ConfigError, match=r"no step measured in iterations 7 \.\. 9"):
        result.module_estimates(7, 9)
    without = replace(result, norms=[replace(n, groups={}) for n in result.norms])
    with pytest.raises(ConfigError, match="by_module=True"):
        without.module_estimates()


@pytest.mark.slow
def test_two_processes_measure_before_and_after_the_all_reduce(tmp_path: Path) -> None:
    cfg = det_scaling.load_cfg(str(write_config(tmp_path)))
    result = launch_noise_scale(cfg, 2, num_iter=4, by_module=True)
    assert (result.world_size, result.grad_accum_steps) == (2, 1)
    assert {(n.small_batch, n.big_batch) for n in result.norms} == {(16, 32)}
    assert len(result.losses) == 4
    # The mean of the processes' squared norms exceeds the squared norm of their mean by
    # |g_0 - g_1|^2 / 4: strictly, at every step, unless both read the same gradient.
    assert all(n.small_sq_norm > n.big_sq_norm for n in result.norms)
    # By module: the groups' norms, each process's read in DDP's communication hook.
    check_groups_add_up(result)


# ---- the command ----


def test_command_prints_the_noise_scale_its_movement_and_the_epochs_factors(
    tmp_path: Path, capsys
) -> None:
    config = write_config(tmp_path)
    csv_path = tmp_path / "norms.csv"
    argv = ["noise-scale", str(config), "--num-iter", "10", "--windows", "2"]
    assert main([*argv, "--csv", str(csv_path)]) == 0
    out = capsys.readouterr().out
    assert "batch: 32 images/step (1 process(es) x 2 micro-batch(es) of 16)" in out
    assert "the two batch sizes: 16 and 32 images" in out
    assert "| 0-4 " in out and "| 5-9 " in out
    assert "per-GPU batch as written: 16 image(s)" in out
    assert not (tmp_path / "output").exists()  # nothing written but the CSV file asked for
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == list(range(10))
    assert {(r["small_batch"], r["big_batch"]) for r in rows} == {("16", "32")}
    # The printed B_simple and epochs factors are those of the steps' norms (the CSV), computed here
    # from the unbiased estimates: |G|^2 = (32 |G_32|^2 - 16 |G_16|^2) / 16 and
    # tr(Sigma) = (|G_16|^2 - |G_32|^2) / (1/16 - 1/32). Resolved for this SEED (293 measured).
    norms = [(float(r["small_sq_norm"]), float(r["big_sq_norm"])) for r in rows]
    sq_grad_norm = sum(32 * big - 16 * small for small, big in norms) / 16 / len(norms)
    trace = sum(small - big for small, big in norms) / (1 / 16 - 1 / 32) / len(norms)
    assert trace > 0 and sq_grad_norm > 0
    noise_scale = trace / sq_grad_norm
    assert f"B_simple over the 10 steps: {noise_scale:.3g} +- " in out
    # Written for 2 GPUs of 16 images: 8 GPUs are a batch of 128, 4 times the reference's 32.
    factor = (1 + 128 / noise_scale) / (1 + 32 / noise_scale)
    row = next(line for line in out.splitlines() if line.startswith("|      8 |"))
    assert row.split("|")[2].strip() == "128"
    assert float(row.split("|")[3]) == pytest.approx(factor, abs=0.006)
    assert "`det-scaling advise CONFIG`" in out


def test_command_refuses_a_measurement_longer_than_the_schedule(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path)
    assert main(["noise-scale", str(config), "--num-iter", "100000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("det-scaling noise-scale: error: the schedule has")
    assert main(["noise-scale", str(tmp_path / "missing.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().err

"""advise: the batch, epochs, iterations, rule and wall time of each GPU count from a critical
batch; the configs it writes train what it says; the probe on a real tiny detector."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

from det_scaling import load_cfg, plan_scaling
from det_scaling.cli import main
from det_scaling.commands.advise import CriticalBatch, advise, probe
from det_scaling.errors import ConfigError
from det_scaling.scaling.critical_batch import epochs_factor

TINY_YAML = str(REPO / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny.yaml")
TINY_LAZY = str(REPO / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny.py")
# The tiny detector as written: 2 GPUs x 1 image, 1500 steps, 6 epochs of 500 images.


def test_each_gpu_count_gets_the_law_s_epochs_and_iterations():
    critical = CriticalBatch(11.1, (8.0, 15.0), "given")
    result = advise(load_cfg(TINY_YAML), [1, 2, 8], critical)
    one, two, eight = result.rows
    assert (result.reference_gpus, result.reference_batch, result.reference_epochs) == (2, 2, 6)
    assert (two.epochs_factor, two.rule, two.iterations) == (1.0, "as written", 1500)
    factor = epochs_factor(8, 2, 11.1)
    assert eight.epochs_factor == pytest.approx(factor)
    assert eight.epochs == pytest.approx(6 * factor)
    assert eight.iterations == round(3000 * factor / 8)
    # A larger B_crit, fewer epochs: the band's low end comes from the interval's high end.
    assert eight.factor_band == pytest.approx((epochs_factor(8, 2, 15), epochs_factor(8, 2, 8)))
    assert eight.rule == "linear + noise schedule"
    assert one.epochs_factor < 1 and one.iterations == round(3000 * one.epochs_factor)
    assert result.fastest() is None  # no step times


def test_an_interval_down_to_zero_advises_adascale_past_the_reference():
    result = advise(load_cfg(TINY_YAML), [2, 4], CriticalBatch(3.9, (0.0, 8.5), "probe"))
    assert result.rows[0].rule == "as written" and result.rows[0].factor_band == (1.0, 1.0)
    assert result.rows[1].rule == "adascale"
    assert math.isinf(result.rows[1].factor_band[1])
    assert "B_crit's interval reaches 0 images" in result.rows[1].why
    assert json.loads(json.dumps(result.to_dict()))["rows"][1]["factor_band"][1] is None


def test_step_times_give_wall_time_gpu_hours_and_the_counts_that_minimize_them():
    critical = CriticalBatch(11.1, None, "given")
    times = {1: 1.0, 2: 1.2}  # 4 and 8 GPUs take the 2-GPU step time, the nearest count's
    result = advise(load_cfg(TINY_YAML), [1, 2, 4, 8], critical, step_times=times)
    for row in result.rows:
        assert row.step_time_s == times[min(row.num_gpus, 2)]
        assert row.wall_time_s == pytest.approx(row.iterations * row.step_time_s)
        assert row.gpu_hours == pytest.approx(row.wall_time_s * row.num_gpus / 3600)
    assert result.fastest().num_gpus == 8
    assert result.cheapest().num_gpus == 1


def test_no_gpu_count_is_one_line():
    with pytest.raises(ConfigError, match="at least one GPU count"):
        advise(load_cfg(TINY_YAML), [], CriticalBatch(4.0, None, "given"))


@pytest.mark.parametrize("config", [TINY_YAML, TINY_LAZY])
def test_written_configs_train_the_advised_iterations(tmp_path: Path, capsys, config):
    out = tmp_path / "configs"
    argv = ["advise", config, "--num-gpus", "2", "8", "--b-crit", "11.1"]
    assert main([*argv, "--write", str(out), "--json", str(tmp_path / "advice.json")]) == 0
    printed = capsys.readouterr().out
    assert "B_crit 11.1 images: --b-crit" in printed
    record = json.loads((tmp_path / "advice.json").read_text())
    suffix = Path(config).suffix
    for row in record["rows"]:
        written = load_cfg(str(out / f"faster_rcnn_synthetic_tiny_{row['num_gpus']}gpu{suffix}"))
        # Written for its GPU count: scaling it to that count again changes nothing.
        assert plan_scaling(written, row["num_gpus"]).changes == []
        if suffix == ".py":
            max_iter, schedule = written.train.max_iter, written.train.scaling.schedule
        else:
            max_iter, schedule = written.SOLVER.MAX_ITER, written.SCALING.SCHEDULE
        assert (max_iter, schedule) == (row["iterations"], "noise")


def test_bad_arguments_are_one_line(tmp_path: Path, capsys):
    assert main(["advise", TINY_YAML, "--b-crit", "0"]) == 2
    assert "--b-crit must be positive" in capsys.readouterr().err
    assert main(["advise", TINY_YAML, "--b-crit", "4", "--step-time", "8:0.5"]) == 2
    assert "--step-time 8:0.5: expected N=SECONDS" in capsys.readouterr().err
    assert main(["advise", TINY_LAZY]) == 2  # the probe trains YAML configs
    assert "takes YAML configs" in capsys.readouterr().err
    assert main(["advise", TINY_YAML, "--from-run", str(tmp_path)]) == 2
    assert "needs the run's config.yaml and last_checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_probe_measures_the_tiny_detector_and_each_module(tmp_path: Path, monkeypatch):
    # 40 steps as written: the probe trains 8 of them (a fifth) on one process, accumulating
    # the reference's 2 micro-batches; no two-process timing here (test_noise_scale's does).
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    overrides = [
        "SOLVER.MAX_ITER",
        "40",
        "SOLVER.STEPS",
        "(30,)",
        "SOLVER.WARMUP_ITERS",
        "4",
        "DATASETS.SYNTHETIC_VOC.NUM_TRAINVAL",
        "40",
        "DATASETS.SYNTHETIC_VOC.NUM_TEST",
        "8",
    ]
    cfg = load_cfg(TINY_YAML, overrides)
    seen = []
    critical, measured = probe(
        cfg, fraction=0.2, time_two_processes=False, progress=lambda *a: seen.append(a)
    )
    assert [done for done, _, _ in seen] == list(range(1, 9))
    assert measured.steps == 8 and measured.fraction == pytest.approx(0.2)
    assert critical.value > 0 and critical.source.startswith("B_simple over steps 4-7")
    assert set(measured.modules) == {"backbone", "fpn", "rpn", "roi_heads"}
    assert set(measured.step_times) == {1} and measured.step_times[1] > 0


@pytest.mark.slow
def test_from_run_measures_at_the_run_s_last_checkpoint(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    small = [
        *("SOLVER.MAX_ITER", "6", "SOLVER.STEPS", "(4,)", "SOLVER.WARMUP_ITERS", "1"),
        *("SOLVER.CHECKPOINT_PERIOD", "3", "TEST.EVAL_PERIOD", "0"),
        *("DATASETS.SYNTHETIC_VOC.NUM_TRAINVAL", "16", "DATASETS.SYNTHETIC_VOC.NUM_TEST", "4"),
        *("OUTPUT_DIR", str(tmp_path / "run")),
    ]
    # Trained in a process of its own: training sets up detectron2's loggers for the process.
    train = [sys.executable, "-m", "det_scaling", "train", "--config-file", TINY_YAML, *small]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    subprocess.run(train, check=True, env=env, capture_output=True)
    argv = ["advise", TINY_YAML, "--from-run", str(tmp_path / "run"), "--num-gpus", "1", "4"]
    assert main([*argv, "--json", str(tmp_path / "advice.json")]) == 0
    printed = capsys.readouterr().out
    # 12 steps of 1 image; one process measures at 2 images/step: steps 0-5 of that schedule.
    assert "B_simple at model_final.pth, steps 0-5 of the measurement" in printed
    record = json.loads((tmp_path / "advice.json").read_text())
    # The run's config is the reference: 1 GPU of 1 image (scaled from 2 for the one process).
    assert (record["reference_gpus"], record["reference_batch"]) == (1, 1)
    assert [row["total_batch"] for row in record["rows"]] == [1, 4]

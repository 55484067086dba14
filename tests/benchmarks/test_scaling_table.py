"""Smoke tests of benchmarks/scaling_table.py's helpers: the configs of the rows, the overhead
config, the table and the plot. Nothing trains here (the benchmark itself does)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

import det_scaling

# isort: split
from detectron2.engine import DefaultTrainer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    # benchmarks/ is not a package: load the script as a module (its main() does not run).
    path = REPO / "benchmarks" / "scaling_table.py"
    spec = importlib.util.spec_from_file_location("scaling_table_bench", path)
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is created.
    sys.modules[spec.name] = module
    # As when the script runs: its folder is on the path (it imports benchmarks/_logs.py).
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(path.parent))
        del sys.modules[spec.name]


@pytest.fixture
def cfg():
    """The shape of the synthetic tiny config, fixed here: 2 GPUs x 2 images, LR 0.02, 800 steps
    (8 epochs of 400 images), LR steps at 6 and 7.2 epochs, 1 epoch of warmup."""
    cfg = det_scaling.get_cfg()
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 2
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.SOLVER.BASE_LR = 0.02
    cfg.SOLVER.MAX_ITER = 800
    cfg.SOLVER.STEPS = (600, 720)
    cfg.SOLVER.WARMUP_ITERS = 100
    cfg.SCALING.DATASET_SIZE = 400
    return cfg


def test_processes_for(bench):
    assert bench.processes_for(1, 2) == 1
    assert bench.processes_for(2, 2) == 2
    assert bench.processes_for(8, 2) == 2
    assert bench.processes_for(8, 16) == 8
    assert bench.processes_for(3, 2) == 1  # 3 micro-batches do not split between 2 processes
    assert bench.processes_for(6, 4) == 3
    with pytest.raises(ValueError):
        bench.processes_for(0, 2)


def test_plan_rows(bench):
    rows = bench.plan_rows([1, 2, 4, 8, 16], 2, [8, 16])
    assert [(r.gpus, r.series, r.how) for r in rows] == [
        (1, "linear", "1 x 1"),
        (2, "linear", "2 x 1"),
        (4, "linear", "2 x 2"),
        (8, "linear", "2 x 4"),
        (16, "linear", "2 x 8"),
        # no kept or sqrt 1-GPU rows: every rule gives the 1-GPU LR there (the same run)
        (2, "none", "2 x 1"),
        (4, "none", "2 x 2"),
        (8, "none", "2 x 4"),
        (16, "none", "2 x 8"),
        (2, "sqrt", "2 x 1"),
        (4, "sqrt", "2 x 2"),
        (8, "sqrt", "2 x 4"),
        (16, "sqrt", "2 x 8"),
        (8, "larc", "2 x 4"),
        (16, "larc", "2 x 8"),
        (2, "adascale", "2 x 1"),
        (4, "adascale", "2 x 2"),
        (8, "adascale", "2 x 4"),
        (16, "adascale", "2 x 8"),
    ]
    assert len({r.name for r in rows}) == len(rows)
    assert {r.rule for r in rows if r.series == "larc"} == {"linear"}
    assert {r.rule for r in rows if r.series == "adascale"} == {"adascale"}
    only_kept = bench.plan_rows([1, 2], 2, [], ("none",))
    assert [(r.gpus, r.series) for r in only_kept] == [(1, "linear"), (2, "none")]


def test_epoch_schedule(bench, cfg):
    full = bench.epoch_schedule(cfg, None)
    assert full.SCALING.EPOCHS.MAX == pytest.approx(8)
    assert full.SCALING.EPOCHS.STEPS == pytest.approx((6, 7.2))
    assert full.SCALING.EPOCHS.WARMUP == pytest.approx(1)
    short = bench.epoch_schedule(cfg, 2.0)
    assert short.SCALING.EPOCHS.MAX == pytest.approx(2)
    assert short.SCALING.EPOCHS.STEPS == pytest.approx((1.5, 1.8))
    assert short.SCALING.EPOCHS.WARMUP == pytest.approx(0.25)
    assert cfg.SCALING.EPOCHS.MAX == 0  # the input is unchanged
    # An epoch schedule gives back the iterations it was converted from.
    planned = det_scaling.plan_scaling(full, 2).cfg
    assert planned.SOLVER.MAX_ITER == 800
    assert planned.SOLVER.STEPS == (600, 720)
    assert planned.SOLVER.WARMUP_ITERS == 100


def test_row_cfgs_see_the_same_images(bench, cfg, tmp_path):
    one_gpu = bench.one_gpu_cfg(bench.epoch_schedule(cfg, 2.0))
    assert one_gpu.SOLVER.IMS_PER_BATCH == 2
    assert one_gpu.SOLVER.BASE_LR == pytest.approx(0.01)
    by_key = {}
    # AdaScale's rows see more images, on a clock of their own (the preset test checks them).
    shown = ("linear", "none", "sqrt", "larc")
    for row in bench.plan_rows([1, 2, 4, 8], 2, [8], shown):
        run = bench.row_cfg(one_gpu, row, 3, tmp_path)
        by_key[row.gpus, row.series] = run
        assert run.SOLVER.IMS_PER_BATCH == 2 * row.gpus
        assert run.SOLVER.REFERENCE_WORLD_SIZE == row.processes
        assert run.SCALING.GRAD_ACCUM_STEPS == row.accumulation
        assert run.SOLVER.MAX_ITER * run.SOLVER.IMS_PER_BATCH == 800  # 2 epochs of 400
        expected_lr = {"linear": 0.01 * row.gpus, "larc": 0.01 * row.gpus, "none": 0.01}.get(
            row.series, 0.01 * row.gpus**0.5
        )
        assert run.SOLVER.BASE_LR == pytest.approx(expected_lr)
        assert run.SOLVER.OPTIMIZER == ("LARC" if row.series == "larc" else "SGD")
        # Measured wherever a step has two batch sizes (not at 1 x 1).
        assert run.SCALING.NOISE_SCALE.ENABLED == (row.gpus > 1)
        assert run.SEED == 3
        assert run.SOLVER.CHECKPOINT_PERIOD > run.SOLVER.MAX_ITER  # model_final only
        assert run.TEST.EVAL_PERIOD == 0  # evaluated once, at the end
        assert Path(run.OUTPUT_DIR) == tmp_path / "seed3" / row.name
    eight, eight_kept = by_key[8, "linear"], by_key[8, "none"]
    assert eight.SOLVER.MAX_ITER == eight_kept.SOLVER.MAX_ITER == 50
    assert eight.SOLVER.STEPS == eight_kept.SOLVER.STEPS == (38, 45)  # 37.5 rounds to even


def test_overhead_cfg_is_what_stock_detectron2_runs(bench, cfg, tmp_path):
    one_gpu = bench.one_gpu_cfg(bench.epoch_schedule(cfg, None))
    stock = bench.overhead_cfg(one_gpu, tmp_path)
    assert stock.SOLVER.OPTIMIZER == "SGD"
    assert stock.SOLVER.LR_SCHEDULER_NAME == "WarmupMultiStepLR"
    assert stock.SCALING.GRAD_ACCUM_STEPS == 1
    # DefaultTrainer rescales nothing for 1 process: both trainers run the same config.
    assert DefaultTrainer.auto_scale_workers(stock, 1) == stock


def test_table_verdict_and_plot(bench, cfg, tmp_path):
    one_gpu = bench.one_gpu_cfg(bench.epoch_schedule(cfg, 2.0))
    rows = bench.plan_rows([1, 2, 4], 2, [4])
    table = []
    for row in rows:
        runs = []
        for seed in (0, 1):
            run = bench.row_cfg(one_gpu, row, seed, tmp_path)
            kept = row.series == "none"
            summary = {
                "metrics": {
                    "bbox/AP50": 40.0 - (5 if kept else 0) * row.gpus + seed,
                    "bbox/AP": 20.0,
                },
                "epochs_seen": 2.0,
                "train_time_s": 1.0,
                "gradient_noise": {"noise_scale": 5.0 + seed} if row.gpus > 1 else None,
            }
            runs.append(bench.run_result(row, run, summary))
        table.append(bench.table_row(row, runs, 2))
    diverged = bench.run_result(rows[-1], run, {"diverged": "rank 1 of 2 failed: ..."})
    assert diverged["AP50"] == 0.0 and diverged["diverged"]
    with_diverged = bench.table_row(rows[-1], [runs[0], diverged], 2)
    assert with_diverged["AP50 per seed"] == f"{runs[0]['AP50']:.1f} / diverged"
    assert with_diverged["AP50 mean"] == round(runs[0]["AP50"] / 2, 2)
    first = table[0]
    assert first["AP50 per seed"] == "40.0 / 41.0" and first["AP50 mean"] == 40.5
    assert first["AP50 spread"] == 1.0 and first["B_simple (end)"] is None
    assert table[1]["B_simple (end)"] == 5.5 and table[1]["how (processes x accum)"] == "2 x 1"
    assert bench.baseline_noise_scale(table) == 5.5  # the linear 2-GPU row
    checks = {c["GPUs"]: c for c in bench.verdict(table, 5.5)}
    assert checks[2]["linear within 1 of 1 GPU"] == "yes"
    assert checks[2]["kept - linear (AP50)"] == -10.0 and checks[2]["kept >= 3 below"] == "yes"
    assert checks[2]["total batch <= B_simple"] == "yes"  # 4 images <= 5.5
    assert checks[4]["total batch <= B_simple"] == "no"  # 8 images
    json.dumps(table)  # results.json holds them as they are
    path = tmp_path / "table.png"
    bench.plot([*table, with_diverged], path, "test", 5.5, 2)
    assert path.stat().st_size > 0


def test_format_overhead(bench):
    result = {
        "iterations": 4,
        "chunk": 2,
        "warmup": 1,
        "ims_per_batch": 2,
        "median_s": {"ours": 0.5, "stock": 0.4},
        "quartiles_s": {"ours": [0.45, 0.55], "stock": [0.35, 0.45]},
        "ratio": 1.25,
    }
    text = bench.format_overhead(result)
    assert "1.250" in text and "0.4500-0.5500" in text


def test_presets_train_the_full_schedule_on_one_process_and_keep_the_references_checkpoints(
    bench, cfg, tmp_path
):
    one_gpu = bench.one_gpu_cfg(bench.epoch_schedule(cfg, None))  # 1600 steps of 2 images
    preset = bench.PRESETS["default"]
    rows = bench.plan_rows(list(preset.gpus), 1, [], preset.series)
    assert [r.name for r in rows] == [
        "gpus1_linear",
        "gpus2_linear",
        "gpus4_linear",
        "gpus8_linear",
        "gpus2_none",
        "gpus4_none",
        "gpus8_none",
        "gpus2_adascale",
        "gpus4_adascale",
        "gpus8_adascale",
    ]
    assert preset.seeds_of("linear") == (0, 1) and preset.seeds_of("none") == (0,)
    by_name = {r.name: bench.row_cfg(one_gpu, r, 0, tmp_path, preset.checkpoints) for r in rows}
    reference = by_name["gpus1_linear"]
    assert reference.SOLVER.MAX_ITER == 1600
    assert abs(reference.SOLVER.CHECKPOINT_PERIOD - 1600 / 6) <= 1
    # Other rows checkpoint at the end only (their weights are deleted after the table).
    linear8 = by_name["gpus8_linear"]
    assert linear8.SOLVER.CHECKPOINT_PERIOD > linear8.SOLVER.MAX_ITER == 200
    assert linear8.SOLVER.BASE_LR == pytest.approx(0.08) and linear8.SCALING.GRAD_ACCUM_STEPS == 8
    # AdaScale keeps the 1-GPU LR and schedule and measures its gain over 8 micro-batches.
    ada = by_name["gpus8_adascale"]
    assert (ada.SCALING.RULE, ada.SCALING.ADASCALE_REFERENCE_BATCH) == ("adascale", 2)
    assert ada.SOLVER.IMS_PER_BATCH == 16 and ada.SCALING.GRAD_ACCUM_STEPS == 8
    assert ada.SOLVER.BASE_LR == pytest.approx(0.01) and ada.SOLVER.MAX_ITER == 1600
    # The long preset: the same rows over 12 epochs (here 8 epochs of 400 images as written),
    # the reference checkpointed every epoch.
    long = bench.PRESETS["long"]
    stretched = bench.one_gpu_cfg(bench.epoch_schedule(cfg, long.epochs))
    long_reference = bench.row_cfg(stretched, rows[0], 0, tmp_path, long.checkpoints)
    assert (stretched.SCALING.EPOCHS.MAX, long_reference.SOLVER.MAX_ITER) == (12, 2400)
    assert abs(long_reference.SOLVER.CHECKPOINT_PERIOD - 200) <= 1
    few = bench.PRESETS["few-samples"].overrides
    assert dict(zip(few[::2], few[1::2], strict=True)) == {
        "MODEL.RPN.BATCH_SIZE_PER_IMAGE": "16",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": "16",
    }


def test_a_finished_run_is_reused_only_for_the_same_config(bench, cfg, tmp_path):
    cfg.OUTPUT_DIR = str(tmp_path / "run")
    assert bench.finished_summary(cfg) is None
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(cfg.dump())
    (tmp_path / "run" / "summary.json").write_text('{"metrics": {"bbox/AP50": 50.0}}')
    assert bench.finished_summary(cfg) == {"metrics": {"bbox/AP50": 50.0}}
    cfg.SOLVER.BASE_LR = 0.04
    assert bench.finished_summary(cfg) is None


def test_a_recorded_run_stands_in_only_for_the_same_config(bench, cfg):
    result = {"AP50": 50.0, "steps": 200}
    record = {
        "runs": {
            "gpus8_linear/seed0": {"config_sha256": bench.config_sha256(cfg), "result": result}
        }
    }
    assert bench.recorded_result(record, "gpus8_linear/seed0", cfg) == result
    assert bench.recorded_result(record, "gpus8_linear/seed1", cfg) is None
    assert bench.recorded_result({}, "gpus8_linear/seed0", cfg) is None
    cfg.SOLVER.BASE_LR = 0.04
    assert bench.recorded_result(record, "gpus8_linear/seed0", cfg) is None


def _table_row(series, gpus, ap50_per_seed, steps, epochs, batch):
    return {
        "series": series,
        "GPUs (simulated)": gpus,
        "total batch": batch,
        "AP50 per seed": " / ".join(f"{v:.1f}" for v in ap50_per_seed),
        "AP50 mean": sum(ap50_per_seed) / len(ap50_per_seed),
        "steps": steps,
        "epochs": epochs,
    }


def test_row_verdicts_against_the_reference_and_the_late_noise_scale(bench):
    linear, kept, ada = (bench.SERIES[k] for k in ("linear", "none", "adascale"))
    table = [
        _table_row(linear, 1, [70.0, 72.0], 3000, 6.0, 1),  # reference: 71
        _table_row(linear, 2, [70.5, 70.1], 1500, 6.0, 2),  # -0.7: held
        _table_row(linear, 8, [60.0, 62.0], 375, 6.0, 8),  # -10: not held
        _table_row(kept, 8, [55.0], 375, 6.0, 8),  # 6 below linear
        _table_row(ada, 8, [70.4, 71.0], 900, 14.4, 8),  # -0.3
    ]
    got = {(v["series"], v["GPUs"]): v for v in bench.row_verdicts(table, 5.0)}
    assert set(got) == {(linear, 2), (linear, 8), (kept, 8), (ada, 8)}
    key = "predicted to hold (batch <= B_simple late)"
    assert got[linear, 2][key] == "yes" and got[linear, 8][key] == "no"
    assert got[linear, 2]["held (within 1 AP50)"] == "yes"
    assert got[linear, 8]["held (within 1 AP50)"] == "no"
    assert got[linear, 8]["AP50 - reference"] == -10.0
    assert got[kept, 8]["kept >= 3 below linear"] == "yes"
    assert got[ada, 8]["held (within 1 AP50)"] == "yes"
    assert (got[ada, 8]["steps"], got[ada, 8]["epochs"], got[ada, 8]["seeds"]) == (900, 14.4, 2)
    # E = E_min (1 + B / 5): the reference (B 1) ran 6 epochs = 1.2 E_min, so E_min = 5 epochs
    # and batch 8 needs 5 x 2.6 = 13 epochs, batch 2 needs 5 x 1.4 = 7.
    predicted = "epochs predicted for the reference's progress"
    assert got[ada, 8][predicted] == 13.0 and got[linear, 2][predicted] == 7.0
    unmeasured = bench.row_verdicts(table, None)
    assert {v[key] for v in unmeasured} == {v[predicted] for v in unmeasured} == {None}
    assert bench.row_verdicts(table[1:], 5.0) == []  # no reference: nothing to compare


def test_late_noise_scale_is_the_smallest_resolved_value_of_the_second_half(bench, tmp_path):
    path = tmp_path / "noise_over_training.json"
    assert bench.late_noise_scale(path) is None
    values = [2.0, 4.0, 8.0, 30.0, 12.0, None, 20.0]  # the first curve is the preset's own
    curves = {"default: as written": [{"B_simple": v} for v in values], "other": [{"B_simple": 1}]}
    path.write_text(json.dumps({"curves": curves}))
    assert bench.late_noise_scale(path) == 12.0  # of 30, 12, unresolved, 20
    curves["default: as written"] = [{"B_simple": 3.0}, {"B_simple": None}]
    path.write_text(json.dumps({"curves": curves}))
    assert bench.late_noise_scale(path) is None


def test_noise_over_training_points_are_the_start_and_every_checkpoint(tmp_path):
    path = REPO / "benchmarks" / "noise_scale_over_training.py"
    spec = importlib.util.spec_from_file_location("noise_over_training_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    names = ("model_0000999.pth", "model_0000499.pth", "model_0002999.pth", "model_final.pth")
    for name in (*names, "last_checkpoint"):
        (tmp_path / name).write_text("")
    points = module.measurement_points(tmp_path, 3000)
    assert [start for start, _ in points] == [0, 500, 1000, 3000]
    assert points[0][1] == "" and points[-1][1].endswith("model_final.pth")


def test_runs_from_different_environments_are_not_put_in_one_table(bench, cfg, tmp_path):
    """Two runs of a table, one read from its folder's summary.json and one from an earlier
    sitting's results.json (``--record``), each with the environment it was made in."""
    from det_scaling.utils.environment import collect_environment

    here = collect_environment(world_size=1, seeds={"configured": 0, "used": 0})
    one_gpu = bench.one_gpu_cfg(bench.epoch_schedule(cfg, 2.0))
    reference, eight = bench.plan_rows([1, 8], 1, [], ("linear",))
    first = bench.row_cfg(one_gpu, reference, 0, tmp_path)
    folder = Path(first.OUTPUT_DIR)
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(first.dump())
    summary = {
        "metrics": {"bbox/AP50": 40.0, "bbox/AP": 20.0},
        "epochs_seen": 2.0,
        "train_time_s": 1.0,
        "gradient_noise": None,
        "environment": here,
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    second = bench.row_cfg(one_gpu, eight, 0, tmp_path)
    elsewhere = json.loads(json.dumps(here))
    elsewhere["cpu"]["capability"] = "AVX512" if here["cpu"]["capability"] != "AVX512" else "AVX2"
    recorded_run = {
        "config_sha256": bench.config_sha256(second),
        "result": {"AP50": 39.0, "AP": 19.0, "lr": 0.08, "total_batch": 16, "steps": 50},
        "environment": elsewhere,
    }
    record = {"runs": {"gpus8_linear/seed0": recorded_run}}
    runs = {
        "gpus1_linear/seed0": bench.run_entry(reference, "gpus1_linear/seed0", first, {}, "-"),
        "gpus8_linear/seed0": bench.run_entry(eight, "gpus8_linear/seed0", second, record, "r"),
    }
    assert runs["gpus1_linear/seed0"]["environment"] == here  # results.json keeps each one
    assert runs["gpus8_linear/seed0"]["environment"] == elsewhere
    assert runs["gpus8_linear/seed0"]["source"] == "r"
    with pytest.raises(SystemExit) as refused:
        bench.check_environments(runs)
    message = str(refused.value)
    assert "\n" not in message
    assert "gpus1_linear/seed0 and gpus8_linear/seed0 differ: CPU capability " in message
    assert "--mixed-environments" in message
    bench.check_environments(runs, mixed=True)  # allowed with the flag

    runs["gpus8_linear/seed0"]["environment"] = json.loads(json.dumps(here))
    runs["gpus8_linear/seed0"]["environment"]["det_scaling"]["commit"] = "0" * 40
    bench.check_environments(runs)  # another commit: the same numbers
    del recorded_run["environment"]  # a record without one
    runs["gpus8_linear/seed0"] = bench.run_entry(eight, "gpus8_linear/seed0", second, record, "r")
    with pytest.raises(SystemExit, match="no environment recorded for gpus8_linear/seed0"):
        bench.check_environments(runs)

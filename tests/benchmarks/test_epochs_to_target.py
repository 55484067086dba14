"""benchmarks/epochs_to_target.py: the budgets it plans, the configs it trains, and the epochs to
target, paired intervals and verdicts it reports."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import det_scaling

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    # benchmarks/ is not a package: load the script as a module (its main() does not run).
    path = REPO / "benchmarks" / "epochs_to_target.py"
    spec = importlib.util.spec_from_file_location("epochs_to_target_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while created
    sys.path.insert(0, str(path.parent))  # as when the script runs: benchmarks/_environment.py
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(path.parent))
        del sys.modules[spec.name]


PREDICTIONS = {
    "reference_batch": 64,
    "reference_epochs": 8.0,
    "dataset_size": 1438,
    "multiples": {"2": {"epochs": 9.0}, "4": {"epochs": 10.0}, "8": {"epochs": 12.0}},
}


def test_epochs_to_target_interpolates_between_the_budgets_around_the_crossing(bench):
    assert bench.epochs_to_target({6.0: 90.0, 8.0: 94.0, 10.0: 95.0}, 92.0) == (
        7.0,
        "interpolated",
    )
    assert bench.epochs_to_target({6.0: 93.0, 8.0: 94.0}, 92.0) == (6.0, "at most")
    assert bench.epochs_to_target({6.0: 80.0, 8.0: 85.0}, 92.0) == (8.0, "more than")


def test_paired_intervals_give_the_three_verdicts(bench):
    holds = bench.paired_interval([-0.2, 0.1, -0.1, 0.3])
    assert holds[1] > -1 and bench.verdict(holds) == "holds"
    assert bench.verdict(bench.paired_interval([-3.0, -2.5, -3.2])) == "breaks"
    assert bench.verdict(bench.paired_interval([-3.0, 1.0, -0.5])) == "undecided"
    assert bench.verdict(bench.paired_interval([0.5])) == "too few seeds"


def test_planned_runs_cover_the_budgets_seeds_and_controls(bench):
    task = bench.TASKS["digits"]
    runs = bench.planned_runs(task, PREDICTIONS, {"runs": {}})
    keys = {run.key for run in runs}
    assert len(keys) == len(runs)
    # The reference at 0.75x and 1x, 5 seeds; 2x and 4x at 3 budgets x 3 seeds; 8x 3 x 5.
    assert sum(run.multiple == 8 and run.rule == "linear" for run in runs) == 15
    assert {run.epochs for run in runs if run.multiple == 2} == {6.75, 9.0, 12.0}
    assert {run.epochs for run in runs if run.multiple == 1} == {6.0, 8.0, 16.0}
    # AdaScale first; linear at its measured epochs once all its seeds are in.
    assert not any(run.multiple == 4 and run.epochs == 13.5 for run in runs)
    measured = {f"x4_adascale_8.000ep/seed{s}": {"epochs": 13.5, "metric": 95.0} for s in (0, 1, 2)}
    later = bench.planned_runs(task, PREDICTIONS, {"runs": measured})
    assert {run.seed for run in later if (run.multiple, run.epochs) == (4, 13.5)} == {0, 1, 2}


def _results(rows: dict[tuple[int, float], float], task) -> dict:
    """A results record: every seed of each (multiple, epochs) at that mean metric."""
    return {
        "runs": {
            f"x{multiple}_linear_{epochs:.3f}ep/seed{seed}": {"metric": metric}
            for (multiple, epochs), metric in rows.items()
            for seed in task.seeds[multiple]
        }
    }


def test_budgets_extend_until_they_bracket_each_batchs_crossing(bench):
    task = bench.TASKS["digits"]
    # The target is 96 - 1: the reference reaches it at its smallest budget, 2x at none.
    rows = {(1, 6.0): 95.5, (1, 8.0): 96.0, (2, 6.75): 90.0, (2, 9.0): 91.0, (2, 12.0): 92.0}
    runs = bench.planned_runs(task, PREDICTIONS, _results(rows, task))
    budgets = {
        m: {r.epochs for r in runs if r.multiple == m and r.rule == "linear"} for m in (1, 2)
    }
    assert budgets[1] == {4.5, 6.0, 8.0, 16.0}  # 0.75x below; 16: the longest budget's control
    assert budgets[2] == {6.75, 9.0, 12.0, 16.0}  # 4/3x above
    assert {r.seed for r in runs if (r.multiple, r.epochs) == (1, 4.5)} == set(task.seeds[1])
    # Once crossed (2x reaches the target at 16), no more; the reference goes on down to 3 below.
    rows |= {(1, 4.5): 95.2, (2, 16.0): 95.5}
    runs = bench.planned_runs(task, PREDICTIONS, _results(rows, task))
    assert {r.epochs for r in runs if r.multiple == 2} == {6.75, 9.0, 12.0, 16.0}
    assert min(r.epochs for r in runs if r.multiple == 1) == 3.375
    rows |= {(1, 3.375): 95.1, (1, 2.531): 95.05}
    runs = bench.planned_runs(task, PREDICTIONS, _results(rows, task))
    assert min(r.epochs for r in runs if r.multiple == 1) == 2.531  # EXTENSIONS reached
    # An extension past the grid's longest budget leaves the reference's control where it was.
    rows |= {(8, 9.0): 80.0, (8, 12.0): 85.0, (8, 16.0): 90.0}
    runs = bench.planned_runs(task, PREDICTIONS, _results(rows, task))
    assert 21.333 in {r.epochs for r in runs if r.multiple == 8}
    assert max(r.epochs for r in runs if r.multiple == 1) == 16.0


def test_only_crossings_enter_the_critical_batch_fit(bench):
    task = bench.TASKS["digits"]
    # Every batch reaches the target at its smallest budget: bounds, no point to fit.
    rows = {(1, 6.0): 96.0, (1, 8.0): 96.0, (2, 6.75): 96.0, (2, 9.0): 96.0}
    analysis = bench.analyse(task, PREDICTIONS, _results(rows, task))
    assert [b["how"] for b in analysis["batches"][:2]] == ["at most", "at most"]
    assert analysis["fit"] is None


def test_the_measured_factor_is_against_the_references_own_crossing(bench):
    task = bench.TASKS["digits"]
    rows = {(1, 6.0): 94.0, (1, 8.0): 96.0, (8, 9.0): 90.0, (8, 12.0): 95.5, (8, 16.0): 97.0}
    batches = {
        b["multiple"]: b for b in bench.analyse(task, PREDICTIONS, _results(rows, task))["batches"]
    }
    assert batches[1]["measured"] == pytest.approx(7.0)  # the target: 96 - 1
    assert batches[1]["measured_factor"] == pytest.approx(1.0)
    assert batches[8]["measured"] == pytest.approx(9.0 + 3.0 * 5.0 / 5.5)
    assert batches[8]["predicted_factor"] == pytest.approx(12.0 / 8.0)
    assert batches[8]["measured_factor"] == pytest.approx(batches[8]["measured"] / 7.0)
    assert batches[2]["how"] == "more than" and batches[2]["measured_factor"] is None
    assert bench._error(batches[8]) == f"{100 * (12.0 / batches[8]['measured'] - 1):+.0f}%"


def test_adascale_is_paired_with_linear_at_its_own_mean_epochs(bench):
    task = bench.TASKS["digits"]
    record = _results({(1, 8.0): 96.0}, task)
    for seed, (epochs, metric) in enumerate([(12.0, 97.0), (13.0, 96.0), (14.0, 98.0)]):
        record["runs"][f"x4_adascale_8.000ep/seed{seed}"] = {"metric": metric, "epochs": epochs}
    assert bench.analyse(task, PREDICTIONS, record)["equal_budget"][0]["seeds"] == 0
    assert bench.Run(4, 13.0, "linear", 2) in bench.planned_runs(task, PREDICTIONS, record)
    for seed, metric in enumerate([96.0, 95.0, 96.0]):
        record["runs"][f"x4_linear_13.000ep/seed{seed}"] = {"metric": metric, "epochs": 13.0}
    (row,) = bench.analyse(task, PREDICTIONS, record)["equal_budget"]
    assert (row["multiple"], row["epochs"], row["seeds"]) == (4, 13.0, 3)
    assert row["adascale"] == pytest.approx(97.0) and row["linear"] == pytest.approx(
        95.667, abs=1e-3
    )
    mean, low, high = row["adascale - linear"]
    assert mean == pytest.approx(4.0 / 3.0) and low < mean < high


def test_run_config_has_the_budget_the_batch_and_the_reference_warmup(bench, tmp_path):
    base = det_scaling.load_cfg(str(REPO / bench.TASKS["digits"].config))
    base.SCALING.DATASET_SIZE = 1438
    cfg = bench.run_cfg(base, bench.Run(4, 12.0, "linear", 3), tmp_path)
    written = base.SCALING.EPOCHS
    assert cfg.SOLVER.IMS_PER_BATCH == 4 * base.SOLVER.IMS_PER_BATCH
    assert cfg.SCALING.EPOCHS.MAX == 12.0 and cfg.SEED == 3
    fractions = [step / written.MAX for step in written.STEPS]
    assert [step / 12.0 for step in cfg.SCALING.EPOCHS.STEPS] == pytest.approx(fractions)
    assert cfg.SCALING.EPOCHS.WARMUP == written.WARMUP
    assert cfg.SOLVER.MAX_ITER == round(12.0 * 1438 / cfg.SOLVER.IMS_PER_BATCH)
    assert cfg.OUTPUT_DIR == str(tmp_path / "x4_linear_12.000ep" / "seed3")

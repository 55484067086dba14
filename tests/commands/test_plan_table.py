"""The plan table's epochs line past the reference batch: the epochs factor of each GPU count by
the critical-batch law, or how to measure B_crit, under the keys of the config's own format."""

from __future__ import annotations

from pathlib import Path

import det_scaling  # first: installs the detectron2 compatibility layer

# isort: split
from det_scaling.commands.plan import format_plan_table

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny"  # written for 2 GPUs
LAW = (
    "epochs: past the critical batch B_crit, a batch B needs (1 + B / B_crit) / (1 + B_ref / "
    "B_crit)\ntimes the reference's for its progress (McCandlish et al. 2018)"
)
B_CRIT_11 = ["SCALING.NOISE_SCALE.B_CRIT", "11.1", "SCALING.DATASET_SIZE", "500"]


def test_without_b_crit_the_table_says_how_to_measure_it_with_the_yacs_keys():
    table = format_plan_table(det_scaling.load_cfg(f"{TINY}.yaml"), [1, 8])
    assert table.endswith(
        f"{LAW}.\nMeasure B_crit with `det-scaling advise CONFIG`; then set "
        "SCALING.NOISE_SCALE.B_CRIT and SCALING.SCHEDULE noise"
    )


def test_a_lazy_config_gets_its_own_keys_and_no_yaml_only_command():
    table = format_plan_table(det_scaling.load_cfg(f"{TINY}.py"), [1, 8])
    assert table.endswith(
        "Measure B_crit in training (docs/scaling.md); then set train.scaling.noise_scale.b_crit "
        "and train.scaling.schedule noise"
    )


def test_with_b_crit_each_gpu_count_gets_its_epochs_factor():
    # 2 GPUs x 1 image for 1500 steps: 6 epochs of 500 images; 8 GPUs: batch 8.
    table = format_plan_table(det_scaling.load_cfg(f"{TINY}.yaml", B_CRIT_11), [1, 2, 8])
    lines = table.splitlines()
    start = lines.index(LAW.splitlines()[1] + ", with B_crit 11.1:")
    assert lines[start + 1 :] == [
        "1 GPU: 0.92x the epochs, 5.5 of 6.0 (batch 1)",
        "2 GPUs: 1.00x the epochs, 6.0 of 6.0 (batch 2)",
        "8 GPUs: 1.46x the epochs, 8.7 of 6.0 (batch 8)",
        "the table keeps the images; SCALING.SCHEDULE noise trains these epochs",
    ]


def test_under_the_noise_schedule_the_table_trains_the_epochs_it_states():
    cfg = det_scaling.load_cfg(f"{TINY}.yaml", [*B_CRIT_11, "SCALING.SCHEDULE", "noise"])
    table = format_plan_table(cfg, [2, 8])
    assert "; schedule: noise, B_crit 11.1" in table.splitlines()[0]
    row = next(line for line in table.splitlines() if line.startswith("|      8 |"))
    assert row.split("|")[-2].strip() == "8.75"  # the epochs column: 547 steps x 8 / 500
    assert table.endswith("8 GPUs: 1.46x the epochs, 8.7 of 6.0 (batch 8)")


def test_no_epochs_line_without_a_larger_batch_or_under_adascale():
    cfg = det_scaling.load_cfg(f"{TINY}.yaml")
    assert LAW not in format_plan_table(cfg, [1, 2])  # never past the written 2 GPUs
    adascale = det_scaling.load_cfg(f"{TINY}.yaml", ["SCALING.RULE", "adascale"])
    assert LAW not in format_plan_table(adascale, [2, 8])

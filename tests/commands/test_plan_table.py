"""The plan table's pointer past the linear rule: shown when the linear rule scales the batch up,
naming the rule key of the config's own format."""

from __future__ import annotations

from pathlib import Path

import det_scaling  # first: applies the detectron2 compatibility layer

# isort: split
from det_scaling.commands.plan import format_plan_table

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny"  # written for 2 GPUs
POINTER = "past it, consider"


def test_the_linear_rule_scaling_up_points_to_adascale_with_the_yacs_key():
    table = format_plan_table(det_scaling.load_cfg(f"{TINY}.yaml"), [1, 8])
    assert table.endswith(
        "linear rule: holds while the total batch is at most the gradient noise scale B_simple\n"
        "(measured by det-scaling noise-scale CONFIG); past it, consider SCALING.RULE adascale"
    )


def test_no_pointer_without_a_larger_batch_or_under_another_rule():
    cfg = det_scaling.load_cfg(f"{TINY}.yaml")
    assert POINTER not in format_plan_table(cfg, [1, 2])  # never past the written 2 GPUs
    kept = det_scaling.load_cfg(f"{TINY}.yaml", ["SCALING.RULE", "none"])
    assert POINTER not in format_plan_table(kept, [1, 8])


def test_a_lazy_config_gets_its_own_key_and_no_yaml_only_command():
    table = format_plan_table(det_scaling.load_cfg(f"{TINY}.py"), [1, 8])
    assert table.splitlines()[-1] == (
        "(measured in training: docs/scaling.md); past it, consider train.scaling.rule adascale"
    )

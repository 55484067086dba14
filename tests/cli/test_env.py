"""``det-scaling env``: detectron2's environment table, then det-scaling's rows; ``--json``, the
record every summary.json holds."""

from __future__ import annotations

import json

import torch
from helpers.cli import run_cli

from det_scaling.utils.environment import collect_environment


def rows(text: str) -> dict[str, str]:
    """The ``name  value`` rows of tabulate's plain tables, by name."""
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition("  ")
        if name and value.strip() and not line.startswith("-"):
            found.setdefault(name, value.strip())
    return found


def test_env_prints_detectron2s_table_then_det_scalings_rows(capsys):
    code, out, _ = run_cli(capsys, "env")
    assert code == 0
    table = rows(out)
    record = collect_environment()
    assert table["detectron2"].startswith(record["versions"]["detectron2"])  # detectron2's rows
    assert table["PyTorch"].startswith(torch.__version__)
    assert "PyTorch built with:" in out
    assert out.index("PyTorch built with:") < out.index("det_scaling commit")  # then ours
    assert table["det_scaling commit"] == record["det_scaling"]["commit"]
    assert table["det_scaling dirty"] == ("yes" if record["det_scaling"]["dirty"] else "no")
    assert table["CPU capability"] == torch.backends.cpu.get_cpu_capability()
    assert table["torch threads"] == str(torch.get_num_threads())
    assert "MKL_CBWR" in table and "CUBLAS_WORKSPACE_CONFIG" in table


def test_env_json_is_the_record(capsys):
    code, out, _ = run_cli(capsys, "env", "--json")
    assert code == 0
    printed = json.loads(out)
    record = collect_environment()
    assert printed.keys() == record.keys()
    for key in ("det_scaling", "versions", "cpu", "gpu", "threads", "numerics_variables"):
        assert printed[key] == record[key], key

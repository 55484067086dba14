"""The machine a run would be made on (what ``env`` prints): detectron2's ``collect_env_info``
table, then det-scaling's additions in the same style."""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

from det_scaling.utils.environment import NUMERICS_VARIABLES, collect_environment
from det_scaling.utils.logs import quiet_logger

__all__ = ["environment_report", "format_additions"]


def format_additions(record: dict[str, Any]) -> str:
    """What a record (:func:`~det_scaling.utils.environment.collect_environment`) adds to
    detectron2's table: det_scaling's source, CPU, threads, the numerics variables."""
    source, cpu, threads = record["det_scaling"], record["cpu"], record["threads"]
    dirty = source["dirty"]
    rows = [
        ("det_scaling", source["version"]),
        ("det_scaling commit", source["commit"]),
        ("det_scaling dirty", "unknown" if dirty is None else ("yes" if dirty else "no")),
        ("CPU", cpu["model"]),
        ("CPU family/model", cpu["family_model"] or "unknown"),
        ("CPU capability", cpu["capability"]),
        ("CPUs", cpu["count"]),
        ("torch threads", threads["torch"]),
        ("torch interop threads", threads["torch_interop"]),
        ("deterministic algorithms", record["deterministic_algorithms"]),
    ]
    gpu = record["gpu"]
    if gpu is not None:
        rows += [("CUDA", gpu["cuda"]), ("cuDNN", gpu["cudnn"]), ("NVIDIA driver", gpu["driver"])]
    variables = record["numerics_variables"]
    rows += [(name, variables[name] or "<not set>") for name in NUMERICS_VARIABLES]
    return tabulate(rows)


def environment_report() -> str:
    """detectron2's ``collect_env_info()`` followed by :func:`format_additions` of this
    process's record."""
    from detectron2.utils.collect_env import collect_env_info

    # Importing torch's C++ extension builder on a machine without CUDA warns that it found none:
    # the table's "GPU available" row says so already.
    with quiet_logger("torch.utils.cpp_extension"):
        table = collect_env_info().rstrip()
    return f"{table}\n\n{format_additions(collect_environment())}"

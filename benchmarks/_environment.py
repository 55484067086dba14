"""The results file of a benchmark, with the environment of the machine that ran it."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import det_scaling  # noqa: F401  (first: the detectron2 compatibility layer)
from det_scaling.utils.environment import collect_environment


def write_results(
    path: Path,
    record: dict[str, Any],
    *,
    indent: int = 2,
    world_size: int | None = None,
    seeds: Any = None,
    datasets: Iterable[str] = (),
) -> None:
    """Writes ``record`` as JSON to ``path`` with an ``environment`` block:
    :func:`~det_scaling.utils.environment.collect_environment` of this process, with the
    processes, seeds and registered data sets of the benchmark."""
    environment = collect_environment(world_size=world_size, seeds=seeds, datasets=datasets)
    path.write_text(json.dumps({**record, "environment": environment}, indent=indent) + "\n")

"""Deterministic kernels for a run that must repeat bit for bit on a GPU (``DETERMINISTIC``,
``train.deterministic`` in a LazyConfig).

On the CPU a fixed ``SEED`` already repeats bit for bit with one thread per process. On CUDA,
cuDNN's autotuner, cuBLAS's workspaces and atomic-add kernels make two runs differ; this asks
torch for its deterministic kernels instead.
"""

from __future__ import annotations

import os

import torch

__all__ = ["use_deterministic_kernels"]

# cuBLAS repeats its results only with a fixed workspace (CUDA's documentation, "Results
# reproducibility"); it is read when the first cuBLAS handle is made, so before the first step.
_CUBLAS_WORKSPACE = ":4096:8"


def use_deterministic_kernels() -> None:
    """Makes this process use deterministic kernels: cuDNN's deterministic algorithms without
    its autotuner, cuBLAS with a fixed workspace and torch's deterministic implementations.
    Operations that have none (some CUDA backward passes) warn once, naming themselves, instead
    of stopping training: comparing two runs' weights tells whether they mattered."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", _CUBLAS_WORKSPACE)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)

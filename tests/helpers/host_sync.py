"""A context in which reading a tensor's value on the host raises: for tests that a step runs
without host-device synchronization (each such read is a sync on a GPU)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_HOST_CONVERSIONS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def host_reads_forbidden() -> Iterator[None]:
    """Makes every Python-side read of a tensor's value raise ``AssertionError``."""

    def forbidden(name: str):
        def raise_error(self, *args, **kwargs):
            raise AssertionError(f"Tensor.{name} called: a host-device synchronization")

        return raise_error

    saved = {name: getattr(torch.Tensor, name) for name in _HOST_CONVERSIONS}
    try:
        for name in _HOST_CONVERSIONS:
            setattr(torch.Tensor, name, forbidden(name))
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)

"""A context in which a tensor operation that would make the host wait for the device raises: for
tests that a step runs without host-device synchronization, checked on the CPU.

Caught: reading a value on the host (``item``, ``tolist``, ``numpy``, ``bool()``, ``float()``,
``int()``, use as an index), copying to the CPU (``cpu()``, ``to("cpu")``), and the operations
whose output size depends on the values, which a GPU must report to the host first
(``torch.nonzero`` / ``Tensor.nonzero``, ``torch.argwhere``, ``torch.masked_select``,
single-argument ``torch.where``, indexing or assigning with a boolean mask, ``t[mask]``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

# Tensor methods that always synchronize.
_HOST_CONVERSIONS = (
    "item",
    "tolist",
    "numpy",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "cpu",
    "nonzero",
    "argwhere",
    "masked_select",
)
# torch functions that always synchronize.
_SIZE_FROM_VALUES = ("nonzero", "argwhere", "masked_select")
_MASK_DTYPES = (torch.bool, torch.uint8)


def _has_mask(index: Any) -> bool:
    """Whether an index (of ``t[index]``) holds a boolean (or byte) tensor mask."""
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(part, torch.Tensor) and part.dtype in _MASK_DTYPES for part in parts)


def _to_cpu(args: tuple, kwargs: dict) -> bool:
    """Whether ``Tensor.to(*args, **kwargs)`` names the CPU as the device."""
    for target in (*args[:1], kwargs.get("device")):
        if isinstance(target, str | torch.device) and torch.device(target).type == "cpu":
            return True
    return False


@contextlib.contextmanager
def host_reads_forbidden() -> Iterator[None]:
    """Makes every operation listed in the module raise ``AssertionError``, naming it."""

    def sync_error(name: str) -> AssertionError:
        return AssertionError(f"{name} called: a host-device synchronization")

    def forbidden(name: str):
        def raise_error(*args, **kwargs):
            raise sync_error(name)

        return raise_error

    original_getitem = torch.Tensor.__getitem__
    original_setitem = torch.Tensor.__setitem__
    original_to = torch.Tensor.to
    original_where = torch.where

    def getitem(self, index):
        if _has_mask(index):
            raise sync_error("Tensor.__getitem__ with a boolean mask")
        return original_getitem(self, index)

    def setitem(self, index, value):
        if _has_mask(index):
            raise sync_error("Tensor.__setitem__ with a boolean mask")
        return original_setitem(self, index, value)

    def to(self, *args, **kwargs):
        if _to_cpu(args, kwargs):
            raise sync_error("Tensor.to the CPU")
        return original_to(self, *args, **kwargs)

    def where(condition, *args, **kwargs):
        if not args and not kwargs:  # torch.where(condition) is torch.nonzero(condition)
            raise sync_error("torch.where with one argument")
        return original_where(condition, *args, **kwargs)

    replacements = [(torch.Tensor, name, forbidden(f"Tensor.{name}")) for name in _HOST_CONVERSIONS]
    replacements += [(torch, name, forbidden(f"torch.{name}")) for name in _SIZE_FROM_VALUES]
    replacements += [
        (torch.Tensor, "__getitem__", getitem),
        (torch.Tensor, "__setitem__", setitem),
        (torch.Tensor, "to", to),
        (torch, "where", where),
    ]

    # What each owner holds itself (Tensor inherits most of these from its C base class).
    saved = [(owner, name, owner.__dict__.get(name)) for owner, name, _ in replacements]
    try:
        for owner, name, replacement in replacements:
            setattr(owner, name, replacement)
        yield
    finally:
        for owner, name, original in saved:
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)

"""The CPU guard against host-device synchronization (tests/helpers/host_sync.py): each operation
that would make the host wait for a GPU raises inside it, operations that stay on the device do
not, and everything is as before once it is left."""

from __future__ import annotations

import pytest
import torch
from helpers.host_sync import host_reads_forbidden


def _values() -> torch.Tensor:
    return torch.tensor([[0.0, 1.5], [-2.0, 0.0]])


SYNCHRONIZING = {
    "Tensor.item": lambda t: t[0, 1].item(),
    "Tensor.tolist": lambda t: t.tolist(),
    "Tensor.numpy": lambda t: t.numpy(),
    "Tensor.__bool__": lambda t: bool(t.sum() > 0),
    "Tensor.__float__": lambda t: float(t.sum()),
    "Tensor.__int__": lambda t: int(t.sum()),
    "Tensor.__index__": lambda t: [1, 2, 3][torch.tensor(1)],
    "Tensor.cpu": lambda t: t.cpu(),
    "Tensor.to the CPU": lambda t: t.to("cpu"),
    "Tensor.to the CPU (device=)": lambda t: t.to(device=torch.device("cpu")),
    "Tensor.nonzero": lambda t: t.nonzero(),
    "torch.nonzero": lambda t: torch.nonzero(t),
    "torch.argwhere": lambda t: torch.argwhere(t),
    "torch.masked_select": lambda t: torch.masked_select(t, t > 0),
    "torch.where with one argument": lambda t: torch.where(t > 0),
    "Tensor.__getitem__ with a boolean mask": lambda t: t[t > 0],
    "Tensor.__getitem__ with a boolean mask (in a tuple)": lambda t: t[:, t[0] == 0],
    "Tensor.__setitem__ with a boolean mask": lambda t: t.__setitem__(t > 0, 0.0),
}


@pytest.mark.parametrize("operation", SYNCHRONIZING)
def test_each_synchronizing_operation_raises_naming_itself(operation: str) -> None:
    values = _values()
    # The message names the operation (the label, less any parenthesis of this test's).
    with host_reads_forbidden(), pytest.raises(AssertionError) as raised:
        SYNCHRONIZING[operation](values)
    assert str(raised.value).startswith(operation.split(" (")[0] + " called")


def test_operations_that_stay_on_the_device_are_allowed() -> None:
    values = _values()
    mask = values > 0
    with host_reads_forbidden():
        masked = torch.where(mask, values, torch.zeros_like(values))
        filled = values.masked_fill(~mask, -1.0)
        row, column = values[1].clone(), values[:, 0].clone()
        gathered = values[torch.tensor([1, 0])]  # an integer index tensor: a gather
        values[0, 0] = 3.0
        values[torch.tensor([1])] = 4.0
        cast = values.to(torch.float64)
    assert torch.equal(masked, torch.tensor([[0.0, 1.5], [0.0, 0.0]]))
    assert torch.equal(filled, torch.tensor([[-1.0, 1.5], [-1.0, -1.0]]))
    assert torch.equal(row, torch.tensor([-2.0, 0.0]))
    assert torch.equal(column, torch.tensor([0.0, -2.0]))
    assert torch.equal(gathered[0], torch.tensor([-2.0, 0.0]))
    assert torch.equal(values, torch.tensor([[3.0, 1.5], [4.0, 4.0]]))
    assert cast.dtype == torch.float64


def test_everything_works_again_after_the_guard() -> None:
    originals = {
        name: torch.Tensor.__dict__.get(name) for name in ("cpu", "nonzero", "__getitem__", "to")
    }
    with pytest.raises(AssertionError), host_reads_forbidden():
        torch.nonzero(torch.ones(2))
    assert {name: torch.Tensor.__dict__.get(name) for name in originals} == originals
    values = _values()
    assert values[values > 0].tolist() == [1.5]
    assert torch.nonzero(values).tolist() == [[0, 1], [1, 0]]
    assert torch.where(values > 0)[1].tolist() == [1]
    assert values.cpu().to("cpu").nonzero().shape == (2, 2)
    assert float(values.sum()) == -0.5

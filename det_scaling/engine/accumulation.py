"""Gradient accumulation: one optimizer step over several micro-batches.

``SOLVER.IMS_PER_BATCH`` is the total batch of one optimizer step. With
``SCALING.GRAD_ACCUM_STEPS = A`` on ``W`` processes, each process loads micro-batches of
``IMS_PER_BATCH / (W * A)`` images (:attr:`BatchSchedule.micro_batch`) and sums the gradients of
``A`` of them before stepping, so a 1-GPU run keeps the total batch (and LR) of an 8-GPU config.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import torch
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

from det_scaling.batch_schedule import BatchSchedule
from det_scaling.failures import ConsequenceOfAnotherRank
from det_scaling.formats import config_format

__all__ = [
    "AccumulatingTrainer",
    "GradientObserver",
    "NonFiniteLossOnAnotherRank",
    "micro_batch_cfg",
]


class NonFiniteLossOnAnotherRank(FloatingPointError, ConsequenceOfAnotherRank):
    """The main process's mean loss is not finite, though its own loss is: another rank's loss
    is not finite, and that rank says so itself."""


def micro_batch_cfg(cfg: Any, schedule: BatchSchedule) -> Any:
    """A copy of ``cfg`` for building the training loader: its total batch
    (``SOLVER.IMS_PER_BATCH``, ``dataloader.train.total_batch_size``) is one micro-batch over all
    processes, so loaders that follow detectron2's convention (total / world size per process)
    load micro-batches. ``cfg`` itself when that is already so."""
    images = schedule.micro_batch * schedule.world_size
    fmt = config_format(cfg)
    if fmt.get(fmt.keys.ims_per_batch) == images:
        return cfg
    out = fmt.writable_copy()
    out.set(out.keys.ims_per_batch, images)
    if fmt.is_frozen():
        out.freeze()
    return out.cfg


class GradientObserver(Protocol):
    """Reads the gradients of a step without changing them (e.g. the gradient noise scale).

    :class:`AccumulatingTrainer` calls, for each observer in its ``observers``:
    ``after_backward(micro_batch, accumulation_steps)`` once a micro-batch's backward is done
    (``.grad`` then holds the sum over micro-batches ``0 .. micro_batch`` of their loss divided by
    ``accumulation_steps``; under DDP, all-reduced after the last one only), and
    ``before_optimizer_step()`` once all are done and, with AMP, unscaled.
    """

    def after_backward(self, micro_batch: int, accumulation_steps: int) -> None: ...

    def before_optimizer_step(self) -> None: ...


class AccumulatingTrainer(SimpleTrainer):
    """detectron2's ``SimpleTrainer`` whose step sums the gradients of ``accumulation_steps``
    micro-batches before one ``optimizer.step()``.

    Each micro-batch's losses are divided by ``accumulation_steps``: detectron2's losses are means
    over the micro-batch, DDP averages gradients over processes, so the gradient is the mean over
    the whole ``IMS_PER_BATCH``, as one big batch would give. Under DDP all micro-batches but the
    last run in ``no_sync()``: gradients are all-reduced once per step. The losses logged are the
    means over the micro-batches. With a ``grad_scaler`` (AMP, CUDA only) the forward passes run
    under autocast and the scaler steps the optimizer, as in detectron2's ``AMPTrainer``.

    ``observers`` (:class:`GradientObserver`) read the gradients during the step: the extension
    point for measurements, so that this stays the one implementation of the step.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        data_loader: Iterable,
        optimizer: torch.optim.Optimizer,
        accumulation_steps: int,
        grad_scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        if accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
        super().__init__(model, data_loader, optimizer)
        self.accumulation_steps = accumulation_steps
        self.grad_scaler = grad_scaler
        self.observers: list[GradientObserver] = []

    def run_step(self) -> None:
        assert self.model.training, "[AccumulatingTrainer] model was changed to eval mode!"
        if self.grad_scaler is not None:
            assert torch.cuda.is_available(), "[AccumulatingTrainer] AMP needs CUDA"
        self.optimizer.zero_grad()
        data_time = 0.0
        loss_sums: dict[str, torch.Tensor] = {}
        for micro_batch in range(self.accumulation_steps):
            start = time.perf_counter()
            data = next(self._data_loader_iter)
            data_time += time.perf_counter() - start
            last = micro_batch == self.accumulation_steps - 1
            with self._sync_gradients(last):
                with self._autocast():
                    loss_dict = self.model(data)
                    if isinstance(loss_dict, torch.Tensor):
                        loss_dict = {"total_loss": loss_dict}
                    losses = sum(loss_dict.values()) / self.accumulation_steps
                if self.grad_scaler is not None:
                    losses = self.grad_scaler.scale(losses)
                losses.backward()
            for observer in self.observers:
                observer.after_backward(micro_batch, self.accumulation_steps)
            for name, value in loss_dict.items():
                loss_sums[name] = loss_sums.get(name, 0.0) + value.detach()
        self._write_metrics(
            {name: total / self.accumulation_steps for name, total in loss_sums.items()},
            data_time,
        )
        if self.observers:
            if self.grad_scaler is not None:
                # Observers read true gradients; the scaler's step then does not unscale again.
                self.grad_scaler.unscale_(self.optimizer)
            for observer in self.observers:
                observer.before_optimizer_step()
        if self.grad_scaler is None:
            self.optimizer.step()
        else:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()

    def _write_metrics(
        self, loss_dict: Mapping[str, torch.Tensor], data_time: float, prefix: str = ""
    ) -> None:
        """detectron2's, which raises ``FloatingPointError`` on the main process when the mean
        loss over the processes is not finite. Here a process whose own loss is not finite raises
        too, naming its rank, at the same point (after detectron2's gather, so every process
        leaves the collectives together), and the main process, when its own loss is finite,
        raises :class:`NonFiniteLossOnAnotherRank`: the failure reported is that rank's."""
        local = {name: float(value) for name, value in loss_dict.items()}
        finite_here = all(math.isfinite(value) for value in local.values())
        try:
            super()._write_metrics(loss_dict, data_time, prefix)
        except FloatingPointError as error:
            if finite_here:
                raise NonFiniteLossOnAnotherRank(
                    f"{error}\n(the mean over processes; this process's losses are finite)"
                ) from error
        if not finite_here:
            rank = f" on rank {comm.get_rank()}" if comm.get_world_size() > 1 else ""
            raise FloatingPointError(
                f"Loss became infinite or NaN at iteration={self.iter}{rank}!\nloss_dict = {local}"
            )

    def _sync_gradients(self, sync: bool) -> contextlib.AbstractContextManager:
        if not sync and isinstance(self.model, DistributedDataParallel):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.grad_scaler is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda")

    def state_dict(self) -> dict:
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])

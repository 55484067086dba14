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
import torch.distributed as dist
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

from det_scaling.config import ConfigFormat
from det_scaling.engine.failures import ConsequenceOfAnotherRank
from det_scaling.errors import ConfigError
from det_scaling.scaling.batch_schedule import BatchSchedule

__all__ = [
    "OUT_OF_MEMORY_ERRORS",
    "AccumulatingTrainer",
    "GradientObserver",
    "MicroBatchOutOfMemory",
    "NonFiniteLossOnAnotherRank",
    "micro_batch_cfg",
]

# What running out of device memory raises: torch.cuda.OutOfMemoryError, and torch's
# device-generic torch.OutOfMemoryError (its base class) where torch has it.
OUT_OF_MEMORY_ERRORS: tuple[type[BaseException], ...] = tuple(
    {torch.cuda.OutOfMemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)}
)
# Elements per all-reduce of the gradients when AccumulatingTrainer reduces them itself.
_BUCKET_ELEMENTS = 1 << 22


class NonFiniteLossOnAnotherRank(FloatingPointError, ConsequenceOfAnotherRank):
    """The main process's mean loss is not finite, though its own loss is: another rank's loss
    is not finite, and that rank says so itself."""


def micro_batch_cfg(adapter: ConfigFormat, schedule: BatchSchedule) -> Any:
    """A copy of the adapter's config for building the training loader: its total batch
    (``SOLVER.IMS_PER_BATCH``, ``dataloader.train.total_batch_size``) is one micro-batch over all
    processes, so loaders that follow detectron2's convention (total / world size per process)
    load micro-batches. The config itself when that is already so."""
    images = schedule.micro_batch * schedule.world_size
    if adapter.get(adapter.keys.ims_per_batch) == images:
        return adapter.cfg
    out = adapter.writable_copy()
    out.set(out.keys.ims_per_batch, images)
    if adapter.is_frozen():
        out.freeze()
    return out.cfg


class MicroBatchOutOfMemory(RuntimeError):
    """Raised by every process when, with ``auto_micro_batch``, any process ran out of memory in
    a micro-batch's forward or backward pass: the step was abandoned everywhere (gradients
    zeroed, no optimizer step) and may be retried with smaller micro-batches."""

    def __init__(self, ranks: list[int], micro_batch: int) -> None:
        super().__init__(
            f"out of memory with {micro_batch} image(s) per micro-batch on rank(s) "
            + ", ".join(map(str, ranks))
        )
        self.ranks = ranks


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

    With ``auto_micro_batch`` an out-of-memory error in a forward or backward pass does not end
    the run: after each micro-batch every process takes part in an all-reduce of who ran out of
    memory, so a process that did not cannot be left waiting in a collective, and if any did,
    every process abandons the step and raises :class:`MicroBatchOutOfMemory`. For that, under
    DDP all micro-batches run in ``no_sync()`` and the gradients are all-reduced here once every
    process is past its last backward pass (DDP's own all-reduce runs inside the last backward
    pass, where one process out of memory would leave the others waiting).
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
            raise ConfigError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
        super().__init__(model, data_loader, optimizer)
        self.accumulation_steps = accumulation_steps
        self.grad_scaler = grad_scaler
        self.observers: list[GradientObserver] = []
        self.auto_micro_batch = False
        self.micro_batch = 0  # images per micro-batch and process, for messages (0: unknown)

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
            with self._sync_gradients(last and not self.auto_micro_batch):
                loss_dict = self._forward_backward(data)
            if self.auto_micro_batch:
                self._agree_on_memory(loss_dict is not None)
                if last:
                    self._all_reduce_gradients()
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

    def _forward_backward(self, data: Any) -> dict[str, torch.Tensor] | None:
        """One micro-batch's forward and backward passes; its losses, or None when it ran out of
        memory with ``auto_micro_batch``."""
        try:
            with self._autocast():
                loss_dict = self.model(data)
                if isinstance(loss_dict, torch.Tensor):
                    loss_dict = {"total_loss": loss_dict}
                losses = sum(loss_dict.values()) / self.accumulation_steps
            if self.grad_scaler is not None:
                losses = self.grad_scaler.scale(losses)
            losses.backward()
        except OUT_OF_MEMORY_ERRORS:
            if not self.auto_micro_batch:
                raise
            return None  # the error and its frames (holding the activations) are freed here
        return loss_dict

    def _agree_on_memory(self, fits: bool) -> None:
        """All processes learn which ran out of memory; if any did, each abandons the step."""
        world_size = comm.get_world_size()
        failed = torch.zeros(world_size, dtype=torch.int32, device=_collective_device())
        failed[comm.get_rank()] = int(not fits)
        if world_size > 1:
            dist.all_reduce(failed)
        ranks = [rank for rank, flag in enumerate(failed.tolist()) if flag]
        if ranks:
            self.optimizer.zero_grad(set_to_none=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise MicroBatchOutOfMemory(ranks, self.micro_batch)

    def _all_reduce_gradients(self) -> None:
        """The mean of the gradients over the processes, as DDP's all-reduce gives it."""
        if not isinstance(self.model, DistributedDataParallel):
            return
        world_size = comm.get_world_size()
        grads = []
        for param in self.model.parameters():
            if param.requires_grad:
                if param.grad is None:  # unused here, maybe not elsewhere: DDP reduces zeros
                    param.grad = torch.zeros_like(param)
                grads.append(param.grad)
        for bucket in _buckets(grads):
            flat = torch.cat([grad.reshape(-1) for grad in bucket])
            dist.all_reduce(flat)
            flat /= world_size
            offset = 0
            for grad in bucket:
                grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
                offset += grad.numel()

    def replace_data_loader(self, data_loader: Iterable) -> None:
        """Reads the next micro-batches from ``data_loader`` (detectron2 v0.6 makes the iterator
        when the trainer is built, upstream main on first use)."""
        self.data_loader = data_loader
        if hasattr(self, "_data_loader_iter_obj"):
            self._data_loader_iter_obj = None
        else:
            self._data_loader_iter = iter(data_loader)

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


def _collective_device() -> torch.device:
    """Where a tensor for a collective lives: the current GPU under NCCL, else the CPU."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _buckets(grads: list[torch.Tensor]) -> Iterable[list[torch.Tensor]]:
    """``grads`` in consecutive groups of one dtype and device, about ``_BUCKET_ELEMENTS`` each."""
    bucket: list[torch.Tensor] = []
    size = 0
    for grad in grads:
        if bucket and (
            size + grad.numel() > _BUCKET_ELEMENTS
            or (grad.dtype, grad.device) != (bucket[0].dtype, bucket[0].device)
        ):
            yield bucket
            bucket, size = [], 0
        bucket.append(grad)
        size += grad.numel()
    if bucket:
        yield bucket

"""Preemption without losing a step: on SIGTERM (or SIGUSR1, SIGINT) every process of the run
stops at the same step boundary, the main process writes a complete checkpoint there, and each
exits with :data:`PREEMPTED_EXIT_STATUS`; ``--resume`` (or torchrun, by itself) continues at the
same images seen.

The signal only sets a flag (:func:`armed`); :class:`PreemptionHook` reads it after each step.
The processes agree on the step through one all-reduce of a flag in a gloo group, on the CPU:
no GPU synchronization. A second signal of the same kind is not caught: it ends the process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = [
    "DEFAULT_SIGNALS",
    "PREEMPTED_EXIT_STATUS",
    "Preempted",
    "PreemptionHook",
    "armed",
    "installed",
    "requested",
]

logger = logging.getLogger(__name__)

# 128 + SIGTERM: what a process ended by SIGTERM reports; schedulers read it as "terminated".
PREEMPTED_EXIT_STATUS = 143
DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")

_installed: tuple[int, ...] = ()
_requested: int | None = None


class Preempted(SystemExit):
    """The run stopped at a step boundary after a preemption signal, its checkpoint written:
    exits the process with :data:`PREEMPTED_EXIT_STATUS` (``message`` says where it stopped)."""

    def __init__(self, message: str) -> None:
        super().__init__(PREEMPTED_EXIT_STATUS)
        self.message = message


@contextlib.contextmanager
def armed(signals: Iterable[str] = DEFAULT_SIGNALS) -> Iterator[None]:
    """While the block runs, each of ``signals`` (names: ``"SIGTERM"``, ``"SIGUSR1"``, ...) asks
    this process to stop at the next step boundary (call it in the main thread); the previous
    handlers come back after it."""
    global _installed, _requested
    numbers = tuple(signal.Signals[name] for name in signals)
    previous = {number: signal.signal(number, _request) for number in numbers}
    _installed, _requested = numbers, None
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        _installed, _requested = (), None


def installed() -> bool:
    return bool(_installed)


def requested() -> int | None:
    """The signal that asked this process to stop, if one did."""
    return _requested


def _request(signum: int, frame: Any) -> None:
    global _requested
    if _requested == signum:  # asked twice: no more waiting for the step to end
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _requested = signum
    logger.info("%s received: stopping after this step", signal.Signals(signum).name)


class PreemptionHook(HookBase):
    """After each step: when any process was asked to stop, every process stops there, the main
    process having written a checkpoint of the step (unless the periodic one just did)."""

    def __init__(self) -> None:
        self._group = None

    def before_train(self) -> None:
        if comm.get_world_size() > 1:
            # A gloo group: the flag is a CPU tensor, whatever the training backend.
            gloo = dist.get_backend() == "gloo"
            self._group = dist.group.WORLD if gloo else dist.new_group(backend="gloo")

    def after_step(self) -> None:
        stop = torch.tensor([0 if _requested is None else 1])
        if self._group is not None:
            dist.all_reduce(stop, op=dist.ReduceOp.MAX, group=self._group)
        if not stop.item():
            return
        trainer = self.trainer
        iteration = trainer.iter
        name = f"model_{iteration:07d}"
        checkpointer = trainer.checkpointer
        if comm.is_main_process() and not _just_saved(checkpointer, name):
            checkpointer.save(name, iteration=iteration)
        comm.synchronize()  # the checkpoint is whole before any process exits
        path = os.path.join(checkpointer.save_dir, f"{name}.pth")
        message = (
            f"preempted at iteration {iteration}, images seen {trainer.progress.images_seen}, "
            f"checkpoint {path}"
        )
        logger.info(message)
        raise Preempted(message)


def _just_saved(checkpointer: Any, name: str) -> bool:
    pointer = os.path.join(checkpointer.save_dir, "last_checkpoint")
    try:
        with open(pointer) as f:
            return f.read().strip() == f"{name}.pth"
    except OSError:
        return False

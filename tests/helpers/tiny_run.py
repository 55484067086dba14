"""``tools/train.py`` for the tests' tiny model:
``python tests/helpers/tiny_run.py --config-file ...``.

It registers what the tiny runs of :mod:`helpers.tiny` need in every process (the
``TinyBoxRegressor``, its images under ``$TINY_RUN_DATA``) and a variant with faults that exist
only for tests, then runs ``det-scaling train`` with the arguments given: spawned processes,
several launches, torchrun.

``TinyFaultyRegressor`` reads, in each process:

* ``TINY_RUN_FAULT=RANK:STEP:KIND[@ATTEMPT],...``: at its STEP-th forward pass (from 0) the
  process of global rank RANK raises ``RuntimeError`` (KIND ``raise``), ``ValueError`` (``value``:
  a bug, not a bad input) or ``ConfigError`` (``config``), returns a NaN loss (``nan``), kills
  itself with SIGKILL (``kill``), sends itself SIGTERM (``term``) or sends SIGTERM to its parent,
  the launcher or torchrun's agent (``term-parent``), is killed with SIGKILL halfway through
  writing its next checkpoint (``kill-in-checkpoint``), or truncates the last checkpoint of
  ``$TINY_RUN_OUTPUT`` to half and kills itself (``truncate``); with ``@ATTEMPT``, only in that
  torchrun restart attempt (``TORCHELASTIC_RESTART_COUNT``, 0 without torchrun);
* ``TINY_RUN_LRS``: a file to which the main process appends, as each step starts, the restart
  attempt, the iteration and the LR of its first param group;
* ``TINY_RUN_STEP_SECONDS``: seconds each forward pass sleeps, so that a test can act mid-run;
* ``TINY_RUN_PROGRESS``: a file to which each forward pass appends a line (rank, process id,
  forward pass), so that a test knows how far a run got and which processes ran it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import det_scaling  # noqa: F401  (before detectron2: the compatibility layer)
from det_scaling.errors import ConfigError

# isort: split
import torch
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils import comm

from det_scaling.engine import ScalingTrainer
from det_scaling.testing.tiny import TinyBoxRegressor, register_images


@META_ARCH_REGISTRY.register()
class TinyFaultyRegressor(TinyBoxRegressor):
    """``TinyBoxRegressor`` with the faults and slowness of ``TINY_RUN_FAULT`` and
    ``TINY_RUN_STEP_SECONDS`` (see the module)."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.forward_passes = 0

    def forward(self, batched_inputs):
        losses = super().forward(batched_inputs)
        if self.training:
            step, self.forward_passes = self.forward_passes, self.forward_passes + 1
            time.sleep(float(os.environ.get("TINY_RUN_STEP_SECONDS", "0")))
            if os.environ.get("TINY_RUN_PROGRESS"):
                with open(os.environ["TINY_RUN_PROGRESS"], "a") as f:
                    f.write(f"rank {comm.get_rank()} pid {os.getpid()} forward pass {step}\n")
            for fault in filter(None, os.environ.get("TINY_RUN_FAULT", "").split(",")):
                losses = _inject(fault, step, losses)
        return losses


def _inject(fault: str, step: int, losses: dict) -> dict:
    spec, _, attempt = fault.partition("@")
    rank, at, kind = spec.split(":")
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if comm.get_rank() != int(rank) or step != int(at) or (attempt and int(attempt) != restart):
        return losses
    message = f"injected fault on rank {rank} at step {at}"
    if kind == "raise":
        raise RuntimeError(message)
    if kind == "value":
        raise ValueError(message)
    if kind == "config":
        raise ConfigError(message)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    if kind == "term-parent":
        os.kill(os.getppid(), signal.SIGTERM)
    if kind == "kill-in-checkpoint":
        _kill_in_next_checkpoint()
    if kind == "truncate":
        output = Path(os.environ["TINY_RUN_OUTPUT"])
        last = output / (output / "last_checkpoint").read_text().strip()
        with open(last, "r+b") as f:
            f.truncate(last.stat().st_size // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "nan":
        return {name: value * torch.nan for name, value in losses.items()}
    return losses


def _kill_in_next_checkpoint() -> None:
    save = torch.save

    def save_then_die(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "model" in obj:  # a checkpoint, not another tensor file
            f.write(b"half a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return save(obj, f, *args, **kwargs)

    torch.save = save_then_die


def _record_lrs(path: str) -> None:
    run_step = ScalingTrainer.run_step

    def recorded(self) -> None:
        if comm.is_main_process():
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            with open(path, "a") as f:
                f.write(f"{attempt} {self.iter} {self.optimizer.param_groups[0]['lr']!r}\n")
        run_step(self)

    ScalingTrainer.run_step = recorded


register_images(Path(os.environ["TINY_RUN_DATA"]))
if os.environ.get("TINY_RUN_LRS"):
    _record_lrs(os.environ["TINY_RUN_LRS"])

if __name__ == "__main__":
    from det_scaling.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))

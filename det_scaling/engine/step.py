"""The step of a run, built in one place for training, ``lr-find`` and ``noise-scale``: the model,
its optimizer, the micro-batch loader, DDP and the accumulating step around them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from det_scaling.engine.accumulation import AccumulatingTrainer, micro_batch_cfg
from det_scaling.engine.checkpoint import SafeCheckpointer
from det_scaling.engine.determinism import use_deterministic_kernels
from det_scaling.engine.launch import create_ddp_model
from det_scaling.engine.run import Run

__all__ = ["Step", "StepBuilders", "build_step"]


class StepBuilders(Protocol):
    """What builds a task's pieces: a trainer class (``DefaultTrainer``'s classmethods)."""

    def build_model(self, cfg: Any) -> torch.nn.Module: ...

    def build_optimizer(self, cfg: Any, model: torch.nn.Module) -> torch.optim.Optimizer: ...

    def build_train_loader(self, cfg: Any) -> Any: ...


@dataclass
class Step:
    """One run's step: ``trainer`` runs an optimizer step over the run's micro-batches of
    ``data_loader`` (accumulated per the batch schedule, under AMP when the config says so) on
    ``ddp_model``, the DDP-wrapped ``model``."""

    model: torch.nn.Module
    ddp_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    data_loader: Any
    trainer: AccumulatingTrainer


def build_step(
    run: Run, builders: StepBuilders, *, weights: str = "", ddp_at_one_process: bool = False
) -> Step:
    """The step of ``run`` from the task's ``builders`` (a trainer class): the model (with
    ``weights`` loaded, when given, before the optimizer sees it), the optimizer, the loader of
    one micro-batch per process, DDP with the run's options (also in a process group of one with
    ``ddp_at_one_process``), and the accumulating step, which
    agrees on out-of-memory errors with the other processes under ``SCALING.AUTO_MICRO_BATCH``
    (``train.scaling.auto_micro_batch``). A run with ``DETERMINISTIC`` (``train.deterministic``)
    switches this process to deterministic kernels first."""
    if run.settings.deterministic:
        use_deterministic_kernels()
    model = builders.build_model(run.cfg)
    if weights:
        SafeCheckpointer(
            model,
            allow_pickled=run.settings.allow_pickled_weights,
            allow_pickled_key=run.adapter.keys.allow_pickled_weights,
        ).load(weights)
    optimizer = builders.build_optimizer(run.cfg, model)
    data_loader = builders.build_train_loader(micro_batch_cfg(run.adapter, run.schedule))
    ddp_model = create_ddp_model(model, at_one_process=ddp_at_one_process, **run.settings.ddp)
    trainer = AccumulatingTrainer(
        ddp_model,
        data_loader,
        optimizer,
        run.recipe.grad_accum_steps,
        grad_scaler=_cuda_grad_scaler() if run.settings.amp else None,
    )
    trainer.auto_micro_batch = run.settings.auto_micro_batch
    trainer.micro_batch = run.schedule.micro_batch
    return Step(model, ddp_model, optimizer, data_loader, trainer)


def _cuda_grad_scaler() -> Any:
    # torch.amp.GradScaler("cuda") since torch 2.3; torch.cuda.amp.GradScaler before (deprecated).
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda")
    return torch.cuda.amp.GradScaler()

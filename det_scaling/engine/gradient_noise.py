"""The gradient noise scale measured in training, from the two batch sizes every step already has.

McCandlish et al. (2018): below B_simple = tr(Sigma) / |G|^2 images per step, k times the batch
needs about k times fewer steps (the linear rule holds); past it, extra batch buys little. The
statistics are :class:`det_scaling.scaling.gradient_noise.GradientNoiseStats`; this module feeds
them from a running step, reading gradients that exist anyway:

* several processes: each process's gradient before DDP's all-reduce (its micro-batch x
  accumulation images), whose squared norm a DDP communication hook takes bucket by bucket before
  the usual all-reduce, against the all-reduced gradient (x world size images). The per-process
  norms are averaged over the processes (one scalar all-reduce per step), so that every process
  holds the same statistics;
* one process with accumulation: the first micro-batch's gradient (in ``.grad`` right after its
  backward, times the accumulation count that divides its loss) against the accumulated step's.

Norms are of unscaled gradients (AMP's scale is divided out), kept as tensors during the step and
read on the host only when the statistics are asked for; a step whose norms are not finite (one
AMP's GradScaler skips) is left out.

Given groups of parameters (:func:`module_groups`: a detector's backbone, FPN, RPN and RoI heads),
the meter also keeps both squared norms of each group's part of the gradient, for B_simple per
module (Xue et al. 2022, AGVM: a detector's modules disagree at large batch). The groups' norms
add up to the whole gradient's when the groups hold every trainable parameter.

:class:`GradientNoiseMeter` is the measurement, a :class:`~det_scaling.engine.accumulation.
GradientObserver` of the step trainer; ``ScalingTrainer`` holds it as ``trainer.gradient_noise``
for any hook or scheduler that needs the statistics. :class:`NoiseScaleHook` logs them and keeps
them in checkpoints.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from det_scaling.engine.accumulation import AccumulatingTrainer
from det_scaling.errors import ConfigError
from det_scaling.scaling.gradient_noise import GradientNoiseStats, squared_grad_norm

__all__ = ["GradientNoiseMeter", "NoiseScaleHook", "StepNorms", "module_groups"]

logger = logging.getLogger(__name__)

# Group names of a detectron2 meta-architecture's parts, where the attribute's name is not it.
_PART_GROUP_NAMES = {"proposal_generator": "rpn"}
# Bucket layouts whose group index tensors are kept (DDP rebuilds its buckets once, after the
# first step; a single process's layout changes only when parameters go unused).
_MAX_CACHED_LAYOUTS = 64


def module_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The trainable parameters of ``model`` (or of a DDP's ``.module``) by module group, each in
    exactly one group; groups without trainable parameters are left out.

    A detectron2 detector (GeneralizedRCNN): ``backbone`` (``backbone.bottom_up``), ``fpn`` (the
    rest of ``backbone``), ``rpn`` (``proposal_generator``), ``roi_heads``. Any other model: one
    group per top-level child, named as the child, looked for inside a wrapper whose trainable
    parameters are all in one child (a classifier's ``net``: its ``conv1``, ``layer1`` ...).
    Parameters of no child go to ``other``.
    """
    if isinstance(model, DistributedDataParallel):
        model = model.module
    root = model
    while True:
        holders = [child for child in root.children() if _trainable(child.parameters())]
        if len(holders) != 1 or _trainable(root.parameters(recurse=False)):
            break
        root = holders[0]

    groups: dict[str, list[nn.Parameter]] = {}
    seen: set[int] = set()

    def add(name: str, parameters: Iterable[nn.Parameter]) -> None:
        for parameter in parameters:
            if parameter.requires_grad and id(parameter) not in seen:
                seen.add(id(parameter))
                groups.setdefault(name, []).append(parameter)

    for name, child in root.named_children():
        bottom_up = getattr(child, "bottom_up", None) if name == "backbone" else None
        if isinstance(bottom_up, nn.Module):
            add("backbone", bottom_up.parameters())
            add("fpn", child.parameters())  # what bottom_up does not hold
        else:
            add(_PART_GROUP_NAMES.get(name, name), child.parameters())
    add("other", model.parameters())
    return groups


def _trainable(parameters: Iterable[nn.Parameter]) -> bool:
    return any(parameter.requires_grad for parameter in parameters)


@dataclass(frozen=True)
class StepNorms:
    """One step's squared gradient norms: of a batch of ``small_batch`` images (the mean over
    processes or micro-batches measured) and of the step's ``big_batch`` images; ``groups``:
    each parameter group's ``(small_sq_norm, big_sq_norm)`` (empty when no groups were given)."""

    iteration: int
    small_sq_norm: float
    small_batch: int
    big_sq_norm: float
    big_batch: int
    groups: dict[str, tuple[float, float]] = field(default_factory=dict)

    def of_group(self, name: str) -> StepNorms:
        """The step's norms of group ``name`` alone, at the same batch sizes."""
        if name not in self.groups:
            raise ConfigError(
                f"no parameter group {name!r} at step {self.iteration} (groups: "
                f"{', '.join(self.groups) or 'none'})"
            )
        small, big = self.groups[name]
        return replace(self, small_sq_norm=small, big_sq_norm=big, groups={})


class GradientNoiseMeter:
    """Measures |G_b|^2 and |G_B|^2 at every step of ``step_trainer`` and keeps their running
    averages (:attr:`stats`); ``micro_batch`` is the images each process loads per micro-batch.

    Build it before the first step (it registers the DDP communication hook). With
    ``keep_history`` every measured step is also kept in :attr:`history`. A step with one process
    and no accumulation has only one batch size: it is not measured (logged once). ``groups``
    (name -> parameters, disjoint; e.g. :func:`module_groups`) adds each group's two squared
    norms to the steps in :attr:`history`.
    """

    def __init__(
        self,
        step_trainer: AccumulatingTrainer,
        micro_batch: int,
        decay: float = 0.99,
        *,
        keep_history: bool = False,
        groups: Mapping[str, Iterable[nn.Parameter]] | None = None,
    ) -> None:
        if micro_batch < 1:
            raise ConfigError(f"micro_batch must be >= 1, got {micro_batch}")
        self.group_names: tuple[str, ...] = ()
        self._group_of: dict[int, int] = {}  # id(parameter) -> its group's index
        self._grouped: list[nn.Parameter] = []  # every grouped parameter (kept alive: ids stay)
        if groups is not None:
            self._set_groups(groups)
        self._group_layouts: dict[tuple[int, ...], torch.Tensor] = {}
        self._stats = GradientNoiseStats(decay)
        self.micro_batch = micro_batch
        self.world_size = comm.get_world_size()
        self.skipped_steps = 0  # steps with non-finite norms, left out
        self._history: list[StepNorms] | None = [] if keep_history else None
        self._step_trainer = step_trainer
        self._pending: list[_PendingStep] = []
        self._local_sq_norm: torch.Tensor | None = None  # this step's, summed over DDP buckets
        self._first_sq_norm: torch.Tensor | None = None  # this step's first micro-batch's
        # The same per group (a vector in group_names' order), when there are groups.
        self._local_group_sq_norms: torch.Tensor | None = None
        self._first_group_sq_norms: torch.Tensor | None = None
        self._warned_unmeasurable = False
        model = step_trainer.model
        if isinstance(model, DistributedDataParallel):
            model.register_comm_hook(None, self._comm_hook)
        elif self.world_size > 1:
            raise ConfigError("with several processes the model must be DistributedDataParallel")
        step_trainer.observers.append(self)

    # ---- what other hooks and schedulers read ----
    @property
    def stats(self) -> GradientNoiseStats:
        """The running averages, up to the last step (reads the steps' norms: one host sync)."""
        self._flush()
        return self._stats

    @property
    def history(self) -> list[StepNorms] | None:
        """Every step measured since :meth:`keep_history` (or ``keep_history=True``), else None."""
        self._flush()
        return self._history

    def keep_history(self) -> None:
        """From the next step on, keeps every step's norms in :attr:`history`."""
        self._flush()
        if self._history is None:
            self._history = []

    @property
    def noise_scale(self) -> float | None:
        """B_simple in images, from the running averages; None while not measurable."""
        return self.stats.noise_scale

    def summary(self) -> dict[str, Any]:
        """B_simple (images), |G|^2, tr(Sigma) per image and the steps measured, as plain values."""
        stats = self.stats
        return {
            "noise_scale": stats.noise_scale,
            "sq_grad_norm": stats.sq_grad_norm,
            "trace_sigma": stats.trace_sigma,
            "steps_measured": stats.steps,
            "steps_skipped": self.skipped_steps,
        }

    def state_dict(self) -> dict[str, Any]:
        return {**self.stats.state_dict(), "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending.clear()
        self._stats.load_state_dict(state)
        self.skipped_steps = int(state.get("skipped_steps", 0))

    # ---- the step (GradientObserver) ----
    def after_backward(self, micro_batch: int, accumulation_steps: int) -> None:
        if self.world_size == 1 and accumulation_steps > 1 and micro_batch == 0:
            # .grad holds this micro-batch's gradient divided by the accumulation count.
            self._first_sq_norm = self._unscaled(
                squared_grad_norm(self._step_trainer.model.parameters()) * accumulation_steps**2
            )
            if self.group_names:
                self._first_group_sq_norms = self._unscaled(
                    self._grads_group_sq_norms() * accumulation_steps**2
                )

    def before_optimizer_step(self) -> None:
        trainer = self._step_trainer
        per_process = self.micro_batch * trainer.accumulation_steps
        small_groups = None
        if self.world_size > 1:
            if self._local_sq_norm is None:
                raise RuntimeError("the DDP communication hook did not run in this step")
            local = self._local_sq_norm.reshape(1)
            if self.group_names:
                dtype = torch.promote_types(local.dtype, self._local_group_sq_norms.dtype)
                local = torch.cat([local.to(dtype), self._local_group_sq_norms.to(dtype)])
            small = local.clone()  # the total and the groups' in one all-reduce
            dist.all_reduce(small)
            small /= self.world_size
            small, small_groups = small[0], (small[1:] if self.group_names else None)
            small_batch, big_batch = per_process, per_process * self.world_size
        elif self._first_sq_norm is not None:
            small, small_batch, big_batch = self._first_sq_norm, self.micro_batch, per_process
            small_groups = self._first_group_sq_norms
        else:
            self._warn_unmeasurable()
            return
        # The trainer unscaled the gradients before calling observers.
        big = squared_grad_norm(trainer.model.parameters())
        big_groups = self._grads_group_sq_norms() if self.group_names else None
        self._pending.append(
            _PendingStep(trainer.iter, small, small_batch, big, big_batch, small_groups, big_groups)
        )
        self._local_sq_norm = self._first_sq_norm = None
        self._local_group_sq_norms = self._first_group_sq_norms = None

    # Not annotated: DDP checks the annotations of a hook against the types themselves, which
    # this module's postponed (string) annotations are not.
    def _comm_hook(self, state, bucket):
        """DDP's all-reduce of one bucket (a ``dist.GradBucket``), after adding the bucket's local
        squared norm (and its groups') to this step's."""
        if self.group_names:
            # The bucket's per-parameter gradients are views of its buffer, still local here.
            # The bucket's norm is the sum of its groups' (and of its ungrouped parameters'), so
            # that the groups add up to the total as closely as float addition allows.
            slots = self._unscaled(self._slot_sq_norms(bucket.parameters(), bucket.gradients()))
            sq_norm, group_sq_norms = slots.sum(), slots[:-1]
            self._local_group_sq_norms = (
                group_sq_norms
                if self._local_group_sq_norms is None
                else self._local_group_sq_norms + group_sq_norms
            )
        else:
            buffer = bucket.buffer()
            dtype = torch.float64 if buffer.dtype == torch.float64 else torch.float32
            sq_norm = self._unscaled(torch.linalg.vector_norm(buffer, dtype=dtype).square())
        self._local_sq_norm = (
            sq_norm if self._local_sq_norm is None else self._local_sq_norm + sq_norm
        )
        return allreduce_hook(state, bucket)

    def _set_groups(self, groups: Mapping[str, Iterable[nn.Parameter]]) -> None:
        if not groups:
            raise ConfigError("groups is empty: pass None to measure the whole gradient only")
        names = tuple(groups)
        for index, name in enumerate(names):
            for parameter in groups[name]:
                if id(parameter) in self._group_of:
                    other = names[self._group_of[id(parameter)]]
                    raise ConfigError(
                        f"groups: a parameter is in both {other!r} and {name!r}; give each "
                        "parameter one group"
                    )
                self._group_of[id(parameter)] = index
                self._grouped.append(parameter)
        if not self._grouped:
            raise ConfigError("groups hold no parameter: give at least one group parameters")
        self.group_names = names

    def _grads_group_sq_norms(self) -> torch.Tensor:
        """Each group's squared norm of the parameters' ``.grad``."""
        with_grad = [p for p in self._grouped if p.grad is not None]
        return self._slot_sq_norms(with_grad, [p.grad for p in with_grad])[:-1]

    def _slot_sq_norms(
        self, parameters: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """The squared norms of ``gradients`` (of ``parameters``, on one device) summed by group:
        a vector in :attr:`group_names`' order, then one slot for the parameters of no group."""
        ungrouped = len(self.group_names)
        layout = tuple(self._group_of.get(id(p), ungrouped) for p in parameters)
        grads = list(gradients)
        any_float64 = any(g.dtype == torch.float64 for g in grads)
        dtype = torch.float64 if any_float64 else torch.float32
        device = grads[0].device if grads else self._grouped[0].device
        sums = torch.zeros(ungrouped + 1, dtype=dtype, device=device)
        if not grads:
            return sums
        index = self._group_layouts.get(layout)
        if index is None:
            # Built once per layout: a host-to-device copy, not repeated at every step.
            if len(self._group_layouts) >= _MAX_CACHED_LAYOUTS:
                self._group_layouts.clear()
            index = torch.tensor(layout, dtype=torch.long, device=device)
            self._group_layouts[layout] = index
        sq_norms = torch.stack(torch._foreach_norm(grads, 2, dtype=dtype)).square()
        return sums.index_add_(0, index, sq_norms)

    def _unscaled(self, sq_norm: torch.Tensor) -> torch.Tensor:
        """``sq_norm`` of AMP-scaled gradients divided by the scale squared (no host read)."""
        scaler = self._step_trainer.grad_scaler
        if scaler is None:
            return sq_norm
        return sq_norm / scaler._get_scale_async().to(sq_norm.dtype).square()

    def _flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        smalls = torch.stack([p.small.double() for p in pending]).cpu().tolist()
        bigs = torch.stack([p.big.double() for p in pending]).cpu().tolist()
        if self.group_names:
            small_groups = torch.stack([p.small_groups.double() for p in pending]).cpu().tolist()
            big_groups = torch.stack([p.big_groups.double() for p in pending]).cpu().tolist()
        else:
            small_groups = big_groups = [[] for _ in pending]
        for step, small, big, step_small_groups, step_big_groups in zip(
            pending, smalls, bigs, small_groups, big_groups, strict=True
        ):
            values = [small, big, *step_small_groups, *step_big_groups]
            if not all(math.isfinite(value) for value in values):
                self.skipped_steps += 1
                continue
            self._stats.update(small, step.small_batch, big, step.big_batch)
            if self._history is not None:
                groups = {
                    name: (group_small, group_big)
                    for name, group_small, group_big in zip(
                        self.group_names, step_small_groups, step_big_groups, strict=True
                    )
                }
                self._history.append(
                    StepNorms(step.iteration, small, step.small_batch, big, step.big_batch, groups)
                )

    def _warn_unmeasurable(self) -> None:
        if not self._warned_unmeasurable:
            logger.warning(
                "Gradient noise scale: a step of 1 process without gradient accumulation has "
                "only one batch size, so it is not measured; use 2+ processes or "
                "SCALING.GRAD_ACCUM_STEPS >= 2"
            )
            self._warned_unmeasurable = True


@dataclass(frozen=True)
class _PendingStep:
    """A measured step's norms, still tensors (read at the next flush)."""

    iteration: int
    small: torch.Tensor
    small_batch: int
    big: torch.Tensor
    big_batch: int
    small_groups: torch.Tensor | None  # per group, in the meter's group_names' order
    big_groups: torch.Tensor | None


class NoiseScaleHook(HookBase):
    """Every ``period`` steps and at the last, puts ``noise_scale`` (B_simple, images),
    ``grad_sq_norm`` (|G|^2) and ``grad_trace_sigma`` (tr(Sigma) per image) into the
    ``EventStorage`` (hence metrics.json and tensorboard); the averages go into checkpoints."""

    def __init__(self, meter: GradientNoiseMeter, period: int) -> None:
        if period < 1:
            raise ConfigError(f"SCALING.NOISE_SCALE.PERIOD must be >= 1, got {period}")
        self.meter = meter
        self.period = period

    def after_step(self) -> None:
        steps_done = self.trainer.iter + 1
        if steps_done % self.period and steps_done != self.trainer.max_iter:
            return
        stats = self.meter.stats
        values = {
            "noise_scale": stats.noise_scale,
            "grad_sq_norm": stats.sq_grad_norm,
            "grad_trace_sigma": stats.trace_sigma,
        }
        for name, value in values.items():
            if value is not None:
                self.trainer.storage.put_scalar(name, value, smoothing_hint=False)

    def state_dict(self) -> dict[str, Any]:
        return self.meter.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.meter.load_state_dict(state_dict)

"""Optimizers and LR schedulers chosen by name from the config, through two registries.

* ``SOLVER.OPTIMIZER`` names an :data:`OPTIMIZER_REGISTRY` entry, a function
  ``(cfg, model) -> torch.optim.Optimizer``: "SGD" (detectron2's own builder), "LARS", "LARC"
  (LARS with apex's clipping) and "AdamW" are registered here.
* ``SOLVER.LR_SCHEDULER_NAME`` names an :data:`LR_SCHEDULER_REGISTRY` entry, a function
  ``(cfg) -> ParamScheduler`` giving the multiplier of ``BASE_LR`` as a function of progress in
  [0, 1] *after* warmup; :func:`build_lr_multiplier` adds ``SOLVER.WARMUP_*`` to any entry.
  Registered: detectron2's "WarmupMultiStepLR", "WarmupCosineLR" and (upstream main's)
  "WarmupStepWithFixedGammaLR", with the same meaning, and "WarmupPolyLR",
  "WarmupExponentialLR", "WarmupInverseTimeLR", "WarmupConstantLR".

Users add entries with a decorator::

    @OPTIMIZER_REGISTRY.register()
    def MyOptimizer(cfg, model): ...

    @LR_SCHEDULER_REGISTRY.register(name="WarmupStepLR")
    def _step(cfg): return fvcore.common.param_scheduler.StepParamScheduler(...)

The builders work on any ``torch.nn.Module`` and optimizer, with or without a detectron2 trainer.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from detectron2.config import CfgNode, instantiate
from detectron2.solver import build_optimizer as _detectron2_build_optimizer
from detectron2.solver.build import (
    get_default_optimizer_params,
    maybe_add_gradient_clipping,
    reduce_param_groups,
)
from detectron2.utils.registry import Registry as _Registry
from fvcore.common.param_scheduler import (
    CosineParamScheduler,
    ExponentialParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
)
from omegaconf import OmegaConf

from det_scaling.config import adapter_of
from det_scaling.errors import ConfigError
from det_scaling.scaling.batch_schedule import BatchSchedule
from det_scaling.solver.lars import LARS
from det_scaling.solver.lr_scheduler import ProgressLRScheduler
from det_scaling.solver.plateau import Plateau
from det_scaling.solver.schedules import (
    FixedGammaStepParamScheduler,
    FlatParamScheduler,
    InverseTimeParamScheduler,
    PolynomialParamScheduler,
    with_warmup,
)

__all__ = [
    "LR_SCHEDULER_REGISTRY",
    "NORM_MODULE_TYPES",
    "OPTIMIZER_REGISTRY",
    "Registry",
    "bias_and_norm_parameters",
    "build_lr_multiplier",
    "build_lr_scheduler",
    "build_optimizer",
    "lars_param_groups",
    "lars_params",
]

logger = logging.getLogger(__name__)


class Registry(_Registry):
    """detectron2's (fvcore's) registry, whose ``register`` also takes an explicit ``name``
    (config names such as "LARC" or "AdamW" need not be the function's name)."""

    def register(self, obj: Any = None, *, name: str | None = None) -> Any:
        """Registers ``obj`` under ``name`` (default: its ``__name__``); without ``obj``, returns
        a decorator that does so."""
        if obj is None:

            def decorator(func_or_class: Any) -> Any:
                self._do_register(name or func_or_class.__name__, func_or_class)
                return func_or_class

            return decorator
        self._do_register(name or obj.__name__, obj)
        return obj

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(name for name, _ in self)


# SOLVER.OPTIMIZER -> function (cfg, model) -> torch.optim.Optimizer
OPTIMIZER_REGISTRY = Registry("OPTIMIZER")
# SOLVER.LR_SCHEDULER_NAME -> function (cfg) -> fvcore ParamScheduler (the part after warmup)
LR_SCHEDULER_REGISTRY = Registry("LR_SCHEDULER")

# The normalization layers whose parameters LARS leaves unadapted: detectron2's list in
# get_default_optimizer_params (NaiveSyncBatchNorm is a BatchNorm2d), plus RMSNorm.
NORM_MODULE_TYPES: tuple[type[torch.nn.Module], ...] = (
    torch.nn.BatchNorm1d,
    torch.nn.BatchNorm2d,
    torch.nn.BatchNorm3d,
    torch.nn.SyncBatchNorm,
    torch.nn.GroupNorm,
    torch.nn.InstanceNorm1d,
    torch.nn.InstanceNorm2d,
    torch.nn.InstanceNorm3d,
    torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
    *((torch.nn.RMSNorm,) if hasattr(torch.nn, "RMSNorm") else ()),
)


def build_optimizer(cfg: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.SOLVER.OPTIMIZER``, over ``model``'s trainable parameters.

    For a LazyConfig, ``cfg.optimizer`` instantiated with ``optimizer.params.model`` set to
    ``model``, as detectron2's ``lazyconfig_train_net`` does (the config is not changed)."""
    if adapter_of(cfg).is_lazy:
        optimizer_cfg = copy.deepcopy(cfg.optimizer)
        OmegaConf.set_readonly(optimizer_cfg, False)
        optimizer_cfg.params.model = model
        return instantiate(optimizer_cfg)
    return _lookup(OPTIMIZER_REGISTRY, cfg.SOLVER.OPTIMIZER, "SOLVER.OPTIMIZER")(cfg, model)


def build_lr_multiplier(cfg: Any) -> ParamScheduler:
    """The LR multiplier as a function of progress (``iteration / MAX_ITER``): the schedule named
    by ``cfg.SOLVER.LR_SCHEDULER_NAME`` after ``SOLVER.WARMUP_ITERS`` of ``SOLVER.WARMUP_METHOD``
    warmup, as detectron2 composes them (with upstream's ``SOLVER.RESCALE_INTERVAL``). It
    excludes the plateau reduction.

    For a LazyConfig, ``cfg.lr_multiplier`` instantiated (any fvcore ``ParamScheduler``, the
    schedules of :mod:`det_scaling.solver.schedules` included)."""
    if adapter_of(cfg).is_lazy:
        return _param_scheduler(instantiate(cfg.lr_multiplier), "lr_multiplier")
    name = cfg.SOLVER.LR_SCHEDULER_NAME
    schedule = _lookup(LR_SCHEDULER_REGISTRY, name, "SOLVER.LR_SCHEDULER_NAME")(cfg)
    _param_scheduler(schedule, f"LR_SCHEDULER_REGISTRY entry {name!r}")
    warmup_length = min(cfg.SOLVER.WARMUP_ITERS / cfg.SOLVER.MAX_ITER, 1.0)
    return with_warmup(
        schedule,
        cfg.SOLVER.WARMUP_FACTOR,
        warmup_length,
        cfg.SOLVER.WARMUP_METHOD,
        rescale_interval=cfg.SOLVER.RESCALE_INTERVAL,
    )


def _param_scheduler(schedule: Any, what: str) -> ParamScheduler:
    if not isinstance(schedule, ParamScheduler):
        raise TypeError(f"{what} must be an fvcore ParamScheduler, got {type(schedule).__name__}")
    return schedule


def build_lr_scheduler(
    cfg: Any, optimizer: torch.optim.Optimizer, schedule: BatchSchedule | None = None
) -> ProgressLRScheduler:
    """The scheduler for ``optimizer``: :func:`build_lr_multiplier`'s schedule, reduced on
    plateau when ``SOLVER.PLATEAU.ENABLED`` (feed it with ``.observe(metric)``). Step it once per
    optimizer step.

    The multiplier is evaluated at the fraction of the run's images seen and multiplied by the
    batch stage's LR factor (:class:`~det_scaling.scaling.batch_schedule.BatchSchedule`; built from
    ``cfg`` when not given). With a fixed batch that is ``iteration / MAX_ITER`` and 1; when the
    batch grows (AdaBatch), warmup, STEPS and decay keep their epochs. A LazyConfig's
    ``lr_multiplier`` is evaluated the same way (it has no plateau)."""
    adapter = adapter_of(cfg)
    if schedule is None:
        # The LR does not depend on how the batch is split among processes.
        schedule = BatchSchedule.from_recipe(adapter.recipe(), world_size=1)
    plateau = {} if adapter.is_lazy else _plateau_options(cfg, schedule)
    return ProgressLRScheduler(
        optimizer,
        build_lr_multiplier(cfg),
        schedule.total_iterations,
        progress=schedule.progress_at,
        lr_factor=schedule.lr_factor_at,
        **plateau,
    )


def _plateau_options(cfg: CfgNode, schedule: BatchSchedule) -> dict[str, Any]:
    """``ProgressLRScheduler``'s reduce-on-plateau arguments from ``SOLVER.PLATEAU``."""
    plateau_cfg = cfg.SOLVER.PLATEAU
    plateau = (
        Plateau(
            mode=plateau_cfg.MODE,
            reduce_factor=plateau_cfg.FACTOR,
            patience=plateau_cfg.PATIENCE,
            cooldown=plateau_cfg.COOLDOWN,
            threshold=plateau_cfg.THRESHOLD,
            threshold_mode=plateau_cfg.THRESHOLD_MODE,
        )
        if plateau_cfg.ENABLED
        else None
    )
    return {
        "plateau": plateau,
        "warmup_iters": schedule.iteration_for_schedule_step(cfg.SOLVER.WARMUP_ITERS),
        "min_lr": plateau_cfg.MIN_LR,
    }


def bias_and_norm_parameters(model: torch.nn.Module) -> Iterator[torch.nn.Parameter]:
    """The trainable parameters named "bias" or owned by a normalization layer
    (:data:`NORM_MODULE_TYPES`), each once."""
    seen: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, NORM_MODULE_TYPES)
        for name, param in module.named_parameters(recurse=False):
            if param.requires_grad and (is_norm or name == "bias") and id(param) not in seen:
                seen.add(id(param))
                yield param


def lars_param_groups(cfg: CfgNode, model: torch.nn.Module) -> list[dict[str, Any]]:
    """detectron2's parameter groups (``get_default_optimizer_params``: norm weight decay, bias
    LR and weight decay), with biases and normalization parameters moved to groups with
    ``lars_exclude=True`` and no weight decay when ``SOLVER.LARS.EXCLUDE_BIAS_AND_NORM``."""
    return lars_params(
        model,
        exclude_bias_and_norm=cfg.SOLVER.LARS.EXCLUDE_BIAS_AND_NORM,
        **_default_param_options(cfg),
    )


def lars_params(
    model: torch.nn.Module, *, exclude_bias_and_norm: bool = True, **kwargs: Any
) -> list[dict[str, Any]]:
    """``get_default_optimizer_params(model, **kwargs)`` (detectron2's parameter groups) with,
    when ``exclude_bias_and_norm``, biases and normalization parameters in groups with
    ``lars_exclude=True`` and no weight decay. In a LazyConfig::

        optimizer = L(LARS)(params=L(lars_params)(weight_decay_norm=0.0), lr=0.02, clip=True)

    (the trainer sets ``optimizer.params.model``, as detectron2's ``lazyconfig_train_net``)."""
    groups = get_default_optimizer_params(model, **kwargs)
    if exclude_bias_and_norm:
        # Later entries override earlier ones per parameter; reduce_param_groups then merges the
        # parameters that share hyper-parameters into as few groups as possible.
        excluded = [
            {"params": [param], "lars_exclude": True, "weight_decay": 0.0}
            for param in bias_and_norm_parameters(model)
        ]
        groups = reduce_param_groups(groups + excluded)
        # Merging keys in different orders leaves equal settings in separate groups (a norm
        # bias gets weight_decay before lars_exclude, a conv bias after): merge once more.
        groups = reduce_param_groups([dict(sorted(group.items())) for group in groups])
    return groups


def _default_param_groups(cfg: CfgNode, model: torch.nn.Module) -> list[dict[str, Any]]:
    return get_default_optimizer_params(model, **_default_param_options(cfg))


def _default_param_options(cfg: CfgNode) -> dict[str, Any]:
    """``get_default_optimizer_params``'s options from ``SOLVER``."""
    solver = cfg.SOLVER
    return {
        "base_lr": solver.BASE_LR,
        "weight_decay_norm": solver.WEIGHT_DECAY_NORM,
        "bias_lr_factor": solver.BIAS_LR_FACTOR,
        "weight_decay_bias": solver.WEIGHT_DECAY_BIAS,
    }


def _lookup(registry: Registry, name: str, key: str) -> Callable[..., Any]:
    if name not in registry:
        raise ConfigError(
            f"{key}: unknown name {name!r}; registered: {', '.join(registry.names())}"
        )
    return registry.get(name)


# ---- optimizers ----


@OPTIMIZER_REGISTRY.register(name="SGD")
def _sgd(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """detectron2's optimizer, built by detectron2 (momentum SGD, its param groups, clipping)."""
    return _detectron2_build_optimizer(cfg, model)


def _lars(cfg: CfgNode, model: torch.nn.Module, *, clip: bool) -> torch.optim.Optimizer:
    solver = cfg.SOLVER
    return maybe_add_gradient_clipping(cfg, LARS)(
        lars_param_groups(cfg, model),
        lr=solver.BASE_LR,
        momentum=solver.MOMENTUM,
        weight_decay=solver.WEIGHT_DECAY,
        trust_coefficient=solver.LARS.TRUST_COEFFICIENT,
        eps=solver.LARS.EPS,
        clip=clip,
        nesterov=solver.NESTEROV,
    )


@OPTIMIZER_REGISTRY.register(name="LARS")
def _lars_unclipped(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """LARS (You et al. 2017) with SOLVER.MOMENTUM, WEIGHT_DECAY, NESTEROV and SOLVER.LARS.*."""
    return _lars(cfg, model, clip=False)


@OPTIMIZER_REGISTRY.register(name="LARC")
def _larc(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """LARS with apex LARC's clipping: the adapted LR never exceeds the scheduled one."""
    return _lars(cfg, model, clip=True)


@OPTIMIZER_REGISTRY.register(name="AdamW")
def _adamw(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """torch's AdamW with SOLVER.ADAMW.BETAS / EPS, SOLVER.WEIGHT_DECAY and detectron2's groups."""
    solver = cfg.SOLVER
    return maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(
        _default_param_groups(cfg, model),
        lr=solver.BASE_LR,
        betas=tuple(solver.ADAMW.BETAS),
        eps=solver.ADAMW.EPS,
        weight_decay=solver.WEIGHT_DECAY,
    )


# ---- schedules (the part after warmup; multipliers of BASE_LR over progress in [0, 1]) ----


def _end_ratio(cfg: CfgNode) -> float:
    """BASE_LR_END / BASE_LR: unchanged by scaling, which multiplies both by the same factor."""
    ratio = cfg.SOLVER.BASE_LR_END / cfg.SOLVER.BASE_LR
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(
            f"SOLVER.BASE_LR_END ({cfg.SOLVER.BASE_LR_END}) must be between 0 and SOLVER.BASE_LR "
            f"({cfg.SOLVER.BASE_LR})"
        )
    return ratio


@LR_SCHEDULER_REGISTRY.register(name="WarmupMultiStepLR")
def _multistep(cfg: CfgNode) -> ParamScheduler:
    """detectron2's: GAMMA ** (number of STEPS passed); STEPS beyond MAX_ITER are ignored."""
    steps = [step for step in cfg.SOLVER.STEPS if step <= cfg.SOLVER.MAX_ITER]
    if len(steps) != len(cfg.SOLVER.STEPS):
        logger.warning(
            "SOLVER.STEPS contains values larger than SOLVER.MAX_ITER. "
            "These values will be ignored."
        )
    return MultiStepParamScheduler(
        values=[cfg.SOLVER.GAMMA**k for k in range(len(steps) + 1)],
        milestones=steps,
        num_updates=cfg.SOLVER.MAX_ITER,
    )


@LR_SCHEDULER_REGISTRY.register(name="WarmupCosineLR")
def _cosine(cfg: CfgNode) -> ParamScheduler:
    """detectron2's half cosine from 1 to BASE_LR_END / BASE_LR (0 by default, as in v0.6)."""
    return CosineParamScheduler(1.0, _end_ratio(cfg))


@LR_SCHEDULER_REGISTRY.register(name="WarmupStepWithFixedGammaLR")
def _step_with_fixed_gamma(cfg: CfgNode) -> ParamScheduler:
    """upstream detectron2's: GAMMA ** k on the k-th of NUM_DECAYS + 1 equal parts of the run."""
    num_decays, gamma = cfg.SOLVER.NUM_DECAYS, cfg.SOLVER.GAMMA
    if isinstance(num_decays, bool) or not isinstance(num_decays, int) or num_decays < 1:
        raise ConfigError(f"SOLVER.NUM_DECAYS must be a positive integer, got {num_decays!r}")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0:
        raise ConfigError(
            f"SOLVER.GAMMA must be a positive number for WarmupStepWithFixedGammaLR, got {gamma!r}"
        )
    return FixedGammaStepParamScheduler(
        base_value=1.0, num_decays=num_decays, gamma=gamma, num_updates=cfg.SOLVER.MAX_ITER
    )


@LR_SCHEDULER_REGISTRY.register(name="WarmupPolyLR")
def _poly(cfg: CfgNode) -> ParamScheduler:
    """end + (1 - end) * (1 - progress) ** POLY_LR_POWER, end = BASE_LR_END / BASE_LR."""
    return PolynomialParamScheduler(1.0, _end_ratio(cfg), cfg.SOLVER.POLY_LR_POWER)


@LR_SCHEDULER_REGISTRY.register(name="WarmupExponentialLR")
def _exponential(cfg: CfgNode) -> ParamScheduler:
    """EXPONENTIAL_LR_DECAY ** progress: the factor reached at MAX_ITER."""
    decay = cfg.SOLVER.EXPONENTIAL_LR_DECAY
    if not decay > 0:
        raise ConfigError(f"SOLVER.EXPONENTIAL_LR_DECAY must be > 0, got {decay}")
    return ExponentialParamScheduler(1.0, decay)


@LR_SCHEDULER_REGISTRY.register(name="WarmupInverseTimeLR")
def _inverse_time(cfg: CfgNode) -> ParamScheduler:
    """1 / (1 + INVERSE_TIME_LR_K * progress)."""
    return InverseTimeParamScheduler(1.0, cfg.SOLVER.INVERSE_TIME_LR_K)


@LR_SCHEDULER_REGISTRY.register(name="WarmupConstantLR")
def _constant(cfg: CfgNode) -> ParamScheduler:
    """BASE_LR after warmup (with SOLVER.PLATEAU, the classic reduce-on-plateau)."""
    return FlatParamScheduler(1.0)


def scheduled_lrs(cfg: Any, schedule: BatchSchedule | None = None) -> list[float]:
    """The LR of each step of the run, as the scheduler built from ``cfg`` (a CfgNode or a
    LazyConfig) sets it when stepped once per step (``schedule``: the run's batch schedule, built
    from ``cfg`` when not given)."""
    adapter = adapter_of(cfg)
    recipe = adapter.recipe()
    schedule = schedule or BatchSchedule.from_recipe(recipe, world_size=1)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=recipe.base_lr)
    scheduler = build_lr_scheduler(cfg, optimizer, schedule)
    group = optimizer.param_groups[0]
    lrs = []
    with warnings.catch_warnings():
        # No optimizer step is taken, on purpose: torch warns about the order of the two.
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(schedule.total_iterations):
            lrs.append(group["lr"])
            scheduler.step()
    return lrs

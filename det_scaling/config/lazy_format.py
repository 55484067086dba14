"""The LazyConfig format: the keys of detectron2's ``configs/common`` (read by its
``tools/lazyconfig_train_net.py``) and the toolkit's ``train.scaling``.

The recipe: ``train.reference_world_size``, ``dataloader.train.total_batch_size``,
``optimizer.lr`` (and any other absolute LR in ``optimizer``: a field named ``lr`` or ``*_lr``),
``train.max_iter`` and ``train.scaling.*``. Iteration-valued: ``train.max_iter``,
``train.eval_period``, ``train.checkpointer.period`` and, in ``lr_multiplier``, however nested,
the ``milestones`` and ``num_updates`` of fvcore's and detectron2's param schedulers. Their values
and ``warmup_length`` / ``lengths`` (fractions of the run) are multipliers and fractions that
keep their meaning at any batch; a field of ``lr_multiplier`` that is none of these is reported,
not silently left. Interpolations (``${..lr}``) follow the field they name.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator
from typing import Any

from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig, OmegaConf

from det_scaling.config.lazy import add_lazy_scaling_keys, is_lazy_config, toolkit_defaults
from det_scaling.config.recipe import (
    FRACTION,
    LENGTH,
    PERIOD,
    STEPS,
    AdaBatchSettings,
    ConfigFormat,
    EpochSchedule,
    NoiseScaleSettings,
    Recipe,
    RecipeKeys,
    RunSettings,
    ScheduleField,
    deterministic_setting,
)
from det_scaling.errors import ConfigError

__all__ = ["LAZY_KEYS", "LazyFormat"]

LAZY_KEYS = RecipeKeys(
    reference_world_size="train.reference_world_size",
    ims_per_batch="dataloader.train.total_batch_size",
    grad_accum_steps="train.scaling.grad_accum_steps",
    base_lr="optimizer.lr",
    max_iter="train.max_iter",
    warmup="lr_multiplier's warmup_length",
    rule="train.scaling.rule",
    keep_reference_batch="train.scaling.keep_reference_batch",
    dataset_size="train.scaling.dataset_size",
    epochs="train.scaling.epochs",
    adabatch="train.scaling.adabatch",
    train_datasets="dataloader.train.dataset.names",
    device="train.device",
    output_dir="train.output_dir",
    weights="train.init_checkpoint",
    allow_pickled_weights="train.allow_pickled_weights",
    checkpoints_kept="train.checkpointer.max_to_keep",
    plan_columns=("optimizer.lr", "train.max_iter", "milestones", "warmup iters"),
    optimizer="optimizer._target_",
    adam_sde="train.scaling.adam_sde",
    auto_micro_batch="train.scaling.auto_micro_batch",
    adascale_reference_batch="train.scaling.adascale_reference_batch",
    schedule="train.scaling.schedule",
    b_crit="train.scaling.noise_scale.b_crit",
)

# Fields of the param schedulers in lr_multiplier, by what they measure.
_NESTED = {"scheduler", "schedulers"}
_ITERATIONS = {"milestones", "num_updates"}
_FRACTIONS = {"warmup_length", "lengths"}
_KEPT = {  # multipliers of optimizer.lr and shapes: the same at any batch
    "values",
    "value",
    "start_value",
    "end_value",
    "base_value",
    "warmup_factor",
    "warmup_method",
    "method",
    "gamma",
    "decay",
    "power",
    "k",
    "num_decays",
    "interval_scaling",
    "rescale_interval",
}

# What detectron2's lazyconfig_train_net needs from ``train``, with configs/common/train.py's
# values for a config that leaves one out.
_TRAIN_DEFAULTS = {
    "output_dir": "./output",
    "init_checkpoint": "",
    "checkpointer.period": 5000,
    "checkpointer.max_to_keep": 100,
    "eval_period": 5000,
    "log_period": 20,
    "device": "cuda",
    "amp.enabled": False,
    "seed": -1,
}


class LazyFormat(ConfigFormat):
    """A LazyConfig (an omegaconf ``DictConfig``) with the toolkit's keys
    (:func:`det_scaling.config.lazy.add_lazy_scaling_keys`)."""

    keys = LAZY_KEYS
    is_lazy = True

    @staticmethod
    def holds(cfg: Any) -> bool:
        return is_lazy_config(cfg)

    def has_toolkit_keys(self) -> bool:
        return OmegaConf.select(self.cfg, "train.scaling", default=None) is not None

    def writable_copy(self) -> LazyFormat:
        out = copy.deepcopy(self.cfg)
        OmegaConf.set_readonly(out, False)
        add_lazy_scaling_keys(out)
        return LazyFormat(out)

    def get(self, key: str) -> Any:
        """The value of ``key`` (a list as a plain list)."""
        value = OmegaConf.select(self.cfg, key, default=_MISSING)
        if value is _MISSING:
            raise ConfigError(
                f"{key}: the LazyConfig has no such key; det_scaling reads it as detectron2's "
                "lazyconfig_train_net does (see its configs/common)"
            )
        return OmegaConf.to_container(value) if isinstance(value, ListConfig) else value

    def set(self, key: str, value: Any) -> None:
        OmegaConf.update(self.cfg, key, value, merge=False)

    def is_frozen(self) -> bool:
        return bool(OmegaConf.is_readonly(self.cfg))

    def freeze(self) -> None:
        """Nothing: detectron2's ``LazyConfig.save`` (``default_setup`` calls it) changes a deep
        copy, which a read-only config passes on; detectron2's tools keep LazyConfigs writable."""

    def recipe(self) -> Recipe:
        get = self.get
        scaling = OmegaConf.to_container(get("train.scaling"))
        epochs = scaling["epochs"]
        max_iter = get("train.max_iter")
        warmups = [fraction for _, fraction in self._fields_named("warmup_length")]
        return Recipe(
            keys=LAZY_KEYS,
            reference_world_size=get("train.reference_world_size") or 0,
            ims_per_batch=get("dataloader.train.total_batch_size"),
            grad_accum_steps=scaling["grad_accum_steps"],
            lrs={"optimizer.lr": get("optimizer.lr"), **dict(self._other_lrs())},
            max_iter=max_iter,
            rule=scaling["rule"],
            keep_reference_batch=bool(scaling["keep_reference_batch"]),
            dataset_size=int(scaling["dataset_size"]),
            epochs=EpochSchedule(**{**epochs, "steps": tuple(epochs["steps"])}),
            adabatch=AdaBatchSettings(**scaling["adabatch"]),
            steps=self._decay_points(max_iter),
            warmup_iters=round(warmups[0] * max_iter) if warmups else 0,
            lr_schedule=_schedule_name(OmegaConf.select(self.cfg, "lr_multiplier")),
            optimizer=_call_name(OmegaConf.select(self.cfg, "optimizer")),
            adam_sde=bool(scaling["adam_sde"]),
            betas=self._optimizer_argument("betas"),
            eps=self._optimizer_argument("eps"),
            adascale_reference_batch=int(scaling.get("adascale_reference_batch", 0)),
            schedule=scaling["schedule"],
            b_crit=float(scaling["noise_scale"]["b_crit"]),
        )

    def schedule_fields(self) -> list[ScheduleField]:
        lengths = [ScheduleField("train.max_iter", LENGTH, self.get("train.max_iter"))]
        milestones = []
        for path, node in self._schedulers():
            if _written(node, "num_updates"):
                lengths.append(ScheduleField(f"{path}.num_updates", LENGTH, node.num_updates))
            if _written(node, "milestones"):
                length = f"{path}.num_updates" if node.get("num_updates") is not None else None
                written_length = node.num_updates if length else None
                milestones.append(
                    ScheduleField(
                        f"{path}.milestones", STEPS, tuple(node.milestones), length, written_length
                    )
                )
        get = self.get
        periods = self._periods(get("train.checkpointer.period"), get("train.eval_period"))
        return lengths + milestones + periods

    def epoch_fields(self, epochs: EpochSchedule) -> list[ScheduleField]:
        lengths = [ScheduleField("train.max_iter", LENGTH, epochs.max)]
        multistep = []
        for path, node in self._schedulers():
            if _written(node, "num_updates"):
                lengths.append(ScheduleField(f"{path}.num_updates", LENGTH, epochs.max))
            if _written(node, "milestones"):
                multistep.append((path, node))
        if len(multistep) > 1 or bool(multistep) != bool(epochs.steps):
            found = ", ".join(f"{path}.milestones" for path, _ in multistep) or "none"
            raise ConfigError(
                f"{self.keys.child(self.keys.epochs, 'steps')}: a schedule written in epochs "
                "gives the milestones of the one multi-step scheduler in lr_multiplier (both or "
                f"neither); lr_multiplier has {found}"
            )
        milestones = []
        for path, node in multistep:
            length = f"{path}.num_updates" if node.get("num_updates") is not None else None
            written = epochs.steps if length else (*epochs.steps, epochs.max)
            milestones.append(
                ScheduleField(f"{path}.milestones", STEPS, written, length, epochs.max)
            )
        warmups = [key for key, _ in self._fields_named("warmup_length")]
        if epochs.warmup > 0 and not warmups:
            raise ConfigError(
                f"{self.keys.child(self.keys.epochs, 'warmup')}: lr_multiplier has no "
                "warmup_length to set; wrap it in detectron2's WarmupParamScheduler"
            )
        fractions = [ScheduleField(key, FRACTION, epochs.warmup) for key in warmups]
        # A checkpoint period of 0 epochs: at the end only.
        periods = self._periods(epochs.checkpoint_period or epochs.max, epochs.eval_period)
        return lengths + milestones + fractions + periods

    def warmup_fractions(self) -> list[ScheduleField]:
        return [
            ScheduleField(key, FRACTION, fraction)
            for key, fraction in self._fields_named("warmup_length")
        ]

    def unclassified(self) -> list[str]:
        root = OmegaConf.select(self.cfg, "lr_multiplier")
        if not (isinstance(root, DictConfig) and "_target_" in root):
            return ["lr_multiplier is not a LazyCall of a param scheduler: left as written"]
        known = {"_target_", *_NESTED, *_ITERATIONS, *_FRACTIONS, *_KEPT}
        return [
            f"{path}.{name} ({node[name]!r}): not an LR multiplier, a fraction of the run or an "
            "iteration count that det_scaling knows; left as written, check it"
            for path, node in self._schedulers()
            for name in node
            if name not in known
        ]

    def run_settings(self) -> RunSettings:
        def train(key: str) -> Any:
            return OmegaConf.select(self.cfg, f"train.{key}", default=_TRAIN_DEFAULTS[key])

        ddp = OmegaConf.select(self.cfg, "train.ddp", default=None)
        noise = OmegaConf.select(self.cfg, "train.scaling.noise_scale", default=None)
        return RunSettings(
            output_dir=train("output_dir"),
            weights=train("init_checkpoint") or "",
            checkpoint_period=train("checkpointer.period"),
            max_to_keep=train("checkpointer.max_to_keep") or 0,  # None: all, as 0
            eval_period=train("eval_period"),
            writer_period=train("log_period"),
            amp=bool(train("amp.enabled")),
            ddp=OmegaConf.to_container(ddp) if ddp is not None else {},
            noise_scale=NoiseScaleSettings(noise.decay, noise.period)
            if noise is not None and noise.enabled
            else None,
            auto_micro_batch=bool(
                OmegaConf.select(self.cfg, "train.scaling.auto_micro_batch", default=False)
            ),
            gradient_noise_decay=OmegaConf.select(
                self.cfg, "train.scaling.noise_scale.decay", default=0.99
            ),
            deterministic=deterministic_setting(
                OmegaConf.select(self.cfg, "train.deterministic", default=False),
                OmegaConf.select(self.cfg, "train.cudnn_benchmark", default=False),
                ("train.deterministic", "train.cudnn_benchmark"),
            ),
            allow_pickled_weights=bool(
                OmegaConf.select(self.cfg, "train.allow_pickled_weights", default=False)
            ),
            seed=train("seed"),
        )

    def dataset_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return _names(self.cfg, "dataloader.train"), _names(self.cfg, "dataloader.test")

    def synthetic_voc(self) -> dict[str, Any]:
        written = OmegaConf.select(self.cfg, "dataloader.synthetic_voc", default=None)
        written = OmegaConf.to_container(written) if written is not None else {}
        return {**toolkit_defaults()["dataloader.synthetic_voc"], **written}

    # ---- walking the config ----
    @staticmethod
    def _periods(checkpoint: Any, evaluation: Any) -> list[ScheduleField]:
        return [
            ScheduleField("train.checkpointer.period", PERIOD, checkpoint),
            ScheduleField("train.eval_period", PERIOD, evaluation),
        ]

    def _schedulers(self) -> Iterator[tuple[str, DictConfig]]:
        """The param scheduler calls in ``lr_multiplier``, outermost first, by key."""
        root = OmegaConf.select(self.cfg, "lr_multiplier")
        yield from _calls(root, "lr_multiplier")

    def _fields_named(self, name: str) -> Iterator[tuple[str, Any]]:
        for path, node in self._schedulers():
            if _written(node, name):
                yield f"{path}.{name}", node[name]

    def _other_lrs(self) -> Iterator[tuple[str, float]]:
        """Absolute LRs in ``optimizer`` besides ``optimizer.lr``: fields named ``lr`` or
        ``*_lr`` holding a number as written (not an interpolation)."""
        for key, node, name in _leaves(OmegaConf.select(self.cfg, "optimizer"), "optimizer"):
            is_lr = name == "lr" or name.endswith("_lr")
            if key == "optimizer.lr" or not (is_lr and _written(node, name)):
                continue
            value = node[name]
            if isinstance(value, int | float) and not isinstance(value, bool):
                yield key, value

    def _optimizer_argument(self, name: str) -> tuple[str, Any] | None:
        """``optimizer.<name>`` and its value: as written, else the optimizer's default (torch's
        AdamW: betas (0.9, 0.999), eps 1e-8); None when the optimizer does not take it."""
        optimizer = OmegaConf.select(self.cfg, "optimizer")
        if not (isinstance(optimizer, DictConfig) and "_target_" in optimizer):
            return None
        key = f"optimizer.{name}"
        if _written(optimizer, name):
            value = self.get(key)
            return key, tuple(value) if isinstance(value, list) else value
        target = optimizer._get_node("_target_")._value()
        if isinstance(target, str):
            target = locate(target)
        try:
            parameter = inspect.signature(target).parameters.get(name)
        except (TypeError, ValueError):
            return None
        if parameter is None or parameter.default is inspect.Parameter.empty:
            return None
        return key, parameter.default

    def _decay_points(self, max_iter: int) -> tuple[int, ...]:
        """The iterations of the run where a multi-step scheduler steps (its milestones in units
        of its own length, ``num_updates``)."""
        points = []
        for _, node in self._schedulers():
            if "milestones" not in node:
                continue
            milestones = list(node.milestones)
            length = node.get("num_updates")
            if length is None:
                length, milestones = milestones[-1], milestones[:-1]
            points += [round(m * max_iter / length) for m in milestones]
        return tuple(sorted(points))


_MISSING = object()


def _written(node: DictConfig, name: str) -> bool:
    """Whether ``node`` has ``name`` written as a value (not None, not an interpolation)."""
    return (
        name in node
        and not OmegaConf.is_interpolation(node, name)
        and node._get_node(name)._value() is not None
    )


def _calls(node: Any, path: str) -> Iterator[tuple[str, DictConfig]]:
    if not (isinstance(node, DictConfig) and "_target_" in node):
        return
    yield path, node
    for name in _NESTED & set(node):
        child = node[name]
        if isinstance(child, ListConfig):
            for index, item in enumerate(child):
                yield from _calls(item, f"{path}.{name}[{index}]")
        else:
            yield from _calls(child, f"{path}.{name}")


def _leaves(node: Any, path: str) -> Iterator[tuple[str, DictConfig, str]]:
    if isinstance(node, DictConfig):
        for name in node:
            child = node._get_node(name)
            if isinstance(child, DictConfig):
                yield from _leaves(child, f"{path}.{name}")
            else:
                yield f"{path}.{name}", node, name


def _names(cfg: DictConfig, loader: str) -> tuple[str, ...]:
    names = OmegaConf.select(cfg, f"{loader}.dataset.names", default=None)
    if names is None:
        return ()
    return (names,) if isinstance(names, str) else tuple(names)


def _schedule_name(node: Any) -> str:
    """``WarmupParamScheduler(MultiStepParamScheduler)``: the scheduler calls, outermost first."""
    names = [_target_name(call._get_node("_target_")._value()) for _, call in _calls(node, "")]
    if not names:
        return "lr_multiplier"
    return names[0] + "".join(f"({name}" for name in names[1:]) + ")" * (len(names) - 1)


def _call_name(node: Any) -> str:
    """The name of the callable a LazyCall node calls ("" when it is none)."""
    if not (isinstance(node, DictConfig) and "_target_" in node):
        return ""
    return _target_name(node._get_node("_target_")._value())


def _target_name(target: Any) -> str:
    return getattr(target, "__name__", None) or str(target).rsplit(".", 1)[-1]

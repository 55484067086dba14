"""The recipe scaling works on, and what a config format provides to read and write one.

A recipe is the reference setup a config is written for (GPU count, total batch, accumulation),
its LRs, the run's length and the toolkit's scaling settings. :mod:`det_scaling.scaling.plan` scales
it knowing no config format; a :class:`ConfigFormat` reads it from one config, lists the config's
iteration-valued fields, and writes scaled values back under the config's own keys. yacs CfgNode
(:mod:`.yacs`) and LazyConfig (:mod:`.lazy`) are the two formats.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from det_scaling.errors import ConfigError

__all__ = [
    "FRACTION",
    "LENGTH",
    "PERIOD",
    "POINT",
    "STEPS",
    "AdaBatchSettings",
    "ConfigFormat",
    "EpochSchedule",
    "Recipe",
    "RecipeKeys",
    "RunSettings",
    "ScheduleField",
    "deterministic_setting",
]

# Kinds of iteration-valued fields (ScheduleField.kind).
LENGTH = "length"  # a run's or a schedule's length: must stay >= 1
STEPS = "steps"  # points that must stay in (0, length) and apart (LR steps, milestones)
POINT = "point"  # a point that may round to 0 (a warmup length)
PERIOD = "period"  # a period: > 0 must stay > 0
FRACTION = "fraction"  # a fraction of the run, set from epochs (a LazyConfig's warmup_length)


@dataclass(frozen=True)
class RecipeKeys:
    """How a config format names the parts of a recipe, in changes, errors and tables."""

    reference_world_size: str
    ims_per_batch: str
    grad_accum_steps: str
    base_lr: str
    max_iter: str
    warmup: str
    rule: str
    keep_reference_batch: str
    dataset_size: str
    epochs: str  # the section of a schedule written in epochs
    adabatch: str  # the AdaBatch section
    train_datasets: str
    device: str
    output_dir: str
    weights: str  # the checkpoint a run starts from
    allow_pickled_weights: str  # the switch that lets a run read .pkl weights from anywhere
    checkpoints_kept: str  # how many periodic checkpoints are kept
    # ``plan``'s columns: the LR, the run's length, the LR decay points, the warmup in iterations.
    plan_columns: tuple[str, str, str, str]
    optimizer: str  # what names the optimizer
    adam_sde: str  # the switch of Adam's beta and eps adjustment
    auto_micro_batch: str  # the switch of the micro-batch halved on out-of-memory
    adascale_reference_batch: str  # the total batch an AdaScale schedule is written for
    schedule: str  # how the schedule follows the batch ("images" or "noise")
    b_crit: str  # the critical batch the "noise" schedule uses

    def child(self, section: str, name: str) -> str:
        """The key of ``name`` in ``section``, in the section's case (``SCALING.EPOCHS.MAX``,
        ``train.scaling.epochs.max``)."""
        return f"{section}.{name.upper() if section.isupper() else name}"


@dataclass(frozen=True)
class EpochSchedule:
    """A schedule written in epochs (``max`` 0: written in iterations)."""

    max: float
    steps: tuple[float, ...]
    warmup: float
    checkpoint_period: float  # 0: a checkpoint at the end only
    eval_period: float  # 0: no periodic evaluation


@dataclass(frozen=True)
class AdaBatchSettings:
    """AdaBatch: the total batch grows every ``interval_epochs`` (see ``SCALING.ADABATCH``)."""

    enabled: bool
    interval_epochs: float
    batch_factor: int
    lr_factor: float
    max_stages: int


@dataclass(frozen=True)
class Recipe:
    """What scaling reads from a config, whatever its format."""

    keys: RecipeKeys
    reference_world_size: int  # 0: written for the GPUs it runs on
    ims_per_batch: int  # total images per optimizer step
    grad_accum_steps: int
    lrs: dict[str, float]  # every absolute LR by key, the base LR first
    max_iter: int
    rule: str
    keep_reference_batch: bool
    dataset_size: int  # images per epoch (0: unknown)
    epochs: EpochSchedule
    adabatch: AdaBatchSettings
    steps: tuple[int, ...]  # where the LR decays, in iterations of the run (shown by plan)
    warmup_iters: int
    lr_schedule: str  # the LR schedule's name, for titles
    optimizer: str = ""  # the optimizer's name (SOLVER.OPTIMIZER; optimizer._target_'s)
    adam_sde: bool = False  # adjust Adam's betas and eps with the batch (SCALING.ADAM_SDE)
    # Adam's betas and eps (key, value) when the optimizer takes them; None otherwise.
    betas: tuple[str, tuple[float, ...]] | None = None
    eps: tuple[str, float] | None = None
    adascale_reference_batch: int = 0  # SCALING.ADASCALE_REFERENCE_BATCH (0: ims_per_batch)
    schedule: str = "images"  # SCALING.SCHEDULE
    b_crit: float = 0.0  # SCALING.NOISE_SCALE.B_CRIT (0: unknown)

    @property
    def base_lr(self) -> float:
        return self.lrs[self.keys.base_lr]


@dataclass(frozen=True)
class ScheduleField:
    """An iteration-valued field of a config, as written (or as computed from epochs)."""

    key: str
    kind: str  # LENGTH, STEPS, POINT, PERIOD or FRACTION
    written: Any  # a number; a tuple for STEPS
    # STEPS: the key and written value of the length they stay below; None: their last value is
    # the length (fvcore's MultiStepParamScheduler without num_updates).
    length: str | None = None
    length_written: int | None = None


@dataclass(frozen=True)
class NoiseScaleSettings:
    """The gradient noise scale measured in training (``SCALING.NOISE_SCALE``)."""

    decay: float  # weight kept per step by the running averages
    period: int  # steps between two logged readings


@dataclass(frozen=True)
class RunSettings:
    """What the training loop reads from a config besides the recipe."""

    output_dir: str
    weights: str  # the checkpoint to start from ("": none)
    checkpoint_period: int
    max_to_keep: int  # periodic checkpoints kept (0: all)
    eval_period: int
    writer_period: int  # iterations between two writes of the metrics
    amp: bool
    ddp: dict[str, Any] = field(default_factory=dict)  # DistributedDataParallel options
    precise_bn_iters: int = 0  # 0: no PreciseBN
    plateau: bool = False  # reduce the LR on plateau (SOLVER.PLATEAU)
    noise_scale: NoiseScaleSettings | None = None  # None: not measured
    auto_micro_batch: bool = False  # halve the micro-batch on out-of-memory
    # Weight kept per step by the gradient statistics' running averages (SCALING.NOISE_SCALE.DECAY),
    # for AdaScale's gain ratio even when the noise scale is not logged.
    gradient_noise_decay: float = 0.99
    deterministic: bool = False  # deterministic kernels (DETERMINISTIC; engine/determinism.py)
    # Read .pkl weights from anywhere, not only from detectron2's model-zoo cache
    # (MODEL.ALLOW_PICKLED_WEIGHTS; engine/checkpoint.py).
    allow_pickled_weights: bool = False
    seed: int = -1  # the process's seed is this plus its rank (negative: a random one)


def deterministic_setting(deterministic: Any, cudnn_benchmark: Any, keys: tuple[str, str]) -> bool:
    """The run's ``deterministic`` setting; ``ConfigError`` when the config also asks for cuDNN's
    autotuner (``keys``: the two keys' names in the config's format), which picks its kernels by
    timing them."""
    if deterministic and cudnn_benchmark:
        raise ConfigError(
            f"{keys[0]} and {keys[1]} exclude each other: cuDNN's autotuner picks kernels by "
            f"timing them, so runs differ; set {keys[1]} False"
        )
    return bool(deterministic)


class ConfigFormat(ABC):
    """One config format as det_scaling reads and writes it, around one config."""

    keys: ClassVar[RecipeKeys]
    is_lazy: ClassVar[bool]  # a LazyConfig (its own model, data and evaluator), not a CfgNode

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    @staticmethod
    @abstractmethod
    def holds(cfg: Any) -> bool:
        """Whether ``cfg`` is a config of this format."""

    @abstractmethod
    def has_toolkit_keys(self) -> bool:
        """Whether the config has the toolkit's keys (a config det_scaling loaded has them)."""

    @abstractmethod
    def writable_copy(self) -> ConfigFormat:
        """A copy of the config, not frozen, with the toolkit's keys at their defaults where the
        config lacks them."""

    @abstractmethod
    def get(self, key: str) -> Any:
        """The value of a dotted key."""

    @abstractmethod
    def set(self, key: str, value: Any) -> None:
        """Sets a dotted key."""

    @abstractmethod
    def is_frozen(self) -> bool: ...

    @abstractmethod
    def freeze(self) -> None: ...

    @abstractmethod
    def recipe(self) -> Recipe:
        """The recipe; ``ConfigError`` naming the key when one is missing."""

    @abstractmethod
    def schedule_fields(self) -> list[ScheduleField]:
        """The iteration-valued fields as written: the run's length first."""

    @abstractmethod
    def epoch_fields(self, epochs: EpochSchedule) -> list[ScheduleField]:
        """The same fields with the values of a schedule written in epochs."""

    def warmup_fractions(self) -> list[ScheduleField]:
        """The warmups written as a fraction of the run (none in a yacs config, whose warmup is in
        iterations)."""
        return []

    def unclassified(self) -> list[str]:
        """Fields scaling leaves as written because it cannot tell what they measure."""
        return []

    @abstractmethod
    def run_settings(self) -> RunSettings: ...

    @abstractmethod
    def dataset_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The training and test data sets the config names."""

    @abstractmethod
    def synthetic_voc(self) -> dict[str, Any]:
        """The parameters of the generated synthetic VOC set (``DATASETS.SYNTHETIC_VOC``), with
        lower-case names."""

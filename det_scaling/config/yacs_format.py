"""The yacs CfgNode format: detectron2's ``SOLVER.*`` keys and the toolkit's ``SCALING.*``."""

from __future__ import annotations

from typing import Any

from detectron2.config import CfgNode

from det_scaling.config.defaults import add_scaling_config
from det_scaling.config.recipe import (
    LENGTH,
    PERIOD,
    POINT,
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

__all__ = ["YACS_KEYS", "YacsFormat"]

YACS_KEYS = RecipeKeys(
    reference_world_size="SOLVER.REFERENCE_WORLD_SIZE",
    ims_per_batch="SOLVER.IMS_PER_BATCH",
    grad_accum_steps="SCALING.GRAD_ACCUM_STEPS",
    base_lr="SOLVER.BASE_LR",
    max_iter="SOLVER.MAX_ITER",
    warmup="SOLVER.WARMUP_ITERS",
    rule="SCALING.RULE",
    keep_reference_batch="SCALING.KEEP_REFERENCE_BATCH",
    dataset_size="SCALING.DATASET_SIZE",
    epochs="SCALING.EPOCHS",
    adabatch="SCALING.ADABATCH",
    train_datasets="DATASETS.TRAIN",
    device="MODEL.DEVICE",
    output_dir="OUTPUT_DIR",
    weights="MODEL.WEIGHTS",
    allow_pickled_weights="MODEL.ALLOW_PICKLED_WEIGHTS",
    checkpoints_kept="SOLVER.CHECKPOINT_MAX_TO_KEEP",
    plan_columns=("BASE_LR", "MAX_ITER", "STEPS", "WARMUP_ITERS"),
    optimizer="SOLVER.OPTIMIZER",
    adam_sde="SCALING.ADAM_SDE",
    auto_micro_batch="SCALING.AUTO_MICRO_BATCH",
    adascale_reference_batch="SCALING.ADASCALE_REFERENCE_BATCH",
    schedule="SCALING.SCHEDULE",
    b_crit="SCALING.NOISE_SCALE.B_CRIT",
)

# The registered optimizers that read SOLVER.ADAMW.BETAS and EPS.
_ADAMW_BUILDERS = ("AdamW",)

# Iterations between two writes of metrics.json / tensorboard / the console line (detectron2's
# DefaultTrainer).
WRITER_PERIOD = 20


class YacsFormat(ConfigFormat):
    """A detectron2 CfgNode with the toolkit's keys
    (:func:`det_scaling.config.add_scaling_config`)."""

    keys = YACS_KEYS
    is_lazy = False

    @staticmethod
    def holds(cfg: Any) -> bool:
        return isinstance(cfg, CfgNode)

    def has_toolkit_keys(self) -> bool:
        return "SCALING" in self.cfg

    def writable_copy(self) -> YacsFormat:
        out = self.cfg.clone()
        out.defrost()
        add_scaling_config(out)
        return YacsFormat(out)

    def get(self, key: str) -> Any:
        node, name = _lookup(self.cfg, key)
        return node[name]

    def set(self, key: str, value: Any) -> None:
        node, name = _lookup(self.cfg, key)
        node[name] = value

    def is_frozen(self) -> bool:
        return self.cfg.is_frozen()

    def freeze(self) -> None:
        self.cfg.freeze()

    def recipe(self) -> Recipe:
        cfg = self.cfg
        solver, scaling = cfg.SOLVER, cfg.SCALING
        epochs, adabatch = scaling.EPOCHS, scaling.ADABATCH
        adamw = solver.OPTIMIZER in _ADAMW_BUILDERS
        return Recipe(
            keys=YACS_KEYS,
            reference_world_size=solver.REFERENCE_WORLD_SIZE,
            ims_per_batch=solver.IMS_PER_BATCH,
            grad_accum_steps=scaling.GRAD_ACCUM_STEPS,
            lrs={
                "SOLVER.BASE_LR": solver.BASE_LR,
                "SOLVER.BASE_LR_END": solver.BASE_LR_END,
                "SOLVER.PLATEAU.MIN_LR": solver.PLATEAU.MIN_LR,
            },
            max_iter=solver.MAX_ITER,
            rule=scaling.RULE,
            keep_reference_batch=bool(scaling.KEEP_REFERENCE_BATCH),
            dataset_size=int(scaling.DATASET_SIZE),
            epochs=EpochSchedule(
                max=epochs.MAX,
                steps=tuple(epochs.STEPS),
                warmup=epochs.WARMUP,
                checkpoint_period=epochs.CHECKPOINT_PERIOD,
                eval_period=epochs.EVAL_PERIOD,
            ),
            adabatch=AdaBatchSettings(
                enabled=bool(adabatch.ENABLED),
                interval_epochs=adabatch.INTERVAL_EPOCHS,
                batch_factor=adabatch.BATCH_FACTOR,
                lr_factor=adabatch.LR_FACTOR,
                max_stages=adabatch.MAX_STAGES,
            ),
            steps=tuple(solver.STEPS),
            warmup_iters=solver.WARMUP_ITERS,
            lr_schedule=solver.LR_SCHEDULER_NAME,
            optimizer=solver.OPTIMIZER,
            adam_sde=bool(scaling.ADAM_SDE),
            betas=("SOLVER.ADAMW.BETAS", tuple(solver.ADAMW.BETAS)) if adamw else None,
            eps=("SOLVER.ADAMW.EPS", solver.ADAMW.EPS) if adamw else None,
            adascale_reference_batch=int(scaling.ADASCALE_REFERENCE_BATCH),
            schedule=scaling.SCHEDULE,
            b_crit=float(scaling.NOISE_SCALE.B_CRIT),
        )

    def schedule_fields(self) -> list[ScheduleField]:
        solver = self.cfg.SOLVER
        return _fields(
            solver.MAX_ITER,
            tuple(solver.STEPS),
            solver.WARMUP_ITERS,
            solver.CHECKPOINT_PERIOD,
            self.cfg.TEST.EVAL_PERIOD,
        )

    def epoch_fields(self, epochs: EpochSchedule) -> list[ScheduleField]:
        # A checkpoint period of 0 epochs: at the end only.
        checkpoint = epochs.checkpoint_period or epochs.max
        return _fields(epochs.max, epochs.steps, epochs.warmup, checkpoint, epochs.eval_period)

    def run_settings(self) -> RunSettings:
        cfg = self.cfg
        precise_bn = cfg.TEST.PRECISE_BN
        return RunSettings(
            output_dir=cfg.OUTPUT_DIR,
            weights=cfg.MODEL.WEIGHTS,
            checkpoint_period=cfg.SOLVER.CHECKPOINT_PERIOD,
            max_to_keep=cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP,
            eval_period=cfg.TEST.EVAL_PERIOD,
            writer_period=WRITER_PERIOD,
            amp=bool(cfg.SOLVER.AMP.ENABLED),
            ddp={"broadcast_buffers": False},
            precise_bn_iters=precise_bn.NUM_ITER if precise_bn.ENABLED else 0,
            plateau=bool(cfg.SOLVER.PLATEAU.ENABLED),
            noise_scale=_noise_scale(cfg.SCALING.NOISE_SCALE),
            auto_micro_batch=bool(cfg.SCALING.AUTO_MICRO_BATCH),
            gradient_noise_decay=cfg.SCALING.NOISE_SCALE.DECAY,
            deterministic=deterministic_setting(
                cfg.DETERMINISTIC, cfg.CUDNN_BENCHMARK, ("DETERMINISTIC", "CUDNN_BENCHMARK")
            ),
            allow_pickled_weights=bool(cfg.MODEL.ALLOW_PICKLED_WEIGHTS),
            seed=cfg.SEED,
        )

    def dataset_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return tuple(self.cfg.DATASETS.TRAIN), tuple(self.cfg.DATASETS.TEST)

    def synthetic_voc(self) -> dict[str, Any]:
        return {key.lower(): value for key, value in self.cfg.DATASETS.SYNTHETIC_VOC.items()}


def _fields(
    max_iter: Any, steps: tuple, warmup: Any, checkpoint_period: Any, eval_period: Any
) -> list[ScheduleField]:
    return [
        ScheduleField("SOLVER.MAX_ITER", LENGTH, max_iter),
        ScheduleField("SOLVER.STEPS", STEPS, steps, "SOLVER.MAX_ITER", max_iter),
        ScheduleField("SOLVER.WARMUP_ITERS", POINT, warmup),
        ScheduleField("SOLVER.CHECKPOINT_PERIOD", PERIOD, checkpoint_period),
        ScheduleField("TEST.EVAL_PERIOD", PERIOD, eval_period),
    ]


def _lookup(cfg: CfgNode, dotted_key: str) -> tuple[CfgNode, str]:
    *parents, name = dotted_key.split(".")
    node = cfg
    for parent in parents:
        node = node[parent]
    return node, name


def _noise_scale(node: CfgNode) -> NoiseScaleSettings | None:
    return NoiseScaleSettings(node.DECAY, node.PERIOD) if node.ENABLED else None

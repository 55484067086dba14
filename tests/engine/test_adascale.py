"""SCALING.RULE adascale: the plan keeps the reference batch's LR and schedule; in training the LR
is r x the schedule's at the scale-invariant progress, which advances by r a step; the run ends
when it reaches MAX_ITER; at S = 1 it is the reference schedule exactly; the clock and statistics
are in the checkpoint and continue at another GPU count. Real runs of test_engine's tiny box
regressor (1 process with accumulation, and 2 gloo processes)."""

from __future__ import annotations

import functools
import itertools
import json
import math
from pathlib import Path

import detectron2.data.build
import pytest
import torch
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from fvcore.common.param_scheduler import LinearParamScheduler
from helpers import REPO
from helpers.tiny import (
    assert_same_parameters,
    build_trainer,
    continue_from,
    lazy_resume_cfg,
    lr_history,
    parameters,
    resume_cfg,
)

from det_scaling import load_cfg, plan_scaling
from det_scaling.cli import main
from det_scaling.commands.run_plot import read_run_metrics
from det_scaling.engine import AccumulatingTrainer, GradientNoiseMeter, ScalingTrainer
from det_scaling.engine.adascale import AdaScale
from det_scaling.engine.hooks import EtaPrinter
from det_scaling.engine.launch import launch
from det_scaling.scaling.gradient_noise import GradientNoiseStats
from det_scaling.solver import ProgressLRScheduler, build_lr_multiplier
from det_scaling.testing.tiny import tiny_cfg

LENGTH = 12  # the reference schedule's steps


def reference_cfg(output_dir: Path, **overrides):
    """Written for 1 GPU x 2 images: 12 steps, LR 0.5 / 10 at 6 and 10, 2 warmup steps."""
    cfg = tiny_cfg(output_dir, ims_per_batch=2, max_iter=LENGTH)
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 1
    cfg.SOLVER.STEPS = (6, 10)
    cfg.SOLVER.WARMUP_ITERS = 2
    cfg.SOLVER.CHECKPOINT_PERIOD = 4
    cfg.SCALING.RULE = "adascale"
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


def on_processes(cfg, gpus: int, processes: int):
    """``cfg`` scaled to ``gpus`` GPUs, then run on ``processes`` by accumulation."""
    scaled = plan_scaling(cfg, gpus).cfg
    if processes == gpus:
        return scaled
    return plan_scaling(scaled, processes, keep_reference_batch=True).cfg


def history(trainer: ScalingTrainer, name: str) -> list[float]:
    return [value for value, _ in trainer.storage.history(name).values()]


# ---- the plan ----
def test_plan_keeps_lr_and_schedule_of_the_reference_batch_and_rescales_periods(tmp_path):
    plan = plan_scaling(reference_cfg(tmp_path), 4)
    cfg = plan.cfg
    assert cfg.SOLVER.IMS_PER_BATCH == 8
    assert cfg.SOLVER.BASE_LR == 0.5 and plan.lr_factor == 1.0 and plan.rule == "adascale"
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS) == (12, (6, 10), 2)
    assert cfg.SOLVER.CHECKPOINT_PERIOD == 1  # 8 images, as 4 steps of 2
    assert cfg.SCALING.ADASCALE_REFERENCE_BATCH == 2
    assert "adascale (Johnson et al. 2020) at S = 4 (batch 8 / 2)" in plan.format()
    # Rescaled again, the reference batch stays the schedule's.
    again = plan_scaling(cfg, 2).cfg
    assert (again.SOLVER.IMS_PER_BATCH, again.SCALING.ADASCALE_REFERENCE_BATCH) == (4, 2)
    assert (again.SOLVER.MAX_ITER, again.SOLVER.BASE_LR) == (12, 0.5)


def test_a_schedule_in_epochs_is_in_steps_of_the_reference_batch(tmp_path):
    cfg = reference_cfg(tmp_path)
    cfg.SCALING.EPOCHS.MAX = 3.0  # 8 images: 12 steps of 2
    cfg.SCALING.EPOCHS.STEPS = (1.5,)
    cfg.SCALING.EPOCHS.WARMUP = 0.5
    cfg.SCALING.EPOCHS.CHECKPOINT_PERIOD = 1.0
    scaled = plan_scaling(cfg, 4).cfg
    assert (scaled.SOLVER.MAX_ITER, scaled.SOLVER.STEPS, scaled.SOLVER.WARMUP_ITERS) == (
        12,
        (6,),
        2,
    )
    assert scaled.SOLVER.CHECKPOINT_PERIOD == 1  # one epoch at batch 8


def test_a_lazyconfig_keeps_lr_length_and_milestones(tmp_path):
    cfg = load_cfg(
        str(REPO / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny.py"),
        ["train.scaling.rule=adascale"],
    )
    scaled = plan_scaling(cfg, 8).cfg  # written for 2 processes x 1 image: S = 4
    assert scaled.dataloader.train.total_batch_size == 8
    assert scaled.optimizer.lr == cfg.optimizer.lr
    assert scaled.train.max_iter == 1500
    assert list(scaled.lr_multiplier.scheduler.milestones) == [1125, 1350]
    assert scaled.train.checkpointer.period == 188  # 750 x 2 images / 8, rounded
    assert scaled.train.scaling.adascale_reference_batch == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # 1 GPU of 2 images for a schedule written for 4: S = 1/2.
        ({"SCALING.ADASCALE_REFERENCE_BATCH": 4}, "AdaScale scales up from the batch"),
        # 1 process, no accumulation, S = 2: one batch size, nothing to measure r from.
        ({"SCALING.ADASCALE_REFERENCE_BATCH": 1}, "measures the gain ratio from two batch sizes"),
        ({"SCALING.ADABATCH.ENABLED": True}, "both change the LR with the batch"),
    ],
)
def test_what_adascale_cannot_run_is_refused_in_one_line(tmp_path, change, message):
    cfg = reference_cfg(tmp_path, **change)
    cfg.SCALING.DATASET_SIZE = 8
    with pytest.raises(ValueError, match=message):
        plan_scaling(cfg, 1)


# ---- the gain against its closed form ----
# A linear loss g . w, whose gradient is the example's g whatever the weights. Examples are
# micro-batches of 1, 8 to a step (B = 8), for a schedule written for batch 2: S = 4. The mean
# gradient is G = e_1 and one example's covariance has trace T = 4; the examples are chosen so
# that the two squared norms the meter reads are exactly their expected values,
#   |G_1|^2 = |G|^2 + T / 1 = 5 (the step's first example) and |G_8|^2 = |G|^2 + T / 8 = 1.5
# (the step's mean): g_k = G + (0, +-y, z) with y^2 + z^2 = T and, the y's cancelling, z^2 = T / 8.
# Johnson et al.'s gain at S = 4 from the reference batch 2:
#   r = (T / 2 + |G|^2) / (T / (2 S) + |G|^2) = (2 + 1) / (0.5 + 1) = 2,
# far from both 1 and S; the wrong reference batch gives 2.5 (batch 1) or 4/3 (batch 8).
CLOSED_FORM_TRACE, CLOSED_FORM_GAIN = 4.0, 2.0
CLOSED_FORM_BASE_LR = 0.1


class LinearLoss(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))

    def forward(self, batch: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": torch.stack(batch).matmul(self.weight).mean()}


def closed_form_examples():
    """Endless micro-batches of 1 example: a step's 8 are g_1 .. g_8 (see above)."""
    y, z = math.sqrt(CLOSED_FORM_TRACE * 7 / 8), math.sqrt(CLOSED_FORM_TRACE / 8)
    step = [torch.tensor([1.0, y if k % 2 == 0 else -y, z], dtype=torch.float64) for k in range(8)]
    yield from ([g] for g in itertools.cycle(step))


def test_the_gain_is_johnson_et_al_s_closed_form_and_sets_lr_and_length():
    """The real step (AccumulatingTrainer), meter and clock on the problem above: r = 2 at every
    step, so the LR is 2 x the schedule's (linear decay to 0 over 12 reference steps) at tau =
    2 t, the run takes 12 / 2 = 6 steps, and the weights move by the sum of those LRs."""
    model = LinearLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=CLOSED_FORM_BASE_LR)
    step_trainer = AccumulatingTrainer(model, closed_form_examples(), optimizer, 8)
    meter = GradientNoiseMeter(step_trainer, micro_batch=1)
    scheduler = ProgressLRScheduler(optimizer, LinearParamScheduler(1.0, 0.0), LENGTH)
    clock = AdaScale(scheduler, meter, scale=4, reference_batch=2, length=LENGTH)
    step_trainer.observers.append(clock)
    gains, lrs = [], []
    with EventStorage(0):
        while not clock.finished:
            assert len(gains) < LENGTH, "the clock does not advance"
            step_trainer.iter = len(gains)
            step_trainer.run_step()
            gains.append(clock.gain)
            lrs.append(optimizer.param_groups[0]["lr"])
            scheduler.step()
    assert meter.stats.sq_grad_norm == pytest.approx(1.0, rel=1e-12)
    assert meter.stats.trace_sigma == pytest.approx(CLOSED_FORM_TRACE, rel=1e-12)
    assert gains == pytest.approx([CLOSED_FORM_GAIN] * 6, rel=1e-12)
    assert clock.progress == pytest.approx(12.0, rel=1e-12)
    expected_lrs = [2 * CLOSED_FORM_BASE_LR * (1 - 2 * t / 12) for t in range(6)]
    assert lrs == pytest.approx(expected_lrs, rel=1e-12)
    # Each step moves w by -lr x the step's mean gradient (1, 0, z).
    z = math.sqrt(CLOSED_FORM_TRACE / 8)
    moved = -sum(expected_lrs)
    assert model.weight.tolist() == pytest.approx([moved, 0.0, moved * z], rel=1e-12, abs=1e-15)


class StatsOnly:
    """What AdaScale reads of a GradientNoiseMeter: its statistics, kept in its state."""

    def __init__(self) -> None:
        self.stats = GradientNoiseStats(decay=0.0)

    def state_dict(self) -> dict:
        return {"stats": self.stats.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.stats.load_state_dict(state["stats"])


class Loop:
    """What AdaScale's after_step reads and calls of the trainer."""

    def __init__(self) -> None:
        self.iter = 0
        self.storage = EventStorage(0)
        self.ended = False
        self.expected_end = None

    def end_after_this_step(self) -> None:
        self.ended = True

    def expect_end(self, max_iter: int) -> None:
        self.expected_end = max_iter


def clock_at(scale: float, reference_batch: int, meter) -> AdaScale:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=CLOSED_FORM_BASE_LR)
    scheduler = ProgressLRScheduler(optimizer, LinearParamScheduler(1.0, 0.0), LENGTH)
    return AdaScale(scheduler, meter, scale=scale, reference_batch=reference_batch, length=LENGTH)


def test_the_clock_counts_gains_predicts_its_end_and_continues_from_its_state():
    """S = 4, reference batch 2: r = 1 before anything is measured, then the closed form's r = 2
    (|G|^2 = 1, tr(Sigma) = 4); the clock ends at the first tau >= 12."""
    meter = StatsOnly()
    clock = clock_at(4, 2, meter)
    clock.trainer = loop = Loop()
    assert (clock.gain, clock.progress, clock.steps, clock.loaded) == (1.0, 0.0, 0, False)
    assert clock.summary()["mean_gain"] is None
    assert (clock.steps_left_at_most(), clock.steps_left_expected()) == (12, 12)

    clock.before_optimizer_step()  # nothing measured yet: as the reference batch
    assert (clock.gain, clock.progress) == (1.0, 1.0)
    # |G_b|^2 = 1 + 4 / 2 at b = 2 and |G_B|^2 = 1 + 4 / 8 at B = 8.
    meter.stats.update(3.0, 2, 1.5, 8)
    clock.before_optimizer_step()
    assert (clock.gain, clock.progress) == pytest.approx((2.0, 3.0), rel=1e-12)
    # 9 reference steps left: at most 9 steps, 9 / 1.5 = 6 at the mean gain (1 + 2) / 2.
    assert (clock.steps_left_at_most(), clock.steps_left_expected()) == (9, 6)
    loop.iter = 1
    clock.after_step()
    assert (loop.expected_end, loop.ended) == (1 + 1 + 6, False)
    assert loop.storage.history("adascale_gain").latest() == pytest.approx(2.0, rel=1e-12)
    assert loop.storage.history("adascale_progress").latest() == pytest.approx(3.0, rel=1e-12)

    while not clock.finished:  # tau 5, 7, 9, 11, 13
        clock.before_optimizer_step()
    clock.after_step()
    assert loop.ended
    assert (clock.steps_left_at_most(), clock.steps_left_expected()) == (0, 0)
    summary = {
        "scale": 4,
        "reference_batch": 2,
        "length": LENGTH,
        "progress": 13.0,
        "steps": 7,
        "mean_gain": 13 / 7,
        "last_gain": 2.0,
    }
    assert clock.summary() == pytest.approx(summary, rel=1e-12)
    state = clock.state_dict()
    assert state == {  # sums of 1 and 2: exact
        "progress": 13.0,
        "gain": 2.0,
        "steps": 7,
        "gain_sum": 13.0,
        "scale": 4,
        "reference_batch": 2,
        "length": LENGTH,
        "gradient_noise": meter.state_dict(),
    }

    # At another S and reference batch 4: tau 13 of batch 2 is 6.5 of batch 4.
    other_meter = StatsOnly()
    resumed = clock_at(2, 4, other_meter)
    resumed.load_state_dict(state)
    assert resumed.loaded
    assert (resumed.progress, resumed.gain, resumed.steps) == pytest.approx((6.5, 2.0, 7))
    assert resumed.summary()["mean_gain"] == pytest.approx(13 / 7, rel=1e-12)
    assert other_meter.stats.trace_sigma == pytest.approx(CLOSED_FORM_TRACE, rel=1e-12)
    assert other_meter.stats.sq_grad_norm == pytest.approx(1.0, rel=1e-12)
    # At S = 1 there is no meter: the checkpoint's statistics are left aside.
    at_reference = clock_at(1, 2, None)
    at_reference.load_state_dict(state)
    assert (at_reference.progress, at_reference.loaded) == (13.0, True)


def test_the_clock_refuses_what_it_cannot_drive():
    with pytest.raises(ValueError, match=r"^AdaScale needs S >= 1, got 0.5"):
        clock_at(0.5, 2, StatsOnly())
    with pytest.raises(ValueError, match=r"^AdaScale at S > 1 needs the gradient noise meter"):
        clock_at(2, 2, None)
    with pytest.raises(TypeError, match="ProgressLRScheduler, got object"):
        AdaScale(object(), None, scale=1, reference_batch=2, length=LENGTH)


# ---- training ----
def test_at_s_1_it_is_the_reference_schedule_exactly(tmp_path, data):
    """Batch 4 (2 micro-batches of 2) with the schedule written for batch 4: r = 1 every step,
    measured (the statistics are kept), and the run is the linear rule's, step for step."""

    def cfg(name: str, rule: str):
        written = reference_cfg(tmp_path / name, **{"SCALING.RULE": rule})
        written.SOLVER.IMS_PER_BATCH = 4
        written.SCALING.GRAD_ACCUM_STEPS = 2
        written.SOLVER.REFERENCE_WORLD_SIZE = 0  # as written, 1 process
        if rule == "adascale":
            written.SCALING.ADASCALE_REFERENCE_BATCH = 4
        return written

    adascale = build_trainer(cfg("adascale", "adascale"), data)
    summary = adascale.train()
    reference = build_trainer(cfg("linear", "linear"), data)
    reference.train()
    assert adascale.gradient_noise is None  # S = 1: r is 1 by definition
    assert lr_history(adascale) == lr_history(reference)
    assert len(lr_history(adascale)) == LENGTH
    assert history(adascale, "adascale_gain") == [1.0] * LENGTH
    assert history(adascale, "adascale_progress") == [float(i) for i in range(1, LENGTH + 1)]
    assert summary["adascale"]["progress"] == LENGTH
    assert_same_parameters(parameters(adascale), parameters(reference))


def expected_lrs(trainer: ScalingTrainer, cfg) -> list[float]:
    """r_t x BASE_LR x the schedule's multiplier at progress tau_t / MAX_ITER, from the logged
    gains and progress (tau after the step, so tau_t = that - r_t)."""
    multiplier = build_lr_multiplier(cfg)
    gains, after = history(trainer, "adascale_gain"), history(trainer, "adascale_progress")
    return [
        r * cfg.SOLVER.BASE_LR * multiplier(min((tau - r) / LENGTH, 1.0))
        for r, tau in zip(gains, after, strict=True)
    ]


def test_lr_and_length_follow_the_measured_gain(tmp_path, data):
    """At S = 4 (4 micro-batches of 2), from scratch: r is measured in [1, 4], each step's LR is
    r x the schedule at tau, and the run ends at the first step whose tau reaches 12."""
    cfg = on_processes(reference_cfg(tmp_path / "run"), 4, 1)
    trainer = build_trainer(cfg, data)
    summary = trainer.train()
    gains, progress = history(trainer, "adascale_gain"), history(trainer, "adascale_progress")
    assert all(1.0 <= r <= 4.0 for r in gains)
    assert progress == pytest.approx(list(itertools.accumulate(gains)))
    assert progress[-1] >= LENGTH > progress[-2]  # not a step more than needed
    assert summary["iterations_done"] == len(gains) <= LENGTH
    lrs = [lr for _, lr in sorted(lr_history(trainer).items())]
    assert lrs == pytest.approx(expected_lrs(trainer, cfg), rel=1e-9)
    # The last r from the run's own statistics by the formula, at the reference batch of 2.
    noise = summary["gradient_noise"]
    variance, sq_grad_norm = noise["trace_sigma"] / 2, noise["sq_grad_norm"]
    assert summary["adascale"]["reference_batch"] == 2
    assert gains[-1] == pytest.approx(
        min((variance + sq_grad_norm) / (variance / 4 + sq_grad_norm), 4.0), rel=1e-9
    )
    assert (Path(cfg.OUTPUT_DIR) / "model_final.pth").is_file()
    written = json.loads((Path(cfg.OUTPUT_DIR) / "summary.json").read_text())
    assert written["adascale"]["steps"] == len(gains)

    # lr-plot --metrics draws what the run logged: the last step's LR, r and progress.
    logged = read_run_metrics(Path(cfg.OUTPUT_DIR) / "metrics.json")
    assert logged.iterations[-1] == len(gains) - 1
    assert (logged.lrs[-1], logged.gains[-1], logged.progress[-1]) == (
        lrs[-1],
        gains[-1],
        progress[-1],
    )
    metrics = str(Path(cfg.OUTPUT_DIR) / "metrics.json")
    assert main(["lr-plot", "--metrics", metrics, "-o", str(tmp_path / "lr.png")]) == 0
    assert (tmp_path / "lr.png").stat().st_size > 0


def test_where_noise_dominates_it_takes_max_iter_over_s_steps(tmp_path, data):
    """From weights near the tiny model's optimum, |G|^2 is not resolved above the noise: r = S,
    the linear rule's LR and 12 / 4 = 3 steps, and the final checkpoint and evaluation hooks see
    the early end."""
    pretrain = tiny_cfg(tmp_path / "pretrain", ims_per_batch=8, max_iter=60)
    build_trainer(pretrain, data).train()
    cfg = reference_cfg(
        tmp_path / "run", **{"MODEL.WEIGHTS": str(tmp_path / "pretrain" / "model_final.pth")}
    )
    cfg = on_processes(cfg, 4, 1)
    trainer = build_trainer(cfg, data)
    summary = trainer.train()
    assert history(trainer, "adascale_gain") == [4.0, 4.0, 4.0]
    assert summary["iterations_done"] == trainer.max_iter == 3
    [printer] = [w for w in trainer.writers if isinstance(w, EtaPrinter)]
    assert printer.max_iter == 3  # the console's ETA counts to the early end
    assert summary["images_seen"] == 24  # the reference's 12 x 2 images
    assert (Path(cfg.OUTPUT_DIR) / "model_final.pth").is_file()


def test_a_lazyconfig_takes_the_same_gains_and_lrs_as_its_yacs_twin(tmp_path, data, monkeypatch):
    """test_lazy_training's twins (1 GPU x 2 images, LR 0.01, 12 steps) at S = 2, on 1 process
    accumulating 2 micro-batches: the same weights and data order give the same r at each step,
    hence the same LR and length."""
    monkeypatch.setattr(  # the same data order for both loaders (see test_lazy_training)
        detectron2.data.build, "TrainingSampler", functools.partial(TrainingSampler, seed=7)
    )
    yacs_cfg = resume_cfg(tmp_path / "yacs", 1)
    yacs_cfg.SCALING.RULE = "adascale"
    yacs = build_trainer(on_processes(yacs_cfg, 2, 1), data)
    yacs_summary = yacs.train()
    lazy_cfg = lazy_resume_cfg(tmp_path / "lazy", 1)
    lazy_cfg.train.scaling.rule = "adascale"
    lazy = build_trainer(on_processes(lazy_cfg, 2, 1), data)
    lazy_summary = lazy.train()
    assert type(lazy).__name__ == "LazyScalingTrainer"
    assert lazy_summary["adascale"]["scale"] == yacs_summary["adascale"]["scale"] == 2
    assert lazy_summary["iterations_done"] == yacs_summary["iterations_done"]
    assert history(lazy, "adascale_gain") == pytest.approx(history(yacs, "adascale_gain"))
    assert lr_history(lazy) == pytest.approx(lr_history(yacs))
    assert lazy_summary["adascale"]["progress"] >= LENGTH


# ---- resume ----
def _run_worker(cfg, data_root: str, out: str, resume: bool) -> None:
    trainer = build_trainer(cfg, Path(data_root), resume=resume)
    summary = trainer.train()
    if comm.is_main_process():
        torch.save(
            {
                "lr": lr_history(trainer),
                "gain": history(trainer, "adascale_gain"),
                "progress": history(trainer, "adascale_progress"),
                "summary": summary,
            },
            Path(out) / "result.pt",
        )


def run_on(cfg, processes: int, data: Path, resume: bool = False) -> dict:
    out = cfg.OUTPUT_DIR
    if processes == 1:
        _run_worker(cfg, str(data), out, resume)
    else:
        launch(_run_worker, processes, dist_url="auto", args=(cfg, str(data), out, resume))
    return torch.load(Path(out) / "result.pt", weights_only=False)


def continues_the_clock(result: dict, tau: float, steps_measured: int) -> None:
    """The resumed run's clock starts at the checkpoint's tau, its statistics at the checkpoint's
    steps, and it ends at the first step whose tau reaches the length."""
    gains, progress = result["gain"], result["progress"]
    assert progress[0] - gains[0] == pytest.approx(tau, rel=1e-12)
    assert progress == pytest.approx(list(itertools.accumulate(gains, initial=tau))[1:])
    assert progress[-1] >= LENGTH > progress[-2]
    assert result["summary"]["gradient_noise"]["steps_measured"] == steps_measured + len(gains)


@pytest.mark.slow
def test_resume_continues_the_clock_at_the_same_and_at_another_gpu_count(tmp_path, data):
    # 1 process accumulating 2 micro-batches at S = 2 (batch 4), a checkpoint every 2 steps.
    whole = run_on(on_processes(reference_cfg(tmp_path / "whole"), 2, 1), 1, data)
    assert whole["summary"]["iterations_done"] <= LENGTH <= whole["progress"][-1]
    saved = torch.load(tmp_path / "whole" / "model_0000003.pth", weights_only=False)
    clock = saved["trainer"]["hooks"]["AdaScale"]
    tau = clock["progress"]
    assert tau == pytest.approx(whole["progress"][3])
    assert clock["gradient_noise"]["steps"] == 4

    # The same process count, and 2 processes of 2 images (another GPU count, the same S = 2).
    for name, processes in (("same", 1), ("two", 2)):
        continue_from(tmp_path / "whole" / "model_0000003.pth", tmp_path / name)
        cfg = on_processes(reference_cfg(tmp_path / name), 2, processes)
        resumed = run_on(cfg, processes, data, resume=True)
        assert resumed["summary"]["start_iter"] == 4, name
        continues_the_clock(resumed, tau, steps_measured=4)

    # 1 process at the reference batch (S = 1): 16 images are 8 steps of 2; the clock goes on
    # from the checkpoint's tau by 1 a step, at the schedule's LR there.
    continue_from(tmp_path / "whole" / "model_0000003.pth", tmp_path / "one")
    one_cfg = on_processes(reference_cfg(tmp_path / "one"), 1, 1)
    one = run_on(one_cfg, 1, data, resume=True)
    assert one["summary"]["start_iter"] == 8
    assert one["gain"] == [1.0] * len(one["gain"])
    assert one["progress"] == pytest.approx([tau + k for k in range(1, len(one["gain"]) + 1)])
    assert one["progress"][-1] >= LENGTH > one["progress"][-2]
    assert one["summary"]["iterations_done"] == 8 + math.ceil(LENGTH - tau)
    multiplier = build_lr_multiplier(one_cfg)
    assert one["lr"][8] == pytest.approx(0.5 * multiplier(tau / LENGTH), rel=1e-9)

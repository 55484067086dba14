"""The gradient noise scale measured in the step (det_scaling.engine.gradient_noise): against the
closed form of a linear regression through the real step trainer (1 process with accumulation,
2 gloo processes through DDP's communication hook), against norms computed independently in a
ScalingTrainer run, in metrics.json, checkpoints and resume, without host reads in the step; the
norms per module group, and the groups of the tiny detector and of other models."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from helpers import REPO
from helpers.host_sync import host_reads_forbidden
from helpers.tiny import build_trainer, continue_from
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import det_scaling  # noqa: F401  (the compat layer, before detectron2's trainer)
from det_scaling import load_cfg
from det_scaling.engine import AccumulatingTrainer, GradientNoiseMeter, StepNorms
from det_scaling.engine.gradient_noise import module_groups
from det_scaling.engine.launch import create_ddp_model, launch
from det_scaling.errors import ConfigError
from det_scaling.scaling.gradient_noise import GradientNoiseStats, two_batch_estimates
from det_scaling.testing.tiny import tiny_cfg, write_images

# ---- the closed-form problem (as in tests/test_gradient_noise.py) ----
# Linear regression y = x.w* + e, x ~ N(0, I_d), e ~ N(0, 1), loss (x.w - y)^2 / 2, at w = w* + u
# with |u| = 1: |G|^2 = 1, tr(Sigma) = d (|u|^2 + 1) + |u|^2 = 17 for d = 8, so B_simple = 17.
DIM = 8
EXACT_NOISE_SCALE = 17.0
STEPS, DECAY = 1500, 0.999


class LinearRegression(nn.Module):
    """The model at w = w* + u (w* = 0, u = e_1); its loss is the mean over the micro-batch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(DIM, dtype=torch.float64))
        with torch.no_grad():
            self.weight[0] = 1.0

    def forward(self, batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        x = torch.stack([example["x"] for example in batch])
        y = torch.stack([example["y"] for example in batch])
        return {"loss": ((x @ self.weight - y).square() / 2).mean()}


def regression_batches(micro_batch: int, seed: int):
    """Endless micro-batches of examples of y = x.w* + e with w* = 0."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        x = torch.randn(micro_batch, DIM, generator=generator, dtype=torch.float64)
        y = torch.randn(micro_batch, generator=generator, dtype=torch.float64)
        yield [{"x": xi, "y": yi} for xi, yi in zip(x, y, strict=True)]


def measure_regression(micro_batch: int, accumulation: int) -> GradientNoiseMeter:
    """STEPS steps of the real step trainer at LR 0 (the weights stay at u) with the meter."""
    torch.set_num_threads(1)
    model = create_ddp_model(LinearRegression())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    loader = regression_batches(micro_batch, seed=comm.get_rank())
    step_trainer = AccumulatingTrainer(model, loader, optimizer, accumulation)
    meter = GradientNoiseMeter(step_trainer, micro_batch, DECAY, keep_history=True)
    with EventStorage(0):
        for iteration in range(STEPS):
            step_trainer.iter = iteration
            step_trainer.run_step()
    return meter


def noise_scale_tolerance(meter: GradientNoiseMeter) -> float:
    """4 standard errors of the smoothed B_simple (delta method on T - R |G|^2, with the weights
    the bias-corrected average gives each step)."""
    history = meter.history
    small = torch.tensor([h.small_sq_norm for h in history], dtype=torch.float64)
    big = torch.tensor([h.big_sq_norm for h in history], dtype=torch.float64)
    sq_grad_norm, trace = two_batch_estimates(
        small, history[0].small_batch, big, history[0].big_batch
    )
    weights = DECAY ** torch.arange(len(history) - 1, -1, -1, dtype=torch.float64)
    weights /= weights.sum()
    residual = trace - EXACT_NOISE_SCALE * sq_grad_norm
    return 4 * math.sqrt(float(weights.square().sum() * residual.var()))


def _regression_worker(out: str) -> None:
    meter = measure_regression(micro_batch=16, accumulation=1)
    if comm.is_main_process():
        Path(out).write_text(
            json.dumps(
                {
                    "noise_scale": meter.noise_scale,
                    "tolerance": noise_scale_tolerance(meter),
                    "batches": [meter.history[0].small_batch, meter.history[0].big_batch],
                    "steps": meter.stats.steps,
                }
            )
        )


def test_one_process_first_micro_batch_against_the_step_matches_the_closed_form() -> None:
    # b = one micro-batch of 4, B = the step's 8 micro-batches, 32 examples. Observed: 16.24,
    # standard error 1.04.
    meter = measure_regression(micro_batch=4, accumulation=8)
    assert [meter.history[0].small_batch, meter.history[0].big_batch] == [4, 32]
    assert meter.stats.steps == STEPS
    tolerance = noise_scale_tolerance(meter)
    # A wrong factor (the accumulation count left in, b taken as B) is off by far more.
    assert tolerance < 0.3 * EXACT_NOISE_SCALE
    assert abs(meter.noise_scale - EXACT_NOISE_SCALE) < tolerance, (meter.noise_scale, tolerance)


@pytest.mark.slow
def test_two_processes_before_and_after_the_all_reduce_match_the_closed_form(tmp_path) -> None:
    # b = one process's 16 examples (read in DDP's communication hook), B = both processes' 32.
    # Observed: 17.74, standard error 0.42.
    out = tmp_path / "result.json"
    launch(_regression_worker, 2, dist_url="auto", args=(str(out),))
    result = json.loads(out.read_text())
    assert result["batches"] == [16, 32] and result["steps"] == STEPS
    assert result["tolerance"] < 0.15 * EXACT_NOISE_SCALE
    assert abs(result["noise_scale"] - EXACT_NOISE_SCALE) < result["tolerance"], result


def test_the_step_reads_no_tensor_value() -> None:
    model = LinearRegression()
    step_trainer = AccumulatingTrainer(model, regression_batches(4, 0), None, 2)
    meter = GradientNoiseMeter(step_trainer, 4)
    for micro_batch, batch in enumerate([next(step_trainer._data_loader_iter)] * 2):
        (model(batch)["loss"] / 2).backward()
        with host_reads_forbidden():
            meter.after_backward(micro_batch, 2)
    with host_reads_forbidden():
        meter.before_optimizer_step()
    assert meter.stats.steps == 1  # read here, after the step


def _guarded_ddp_step_worker(out: str) -> None:
    torch.set_num_threads(1)
    model = create_ddp_model(LinearRegression())
    step_trainer = AccumulatingTrainer(model, regression_batches(4, comm.get_rank()), None, 1)
    meter = GradientNoiseMeter(step_trainer, 4)
    loss = model(next(step_trainer._data_loader_iter))["loss"]
    with host_reads_forbidden():
        loss.backward()  # DDP's all-reduce, through the meter's communication hook
        meter.after_backward(0, 1)
        meter.before_optimizer_step()
    if comm.is_main_process():
        Path(out).write_text(json.dumps({"steps": meter.stats.steps}))


@pytest.mark.slow
def test_the_step_reads_no_tensor_value_across_processes(tmp_path) -> None:
    out = tmp_path / "result.json"
    launch(_guarded_ddp_step_worker, 2, dist_url="auto", args=(str(out),))
    assert json.loads(out.read_text()) == {"steps": 1}


# ---- in ScalingTrainer, against norms computed independently ----
class _Recorder:
    """Keeps the micro-batches a step loads (wraps the step trainer's data iterator)."""

    def __init__(self, iterator) -> None:
        self.iterator = iterator
        self.batches: list = []

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.iterator)
        self.batches.append(batch)
        return batch


class _IndependentNorms:
    """After the step's backward passes, recomputes this step's two squared norms from the
    recorded micro-batches on a copy of the model, without DDP or the meter; with ``groups``
    (name -> parameter names), each group's two squared norms too (in :attr:`group_norms`)."""

    def __init__(
        self,
        step_trainer: AccumulatingTrainer,
        recorder: _Recorder,
        groups: dict[str, set[str]] | None = None,
    ) -> None:
        self.step_trainer, self.recorder = step_trainer, recorder
        self.groups = groups or {}
        self.norms: list[tuple[float, float]] = []
        self.group_norms: list[dict[str, tuple[float, float]]] = []

    def after_backward(self, micro_batch: int, accumulation_steps: int) -> None:
        pass

    def before_optimizer_step(self) -> None:
        model = self.step_trainer.model
        module = copy.deepcopy(
            model.module if isinstance(model, DistributedDataParallel) else model
        )
        module.zero_grad()
        batches, self.recorder.batches = self.recorder.batches, []
        grads = []
        for batch in batches:  # each micro-batch's gradient, on its own
            module.zero_grad()
            sum(module(batch).values()).backward()
            grads.append(torch.cat([p.grad.flatten() for p in module.parameters()]))
        local = torch.stack(grads).mean(0)  # this process's gradient of the mean loss
        world_size = comm.get_world_size()
        everyone = comm.all_gather(local) if world_size > 1 else None
        self.norms.append(self._two_norms(grads, local, everyone, None))
        # Where each parameter lies in the flattened gradient.
        names = [name for name, _ in module.named_parameters()]
        ends = torch.tensor([p.numel() for p in module.parameters()]).cumsum(0).tolist()
        spans = dict(zip(names, zip([0, *ends[:-1]], ends, strict=True), strict=True))
        self.group_norms.append(
            {
                name: self._two_norms(
                    grads, local, everyone, torch.cat([torch.arange(*spans[n]) for n in members])
                )
                for name, members in self.groups.items()
            }
        )

    @staticmethod
    def _two_norms(grads, local, everyone, part) -> tuple[float, float]:
        """The two squared norms of the gradients' elements at ``part`` (all of them if None)."""

        def sq_norm(grad: torch.Tensor) -> float:
            return float((grad if part is None else grad[part]).square().sum())

        if everyone is not None:
            small = sum(sq_norm(g) for g in everyone) / len(everyone)
            return small, sq_norm(torch.stack(everyone).mean(0))
        # One process: the first micro-batch against the step.
        return sq_norm(grads[0]), sq_norm(local)


def noise_cfg(output_dir: Path, accum: int):
    cfg = tiny_cfg(output_dir, ims_per_batch=4, accum=accum, max_iter=6)
    cfg.SCALING.NOISE_SCALE.ENABLED = True
    cfg.SCALING.NOISE_SCALE.DECAY = 0.5
    cfg.SCALING.NOISE_SCALE.PERIOD = 2
    cfg.SOLVER.CHECKPOINT_PERIOD = 3
    cfg.SOLVER.BASE_LR = 0.05
    return cfg


def train_with_independent_norms(cfg, data_root: Path):
    trainer = build_trainer(cfg, data_root)
    step_trainer = trainer._trainer
    recorder = _Recorder(step_trainer._data_loader_iter)
    step_trainer.replace_data_loader(recorder)  # upstream main's iterator is a read-only property
    independent = _IndependentNorms(step_trainer, recorder)
    step_trainer.observers.append(independent)
    trainer.gradient_noise.keep_history()
    summary = trainer.train()
    summary["logged"] = {
        name: trainer.storage.history(name).values()
        for name in ("noise_scale", "grad_sq_norm", "grad_trace_sigma")
        if name in trainer.storage.histories()
    }
    measured = [(h.small_sq_norm, h.big_sq_norm) for h in trainer.gradient_noise.history]
    batches = {(h.small_batch, h.big_batch) for h in trainer.gradient_noise.history}
    return summary, measured, independent.norms, batches


def _trainer_worker(data_root: str, out: str) -> None:
    cfg = noise_cfg(Path(out) / "run", accum=1)
    summary, measured, independent, batches = train_with_independent_norms(cfg, Path(data_root))
    if comm.is_main_process():
        torch.save(
            {
                "summary": summary,
                "measured": measured,
                "independent": independent,
                "batches": batches,
            },
            Path(out) / "result.pt",
        )


def check_run(output_dir: Path, summary, measured, independent) -> None:
    assert len(measured) == len(independent) == 6
    flat = [norm for pair in independent for norm in pair]
    assert [norm for pair in measured for norm in pair] == pytest.approx(flat, rel=1e-5)
    noise = summary["gradient_noise"]
    assert noise["steps_measured"] == 6 and noise["steps_skipped"] == 0
    # The reported figures are the running averages of the independent norms at the config's
    # DECAY (one micro-batch of 2 images against the step's 4).
    expected = GradientNoiseStats(decay=0.5)
    for small, big in independent:
        expected.update(small, 2, big, 4)
    assert noise["sq_grad_norm"] == pytest.approx(expected.sq_grad_norm, rel=1e-4)
    # tr(Sigma) is a difference of the two norms: its error is relative to them, not to it.
    norm_scale = max(flat) * 4
    assert noise["trace_sigma"] == pytest.approx(expected.trace_sigma, abs=1e-4 * norm_scale)
    noise_scale_error = 1e-4 * norm_scale / expected.sq_grad_norm
    assert noise["noise_scale"] == pytest.approx(expected.noise_scale, abs=noise_scale_error)
    # Every PERIOD steps into the event storage; metrics.json has the last (its writer's period
    # is longer than this run).
    trace_logged = summary["logged"]["grad_trace_sigma"]
    assert [iteration for _, iteration in trace_logged] == [1, 3, 5]
    assert trace_logged[-1][0] == pytest.approx(noise["trace_sigma"])
    metrics = [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]
    assert metrics[-1]["grad_trace_sigma"] == pytest.approx(noise["trace_sigma"])
    assert metrics[-1]["noise_scale"] == pytest.approx(noise["noise_scale"])
    saved = torch.load(output_dir / "model_0000002.pth", weights_only=False)
    state = saved["trainer"]["hooks"]["NoiseScaleHook"]
    assert state["steps"] == 3 and state["skipped_steps"] == 0


def test_one_process_with_accumulation_measures_what_is_computed_independently(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_images(data)
    cfg = noise_cfg(tmp_path / "run", accum=2)
    summary, measured, independent, batches = train_with_independent_norms(cfg, data)
    assert batches == {(2, 4)}  # one micro-batch of 2 images against the step's 4
    check_run(tmp_path / "run", summary, measured, independent)

    # Resumed from the checkpoint after 3 steps: the averages continue from the saved ones.
    continue_from(tmp_path / "run" / "model_0000002.pth", tmp_path / "resumed")
    resumed = build_trainer(noise_cfg(tmp_path / "resumed", accum=2), data, resume=True)
    assert resumed.gradient_noise.stats.steps == 3
    assert resumed.train()["gradient_noise"]["steps_measured"] == 6


@pytest.mark.slow
def test_two_processes_measure_what_is_computed_independently(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_images(data)
    launch(_trainer_worker, 2, dist_url="auto", args=(str(data), str(tmp_path)))
    result = torch.load(tmp_path / "result.pt", weights_only=False)
    assert result["batches"] == {(2, 4)}  # one process's 2 images against both processes' 4
    check_run(tmp_path / "run", result["summary"], result["measured"], result["independent"])


def test_disabled_by_default(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_images(data)
    trainer = build_trainer(tiny_cfg(tmp_path / "run", ims_per_batch=2, accum=2), data)
    assert trainer.gradient_noise is None and trainer._trainer.observers == []
    assert trainer.train()["gradient_noise"] is None


# ---- per module group ----
TINY_DETECTOR = REPO / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny.yaml"


class TwoPartRegression(nn.Module):
    """A two-layer regression on :func:`regression_batches`: groups ``body`` and ``head``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(DIM, 4, dtype=torch.float64)
        self.head = nn.Linear(4, 1, dtype=torch.float64)

    def forward(self, batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        x = torch.stack([example["x"] for example in batch])
        y = torch.stack([example["y"] for example in batch])
        prediction = self.head(torch.tanh(self.body(x))).squeeze(1)
        return {"loss": ((prediction - y).square() / 2).mean()}


def parameter_names(module: nn.Module, groups: dict[str, list[nn.Parameter]]):
    names = {id(p): name for name, p in module.named_parameters()}
    return {group: {names[id(p)] for p in members} for group, members in groups.items()}


def measure_groups(accumulation: int, steps: int, **ddp_options):
    """``steps`` steps of the real step trainer on :class:`TwoPartRegression` with the meter by
    module group, and the norms recomputed independently; (meter history, independent norms,
    independent group norms)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the same initial weights in every process
    model = create_ddp_model(TwoPartRegression(), **ddp_options)
    module = model.module if isinstance(model, DistributedDataParallel) else model
    recorder = _Recorder(regression_batches(4, seed=comm.get_rank()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step_trainer = AccumulatingTrainer(model, recorder, optimizer, accumulation)
    groups = module_groups(model)
    meter = GradientNoiseMeter(step_trainer, 4, keep_history=True, groups=groups)
    independent = _IndependentNorms(step_trainer, recorder, parameter_names(module, groups))
    step_trainer.observers.append(independent)
    with EventStorage(0):
        for iteration in range(steps):
            step_trainer.iter = iteration
            step_trainer.run_step()
    return meter.history, independent.norms, independent.group_norms


def check_group_norms(history: list[StepNorms], norms, group_norms) -> None:
    """Each group's norms are the independent ones and add up to the step's total."""
    measured = [norm for h in history for norm in (h.small_sq_norm, h.big_sq_norm)]
    assert measured == pytest.approx([norm for pair in norms for norm in pair], rel=1e-9)
    for step, independent in zip(history, group_norms, strict=True):
        assert list(step.groups) == ["body", "head"]
        for name, (small, big) in step.groups.items():
            assert (small, big) == pytest.approx(independent[name], rel=1e-9), name
            assert small > 0 and big > 0
        assert sum(small for small, _ in step.groups.values()) == pytest.approx(
            step.small_sq_norm, rel=1e-12
        )
        assert sum(big for _, big in step.groups.values()) == pytest.approx(
            step.big_sq_norm, rel=1e-12
        )


def test_group_norms_on_one_process_with_accumulation_add_up_to_the_total() -> None:
    history, norms, group_norms = measure_groups(accumulation=2, steps=3)
    assert len(history) == 3 and {(h.small_batch, h.big_batch) for h in history} == {(4, 8)}
    check_group_norms(history, norms, group_norms)


def test_the_step_by_module_reads_no_tensor_value() -> None:
    model = TwoPartRegression()
    step_trainer = AccumulatingTrainer(model, regression_batches(4, 0), None, 2)
    meter = GradientNoiseMeter(step_trainer, 4, keep_history=True, groups=module_groups(model))
    for micro_batch, batch in enumerate([next(step_trainer._data_loader_iter)] * 2):
        (model(batch)["loss"] / 2).backward()
        with host_reads_forbidden():
            meter.after_backward(micro_batch, 2)
    with host_reads_forbidden():
        meter.before_optimizer_step()
    assert len(meter.history) == 1 and set(meter.history[0].groups) == {"body", "head"}


def _group_norms_worker(out: str) -> None:
    # A tiny bucket cap: after DDP rebuilds its buckets (after the first step), a group's
    # gradients lie in several buckets.
    history, norms, group_norms = measure_groups(accumulation=1, steps=3, bucket_cap_mb=1e-4)
    if comm.is_main_process():
        torch.save({"history": history, "norms": norms, "group_norms": group_norms}, Path(out))


@pytest.mark.slow
def test_group_norms_on_two_processes_add_up_to_the_total(tmp_path) -> None:
    # The small norms per group are each process's, read in DDP's communication hook from the
    # bucket's per-parameter gradients before the all-reduce, averaged over the processes.
    out = tmp_path / "result.pt"
    launch(_group_norms_worker, 2, dist_url="auto", args=(str(out),))
    result = torch.load(out, weights_only=False)
    assert len(result["history"]) == 3
    assert {(h.small_batch, h.big_batch) for h in result["history"]} == {(4, 8)}
    check_group_norms(result["history"], result["norms"], result["group_norms"])


def test_module_groups_of_the_tiny_detector() -> None:
    model = build_model(load_cfg(str(TINY_DETECTOR)))
    for parameter in model.backbone.bottom_up.stem.parameters():
        parameter.requires_grad_(False)  # frozen: in no group
    groups = module_groups(model)
    assert list(groups) == ["backbone", "fpn", "rpn", "roi_heads"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    grouped = [id(p) for members in groups.values() for p in members]
    assert len(grouped) == len(set(grouped)) == len(trainable)
    assert set(grouped) == {id(p) for p in trainable}

    def ids(module: nn.Module) -> set[int]:
        return {id(p) for p in module.parameters() if p.requires_grad}

    backbone = model.backbone
    assert {id(p) for p in groups["backbone"]} == ids(backbone.bottom_up)
    assert {id(p) for p in groups["fpn"]} == ids(backbone) - ids(backbone.bottom_up)
    assert {id(p) for p in groups["rpn"]} == ids(model.proposal_generator)
    assert {id(p) for p in groups["roi_heads"]} == ids(model.roi_heads)
    assert groups["fpn"] and not ids(backbone.bottom_up.stem)


def test_module_groups_of_other_models_are_their_top_level_children() -> None:
    # A wrapper holding the whole network in one child (the classifier's ``net``) is looked
    # into; a parameter of no child is "other"; children without trainable parameters (ReLU, a
    # frozen layer) make no group.
    frozen = nn.Linear(2, 2).requires_grad_(False)
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), frozen, nn.Linear(3, 1))
    wrapper = nn.Module()
    wrapper.net = net
    assert {name: len(params) for name, params in module_groups(wrapper).items()} == {
        "0": 2,
        "3": 2,
    }
    net.scale = nn.Parameter(torch.ones(1))
    groups = module_groups(wrapper)
    assert list(groups) == ["0", "3", "other"] and groups["other"] == [net.scale]

    import det_scaling.classification  # noqa: F401  (registers ImageClassifier)

    digits = REPO / "configs" / "ImageNet-Classification" / "resnet18_digits_sweep.yaml"
    classifier = build_model(load_cfg(str(digits), ["MODEL.DEVICE", "cpu"]))
    assert list(module_groups(classifier)) == [
        "conv1",
        "bn1",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "fc",
    ]


def test_groups_must_be_disjoint() -> None:
    model = TwoPartRegression()
    step_trainer = AccumulatingTrainer(model, regression_batches(4, 0), None, 2)
    shared = {"a": list(model.parameters()), "b": [model.head.bias]}
    with pytest.raises(ConfigError, match="in both 'a' and 'b'"):
        GradientNoiseMeter(step_trainer, 4, groups=shared)
    with pytest.raises(ConfigError, match="groups is empty"):
        GradientNoiseMeter(step_trainer, 4, groups={})
    with pytest.raises(ConfigError, match="groups hold no parameter"):
        GradientNoiseMeter(step_trainer, 4, groups={"a": []})

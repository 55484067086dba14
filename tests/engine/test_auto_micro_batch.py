"""SCALING.AUTO_MICRO_BATCH: an out-of-memory error on one rank only halves the micro-batch on
every rank (no deadlock), keeps the total batch and the LR, is recorded in the checkpoint, kept on
resume at another process count, and ends with one clear error at one image. Real 2-process gloo
runs of the tiny regressor, whose rank OOM_RANK "runs out of memory" above a micro-batch size."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import LazyCall as L
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils import comm
from helpers.tiny import (
    assert_same_parameters,
    build_trainer,
    continue_from,
    lazy_resume_cfg,
    lr_history,
    parameters,
)

from det_scaling import plan_scaling
from det_scaling.config import read_recipe
from det_scaling.engine import ScalingTrainer
from det_scaling.engine.accumulation import OUT_OF_MEMORY_ERRORS
from det_scaling.engine.failures import RankFailedError
from det_scaling.engine.launch import launch
from det_scaling.scaling.batch_schedule import BatchSchedule
from det_scaling.testing.tiny import IMAGE_SIZE, TinyBoxRegressor, tiny_cfg

INJECTION = "DET_SCALING_TEST_OOM"  # "rank:most images:forward|backward"; unset: no injection


@META_ARCH_REGISTRY.register()
class TinyMemoryCappedRegressor(TinyBoxRegressor):
    """The tiny regressor; on the rank named by $DET_SCALING_TEST_OOM, a micro-batch of more
    images than its cap raises CUDA's out-of-memory error in the forward or the backward pass
    (there after the head's gradients are ready, where DDP would already be all-reducing)."""

    def forward(self, batched_inputs):
        images = torch.stack([x["image"] for x in batched_inputs]).float() / 255.0
        features = F.relu(self.conv(images))
        boxes = self.head(features.mean(dim=(2, 3)))
        targets = torch.stack([x["instances"].gt_boxes.tensor[0] for x in batched_inputs])
        rank, cap, where = (os.environ.get(INJECTION) or "-1:0:forward").split(":")
        if comm.get_rank() == int(rank) and len(batched_inputs) > int(cap):
            if where == "forward":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected in forward)")
            features.register_hook(_out_of_memory)
        return {"loss_box": F.mse_loss(boxes, targets / IMAGE_SIZE)}


class LazyMemoryCappedRegressor(TinyMemoryCappedRegressor):
    """The same, built from keyword arguments as a LazyConfig builds models."""

    def __init__(self, device: str = "cpu") -> None:
        super().__init__(SimpleNamespace(MODEL=SimpleNamespace(DEVICE=device)))


def _out_of_memory(grad):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected in backward)")


def capped_cfg(output_dir: Path, world_size: int = 2):
    """Written for 2 processes x 4 images (total batch 8), 4 steps, a checkpoint every 2."""
    cfg = tiny_cfg(output_dir, ims_per_batch=8, max_iter=4)
    cfg.MODEL.META_ARCHITECTURE = "TinyMemoryCappedRegressor"
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 2
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.STEPS = (2,)
    cfg.SOLVER.WARMUP_ITERS = 1
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.SCALING.AUTO_MICRO_BATCH = True
    return plan_scaling(cfg, world_size).cfg


def _worker(cfg, data_root: str, out: str) -> None:
    trainer = build_trainer(cfg, Path(data_root))
    summary = trainer.train()
    torch.save(
        {
            "lr": lr_history(trainer),
            "ims_per_batch": trainer.storage.history("ims_per_batch").values(),
            "micro_batch": trainer.batch_schedule.micro_batch,
            "accumulation": trainer._trainer.accumulation_steps,
            "summary": summary,
            "parameters": parameters(trainer),
        },
        Path(out) / f"rank{comm.get_rank()}.pt",
    )


def run_two(tmp_path: Path, name: str, data: Path, monkeypatch, injection: str | None):
    if injection is None:
        monkeypatch.delenv(INJECTION, raising=False)
    else:
        monkeypatch.setenv(INJECTION, injection)  # the spawned processes inherit it
    out = tmp_path / name
    launch(_worker, 2, dist_url="auto", args=(capped_cfg(out), str(data), str(out)))
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]


@pytest.mark.slow
def test_out_of_memory_on_one_rank_halves_the_micro_batch_on_both(tmp_path, data, monkeypatch):
    plain = run_two(tmp_path, "plain", data, monkeypatch, None)
    capped = run_two(tmp_path, "capped", data, monkeypatch, "1:2:backward")
    assert [r["micro_batch"] for r in plain] == [4, 4]
    assert [r["accumulation"] for r in plain] == [1, 1]
    # Rank 1 ran out of memory with 4 images; both ranks went on with 2 micro-batches of 2.
    assert [r["micro_batch"] for r in capped] == [2, 2]
    assert [r["accumulation"] for r in capped] == [2, 2]
    for rank in (0, 1):
        assert capped[rank]["summary"]["iterations_done"] == 4
        assert [v for v, _ in capped[rank]["ims_per_batch"]] == [8, 8, 8, 8]
        assert capped[rank]["lr"] == plain[rank]["lr"]
    assert len(plain[0]["lr"]) == 4
    assert capped[0]["summary"]["images_seen"] == plain[0]["summary"]["images_seen"] == 32
    # The gradients this trainer all-reduces itself are DDP's: 2 processes x 4 images train as
    # 1 process x 8 (test_engine shows DDP's do). Each step here sees all 8 images, so the new
    # loader's data order (a new sampler seed) does not matter.
    one = tiny_cfg(tmp_path / "one_process", ims_per_batch=8, max_iter=4)
    one.merge_from_other_cfg(capped_cfg(tmp_path / "one_process"))
    one.SOLVER.REFERENCE_WORLD_SIZE = 0  # 8 images in 1 process, as written
    monkeypatch.delenv(INJECTION)
    single = build_trainer(one, data)
    single.train()
    assert_same_parameters(parameters(single), plain[0]["parameters"])
    assert_same_parameters(parameters(single), capped[0]["parameters"])

    # The checkpoint records the limit; a 1-process run resumed from it keeps it from the start
    # (the config gives that process 4 images per micro-batch: now 2 x 2 accumulated).
    saved = torch.load(tmp_path / "capped" / "model_0000001.pth", weights_only=False)
    progress = saved["trainer"]["hooks"]["ScalingProgress"]
    assert progress["micro_batch_limit"] == 2
    assert progress["grad_accum_steps"] == 2
    continue_from(tmp_path / "capped" / "model_0000001.pth", tmp_path / "one")
    resumed = build_trainer(capped_cfg(tmp_path / "one", world_size=1), data, resume=True)
    summary = resumed.train()
    assert summary["start_iter"] == 4  # 16 images at 4 per step
    assert resumed.batch_schedule.micro_batch == 2
    assert resumed._trainer.accumulation_steps == 2
    assert summary["ims_per_batch"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("where", ["forward", "backward"])
def test_out_of_memory_at_one_image_stops_with_one_clear_error(tmp_path, data, monkeypatch, where):
    with pytest.raises(RankFailedError) as failed:
        run_two(tmp_path, where, data, monkeypatch, f"0:0:{where}")
    message = str(failed.value)
    assert message.startswith("rank 0 of 2 failed: OutOfMemoryAtOneImage: SCALING.AUTO_MICRO_BATCH")
    assert "out of memory with 1 image(s) per micro-batch on rank(s) 0 at iteration 0" in message
    assert "nothing is left to halve" in message


def test_without_auto_micro_batch_out_of_memory_ends_the_run(tmp_path, data, monkeypatch):
    monkeypatch.setenv(INJECTION, "0:2:forward")
    cfg = capped_cfg(tmp_path, world_size=1)
    cfg.defrost()
    cfg.SCALING.AUTO_MICRO_BATCH = False
    with pytest.raises(OUT_OF_MEMORY_ERRORS):
        build_trainer(cfg, data).train()


def test_one_process_halves_until_it_fits(tmp_path, data, monkeypatch):
    monkeypatch.setenv(INJECTION, "0:1:backward")  # 4 images -> 2 -> 1
    trainer = build_trainer(capped_cfg(tmp_path / "capped", world_size=1), data)
    summary = trainer.train()
    assert (trainer.batch_schedule.micro_batch, trainer._trainer.accumulation_steps) == (1, 4)
    assert summary["ims_per_batch"] == 4 and summary["iterations_done"] == 8
    monkeypatch.delenv(INJECTION)
    plain = build_trainer(capped_cfg(tmp_path / "plain", world_size=1), data)
    plain.train()
    assert lr_history(trainer) == lr_history(plain)


def test_a_lazyconfig_halves_its_micro_batch_the_same_way(tmp_path, data, monkeypatch):
    def cfg(name):
        written = lazy_resume_cfg(tmp_path / name, 1)  # 2 images per step, 12 steps
        written.model = L(LazyMemoryCappedRegressor)(device="cpu")
        written.train.scaling.auto_micro_batch = True
        return written

    monkeypatch.setenv(INJECTION, "0:1:forward")
    capped = build_trainer(cfg("capped"), data)
    capped.train()
    assert (capped.batch_schedule.micro_batch, capped._trainer.accumulation_steps) == (1, 2)
    monkeypatch.delenv(INJECTION)
    plain = build_trainer(cfg("plain"), data)
    plain.train()
    assert lr_history(capped) == lr_history(plain)


def test_micro_batch_limit_keeps_the_total_batch_and_every_step(tmp_path):
    cfg = tiny_cfg(tmp_path, ims_per_batch=24, accum=2, max_iter=10)
    schedule = BatchSchedule.from_recipe(
        read_recipe(cfg), 2
    )  # 6 images per micro-batch and process
    for limit, micro_batch, accumulation in [
        (3, 3, 4),
        (5, 3, 4),
        (2, 2, 6),
        (1, 1, 12),
        (6, 6, 2),
    ]:
        limited = schedule.with_micro_batch_limit(limit)
        assert (limited.micro_batch, limited.grad_accum_steps) == (micro_batch, accumulation)
        assert limited.ims_per_batch == 24
        assert [limited.images_at_iteration(i) for i in range(11)] == [
            schedule.images_at_iteration(i) for i in range(11)
        ]
        assert limited.state_at(3)["micro_batch_limit"] == limit
    assert "micro_batch_limit" not in schedule.state_at(3)
    with pytest.raises(ValueError, match="at least 1 image"):
        schedule.with_micro_batch_limit(0)


def test_auto_micro_batch_and_noise_scale_are_refused_together(tmp_path):
    cfg = tiny_cfg(tmp_path, ims_per_batch=2)
    cfg.SCALING.AUTO_MICRO_BATCH = True
    cfg.SCALING.NOISE_SCALE.ENABLED = True
    with pytest.raises(
        ValueError, match=r"SCALING\.AUTO_MICRO_BATCH and SCALING\.NOISE_SCALE\.ENABLED"
    ):
        ScalingTrainer(cfg)


def test_auto_micro_batch_and_adascale_above_s_1_are_refused_together(tmp_path, data):
    # Batch 4 (2 micro-batches of 2) for a schedule written for batch 2: S = 2, r is measured.
    cfg = tiny_cfg(tmp_path / "s2", ims_per_batch=4, accum=2)
    cfg.SCALING.RULE = "adascale"
    cfg.SCALING.ADASCALE_REFERENCE_BATCH = 2
    cfg.SCALING.AUTO_MICRO_BATCH = True
    with pytest.raises(
        ValueError, match=r"SCALING\.AUTO_MICRO_BATCH and SCALING\.RULE adascale cannot be"
    ):
        ScalingTrainer(cfg)
    # At S = 1 nothing is measured (r is 1): the two go together.
    cfg = tiny_cfg(tmp_path / "s1", ims_per_batch=4, accum=2)
    cfg.SCALING.RULE = "adascale"
    cfg.SCALING.ADASCALE_REFERENCE_BATCH = 4
    cfg.SCALING.AUTO_MICRO_BATCH = True
    trainer = build_trainer(cfg, data)
    assert trainer.adascale is not None and trainer.gradient_noise is None

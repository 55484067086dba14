"""Checkpoints that survive a crash: atomic writes, resume from the newest readable checkpoint,
retention that keeps an older one. Real training of the tiny model of test_engine, real files."""

from __future__ import annotations

import logging
import os
import signal

import pytest
import torch
from helpers.tiny import build_trainer, lr_history

from det_scaling.engine import SafeCheckpointer, UnreadableCheckpointError
from det_scaling.engine.checkpoint import check_retention, write_atomically
from det_scaling.testing.tiny import tiny_cfg


def checkpoint_cfg(output_dir, **solver):
    """8 steps of 2 images, a checkpoint every 2 steps, warmup then one LR step."""
    cfg = tiny_cfg(output_dir, ims_per_batch=2, max_iter=8)
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.SOLVER.STEPS = (5,)
    cfg.SOLVER.WARMUP_ITERS = 2
    for key, value in solver.items():
        cfg.SOLVER[key] = value
    return cfg


def truncate(path, fraction=0.5):
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * fraction))


def test_a_write_killed_midway_leaves_the_previous_file_whole(tmp_path):
    target = tmp_path / "model_0000001.pth"
    target.write_bytes(b"old checkpoint")

    def dies_while_writing(f):
        f.write(b"half of a new checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # the machine is lost mid-save

    pid = os.fork()
    if pid == 0:  # the child: a real process killed while it writes
        try:
            write_atomically(str(target), dies_while_writing)
        finally:
            os._exit(3)  # not reached
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert target.read_bytes() == b"old checkpoint"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != target.name]
    assert len(leftovers) == 1 and leftovers[0].endswith(".partial")
    assert leftovers[0].startswith(".")  # hidden; never taken for a checkpoint


def test_a_failed_write_removes_its_partial_file(tmp_path):
    def fails(f):
        f.write(b"x")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomically(str(tmp_path / "last_checkpoint"), fails)
    assert list(tmp_path.iterdir()) == []


def test_checkpoints_and_pointer_are_written_whole(tmp_path, data):
    build_trainer(checkpoint_cfg(tmp_path / "run"), data).train()
    out = tmp_path / "run"
    names = sorted(p.name for p in out.glob("*.pth"))
    assert names == [f"model_{i:07d}.pth" for i in (1, 3, 5, 7)] + ["model_final.pth"]
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert not list(out.glob(".*"))  # no temporary file left behind
    saved = torch.load(out / "model_0000003.pth", weights_only=False)
    assert saved["iteration"] == 3 and "model" in saved


def test_resume_skips_a_truncated_last_checkpoint_for_the_one_before(tmp_path, data, caplog):
    uninterrupted = build_trainer(checkpoint_cfg(tmp_path / "whole"), data)
    reference = uninterrupted.train()

    # The run that crashed while saving after step 6, with detectron2's plain torch.save: the
    # pointer names a checkpoint cut in half; the one after step 4 is intact beside it.
    crashed = tmp_path / "crashed"
    build_trainer(checkpoint_cfg(crashed), data).train()
    for name in ("model_0000007.pth", "model_final.pth"):
        (crashed / name).unlink()
    truncate(crashed / "model_0000005.pth")
    (crashed / "last_checkpoint").write_text("model_0000005.pth")
    (crashed / ".model_0000007.pth.abc.partial").write_bytes(b"left by a crash")

    with caplog.at_level(logging.WARNING):
        resumed = build_trainer(checkpoint_cfg(crashed), data, resume=True)
    skipped = [r.getMessage() for r in caplog.records if "Skipping unreadable" in r.getMessage()]
    assert len(skipped) == 1 and str(crashed / "model_0000005.pth") in skipped[0]
    assert "zip archive" in skipped[0]  # torch's reason is in the message
    assert not (crashed / ".model_0000007.pth.abc.partial").exists()

    summary = resumed.train()
    assert summary["start_iter"] == 4  # after model_0000003.pth: 4 steps done
    for key in ("iterations_done", "images_seen", "final_lr"):
        assert summary[key] == pytest.approx(reference[key]), key
    reference_lr = lr_history(uninterrupted)
    assert lr_history(resumed) == pytest.approx({i: reference_lr[i] for i in range(4, 8)})
    assert (crashed / "last_checkpoint").read_text() == "model_final.pth"
    torch.load(crashed / "model_final.pth", weights_only=False)  # whole again


def test_resume_with_no_readable_checkpoint_says_what_to_do(tmp_path, data):
    out = tmp_path / "run"
    build_trainer(checkpoint_cfg(out, CHECKPOINT_PERIOD=4), data).train()
    for path in out.glob("*.pth"):
        truncate(path, 0.1)
    with pytest.raises(UnreadableCheckpointError, match=r"no readable checkpoint in .*afresh"):
        build_trainer(checkpoint_cfg(out), data, resume=True)


def test_resume_candidates_put_the_pointer_first_then_newest_first(tmp_path):
    for age, name in enumerate(["model_final.pth", "model_0000009.pth", "model_0000019.pth"]):
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (1000 + age, 1000 + age))
    (tmp_path / "weights_from_elsewhere.pth").write_bytes(b"x")  # not the trainer's: not tried
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    checkpointer = SafeCheckpointer(torch.nn.Linear(1, 1), str(tmp_path))
    names = [os.path.basename(p) for p in checkpointer.resume_candidates()]
    assert names == ["model_0000009.pth", "model_0000019.pth", "model_final.pth"]


def test_retention_keeps_an_older_checkpoint_and_the_final_one(tmp_path, data):
    out = tmp_path / "run"
    build_trainer(checkpoint_cfg(out, CHECKPOINT_PERIOD=1, CHECKPOINT_MAX_TO_KEEP=2), data).train()
    names = sorted(p.name for p in out.glob("*.pth"))
    assert names == ["model_0000006.pth", "model_0000007.pth", "model_final.pth"]


@pytest.mark.parametrize("keep", [-1, 1])
def test_retention_of_fewer_than_two_is_refused(keep):
    with pytest.raises(ValueError, match=r"SOLVER\.CHECKPOINT_MAX_TO_KEEP is"):
        check_retention(keep, "SOLVER.CHECKPOINT_MAX_TO_KEEP")
    check_retention(0, "SOLVER.CHECKPOINT_MAX_TO_KEEP")  # all
    check_retention(2, "SOLVER.CHECKPOINT_MAX_TO_KEEP")

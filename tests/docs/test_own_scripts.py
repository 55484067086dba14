"""docs/own-code.md's recipes, applied to detectron2's own tools/train_net.py and
tools/lazyconfig_train_net.py from the upstream source snapshot CI builds the upstream leg from,
and trained a few iterations on the demo config (written for 2 GPUs) on 1 process: the scaled
batch, LR and schedule took effect, with the optimizer the command asked for.

Each recipe is its diff blocks and its command, marked ``<!-- recipe: NAME -->`` in the page; the
diffs must apply exactly (a changed upstream script fails here), and the command runs with
overrides appended that shorten it (:data:`SHORTER`). Both scripts run under detectron2 v0.6 too,
given the snapshot: ``import det_scaling`` first is one of the recipe's edits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml
from detectron2.config import LazyConfig
from detectron2.utils.registry import locate
from helpers import REPO
from helpers.markdown import DOCS, Block, blocks, commands

import det_scaling

pytestmark = pytest.mark.slow

PAGE = DOCS / "own-code.md"
RECIPES = ("train_net", "train_net_scaling_trainer", "lazyconfig_train_net")
# A recipe's diffs apply on top of those of the recipes it names here.
BUILDS_ON = {"train_net_scaling_trainer": ("train_net",)}

# The demo config as written for 2 GPUs: 10 iterations (20 on 1 GPU), a 16-image data set.
SHORTER = {
    "train_net": [
        "SOLVER.MAX_ITER", "10", "SOLVER.STEPS", "(5, 8)", "SOLVER.WARMUP_ITERS", "2",
        "TEST.EVAL_PERIOD", "0", "DATASETS.SYNTHETIC_VOC.NUM_TRAINVAL", "16",
        "DATASETS.SYNTHETIC_VOC.NUM_TEST", "4", "SCALING.DATASET_SIZE", "16",
        "OUTPUT_DIR", "output/own",
    ],
    "lazyconfig_train_net": [
        "train.max_iter=10", "train.log_period=1", "train.eval_period=0",
        "dataloader.synthetic_voc.num_trainval=16", "dataloader.synthetic_voc.num_test=4",
        "train.scaling.dataset_size=16", "train.output_dir=output/own",
    ],
}  # fmt: skip
SHORTER["train_net_scaling_trainer"] = SHORTER["train_net"]

# Runs a patched train_net.py as its command line would, recording the optimizer its Trainer
# builds (detectron2 v0.6's DefaultTrainer leaves the optimizer out of its checkpoints).
RECORDING_DRIVER = """
import json, runpy, sys
script, record = sys.argv[1], sys.argv[2]
sys.argv = [script, *sys.argv[3:]]
module = runpy.run_path(script, run_name="train_net")
build = module["Trainer"].build_optimizer.__func__
def recorded(cls, cfg, model):
    optimizer = build(cls, cfg, model)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    with open(record, "w") as f:
        json.dump({"type": type(optimizer).__name__, "param_groups": groups}, f)
    return optimizer
module["Trainer"].build_optimizer = classmethod(recorded)
module["invoke_main"]()
"""


def upstream_snapshot() -> Path:
    """The newest detectron2-*.tar.gz in $DETECTRON2_VENDOR_DIR (default ../shared/vendor), as
    .ci/run finds it; skips the test when there is none."""
    folder = Path(os.environ.get("DETECTRON2_VENDOR_DIR", REPO.parent / "shared" / "vendor"))
    snapshots = sorted(folder.glob("detectron2-*.tar.gz"))
    if not snapshots:
        pytest.skip(
            f"no upstream detectron2 snapshot (detectron2-*.tar.gz) in {folder}: the recipes are "
            "diffs against its tools/ scripts; set DETECTRON2_VENDOR_DIR"
        )
    return snapshots[-1]


def upstream_script(snapshot: Path, name: str) -> str:
    with tarfile.open(snapshot) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith(f"/tools/{name}"))
        return archive.extractfile(member).read().decode()


def apply_diff(text: str, diff: str) -> str:
    """``text`` with the unified diff's hunks applied; each hunk's old lines must appear exactly,
    after the previous hunk."""
    lines = text.splitlines()
    hunks: list[list[str]] = []
    for line in diff.splitlines():
        if line.startswith("@@"):
            hunks.append([])
        elif hunks and not line.startswith(("---", "+++")):
            hunks[-1].append(line or " ")  # an empty line is blank context
    cursor = 0
    for hunk in hunks:
        old = [line[1:] for line in hunk if line[0] in " -"]
        new = [line[1:] for line in hunk if line[0] in " +"]
        at = next(
            (i for i in range(cursor, len(lines) - len(old) + 1) if lines[i : i + len(old)] == old),
            None,
        )
        assert at is not None, "a hunk does not apply:\n" + "\n".join(hunk)
        lines[at : at + len(old)] = new
        cursor = at + len(new)
    return "\n".join(lines) + "\n"


def recipe_blocks(name: str) -> list[Block]:
    found = [b for b in blocks(PAGE) if b.marker == "recipe" and b.marker_value == name]
    assert found, f"{PAGE}: no block marked <!-- recipe: {name} -->"
    return found


def patched(snapshot: Path, name: str) -> dict[str, str]:
    """The scripts the recipe ``name`` (and those it builds on) change, by path in tools/."""
    scripts: dict[str, str] = {}
    for recipe in (*BUILDS_ON.get(name, ()), name):
        for block in recipe_blocks(recipe):
            if block.lang != "diff":
                continue
            path = next(line[6:] for line in block.text.splitlines() if line.startswith("+++ b/"))
            script = path.removeprefix("tools/")
            original = scripts.get(path) or upstream_script(snapshot, script)
            scripts[path] = apply_diff(original, block.text)
    return scripts


def train_with_recipe(name: str, root: Path) -> subprocess.CompletedProcess:
    """Writes the patched scripts and the page's config files under ``root`` (with a copy of
    configs/), then runs the recipe's command there, shortened."""
    snapshot = upstream_snapshot()
    shutil.copytree(REPO / "configs", root / "configs")
    for block in blocks(PAGE):
        if block.marker == "file":
            (root / block.marker_value).write_text(block.text)
    for path, text in patched(snapshot, name).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    (command,) = [c for b in recipe_blocks(name) if b.lang == "sh" for c in commands(b)]
    script, *arguments = command.words[1:]
    if script.endswith("/train_net.py"):
        argv = [sys.executable, "-c", RECORDING_DRIVER, script, "optimizer.json", *arguments]
    else:
        argv = [sys.executable, script, *arguments]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DETECTRON2_DATASETS": str(root / "datasets"),
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [*argv, *SHORTER[name]], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return result


def metrics(root: Path) -> list[dict]:
    return [
        json.loads(line) for line in (root / "output/own/metrics.json").read_text().splitlines()
    ]


def poly_lr(base_lr: float, iteration: int, max_iter: int) -> float:
    """WarmupPolyLR after warmup, as docs/config-keys.md documents it (power 2, end 0)."""
    return base_lr * (1 - iteration / max_iter) ** 2


def test_train_net_with_solver_mixin_trains_at_the_scaled_batch_lr_and_schedule(tmp_path) -> None:
    train_with_recipe("train_net", tmp_path)
    cfg = yaml.safe_load((tmp_path / "output/own/config.yaml").read_text())
    solver = cfg["SOLVER"]
    # Written for 2 GPUs x 1 image, LR 0.01, 10 iterations: on 1 GPU, 1 image, LR 0.005, 20.
    assert (solver["REFERENCE_WORLD_SIZE"], solver["IMS_PER_BATCH"]) == (1, 1)
    assert (solver["BASE_LR"], solver["MAX_ITER"], solver["WARMUP_ITERS"]) == (0.005, 20, 4)
    logged = [m for m in metrics(tmp_path) if "lr" in m]
    assert logged[-1]["iteration"] == 19  # detectron2 writes every 20 iterations and at the end
    assert logged[-1]["lr"] == pytest.approx(poly_lr(0.005, 19, 20), rel=1e-6)
    built = json.loads((tmp_path / "optimizer.json").read_text())
    assert built["type"] == "LARS"
    assert {g["clip"] for g in built["param_groups"]} == {True}  # LARC
    assert {g["lars_exclude"] for g in built["param_groups"]} == {True, False}
    print(f"\ntrain_net.py + SolverMixin: {built['type']} (clip) over {len(built['param_groups'])}"
          f" groups; config.yaml IMS_PER_BATCH 1, BASE_LR 0.005, MAX_ITER 20; lr at iteration "
          f"{logged[-1]['iteration']}: {logged[-1]['lr']:.4g}")  # fmt: skip


def test_train_net_with_scaling_trainer_accumulates_to_the_reference_batch(tmp_path) -> None:
    train_with_recipe("train_net_scaling_trainer", tmp_path)
    summary = json.loads((tmp_path / "output/own/summary.json").read_text())
    # SCALING.KEEP_REFERENCE_BATCH: the 2-GPU batch, LR and schedule on 1 GPU, by accumulation.
    assert summary["world_size"] == 1
    assert (summary["ims_per_batch"], summary["grad_accum_steps"]) == (2, 2)
    assert summary["micro_batch_per_process"] == 1
    assert (summary["base_lr"], summary["max_iter"], summary["iterations_done"]) == (0.01, 10, 10)
    assert json.loads((tmp_path / "optimizer.json").read_text())["type"] == "SGD"
    print(f"\ntrain_net.py + ScalingTrainer: batch {summary['ims_per_batch']} = 1 image x "
          f"{summary['grad_accum_steps']} micro-batches, LR {summary['base_lr']}, "
          f"{summary['iterations_done']} iterations")  # fmt: skip


def test_lazyconfig_train_net_trains_larc_at_the_scaled_batch_lr_and_schedule(tmp_path) -> None:
    train_with_recipe("lazyconfig_train_net", tmp_path)
    cfg = LazyConfig.load(str(tmp_path / "output/own/config.yaml"))
    assert cfg["train"]["reference_world_size"] == 1
    assert cfg["dataloader"]["train"]["total_batch_size"] == 1
    assert (cfg["optimizer"]["lr"], cfg["train"]["max_iter"]) == (0.005, 20)
    assert locate(cfg["optimizer"]["_target_"]) is det_scaling.LARS
    lrs = {m["iteration"]: m["lr"] for m in metrics(tmp_path) if "lr" in m}
    assert sorted(lrs) == list(range(20))  # train.log_period=1
    after_warmup = range(2, 20)  # warmup: 100/1500 of the run, 1.3 of its 20 iterations
    assert [lrs[i] for i in after_warmup] == pytest.approx(
        [poly_lr(0.005, i, 20) for i in after_warmup], rel=1e-6
    )
    checkpoint = torch.load(
        tmp_path / "output/own/model_final.pth", map_location="cpu", weights_only=False
    )
    groups = checkpoint["trainer"]["optimizer"]["param_groups"]
    assert {g["clip"] for g in groups} == {True} and {g["lars_exclude"] for g in groups} == {
        True,
        False,
    }
    print(f"\nlazyconfig_train_net.py: LARC over {len(groups)} groups; total_batch_size 1, "
          f"optimizer.lr 0.005, train.max_iter 20; lr at iterations 2, 10, 19: "
          f"{lrs[2]:.4g}, {lrs[10]:.4g}, {lrs[19]:.4g}")  # fmt: skip


def test_every_recipe_of_the_page_is_trained_here() -> None:
    named = {b.marker_value for b in blocks(PAGE) if b.marker == "recipe"}
    assert named == set(RECIPES)
    for name in RECIPES:
        kinds = sorted(b.lang for b in recipe_blocks(name))
        assert kinds == ["diff", "sh"], f"recipe {name}: one diff and one command, got {kinds}"

"""The steps of the GPU check (``benchmarks/gpu_check.py``) that run det-scaling itself, one
process each::

    python benchmarks/gpu_steps.py STEP --device cuda|cpu --work DIR --result FILE [--quick]

Each step writes FILE, a JSON object: ``headline`` (one line for the summary), ``figures`` (the
numbers), ``tables`` (Markdown), ``checks`` (``name``, ``ok``, ``detail``: what must hold for the
step to pass) and ``notes``. Every step runs the tiny Faster R-CNN R-18-FPN of
``configs/VOC07-Detection/faster_rcnn_synthetic_tiny.yaml`` on its generated data set (under
``$DETECTRON2_DATASETS``), trained by ``ScalingTrainer``. With ``--device cpu`` a step runs its
CPU equivalent (the dry run); ``--quick`` makes it small enough for a 2-core CI machine.

* ``environment``: the requirements met (``tools/gpu_wheelhouse.py``), the modules imported, the
  versions of Python, torch, CUDA, cuDNN, NCCL and detectron2's stack, the GPU;
* ``detector``: images/s at batch 1, 2, 4, 8, 16 on the device (and at batch 2 on the CPU, for
  scale); AMP with 4 accumulated micro-batches against none, the same total batch and schedule;
* ``nccl`` (under ``torchrun --nproc-per-node 1``): ``det-scaling train`` through
  ``det_scaling.engine.launch`` in a 1-process NCCL group with ``--dist-timeout``, then
  ``--resume`` to a longer schedule; DDP over that group with the accumulating step;
* ``auto_micro_batch``: ``SCALING.AUTO_MICRO_BATCH`` against a real CUDA out-of-memory error,
  forced by ``torch.cuda.set_per_process_memory_fraction`` at a cap measured on the model
  (CPU: the error raised above one image per micro-batch, there being no device memory to cap);
* ``determinism``: the tiny detector trained twice with ``DETERMINISTIC`` from one seed, and once
  without: the weights compared bit for bit;
* ``adascale_cost``: iteration time of ``SCALING.RULE adascale`` against the linear rule, both at
  4 simulated GPUs by accumulation (``benchmarks/_timing.py``'s alternating chunks).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import torch
from _timing import Stepper, compare

import det_scaling  # first: installs the detectron2 compatibility layer

# isort: split
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage
from tabulate import tabulate
from torch import distributed as dist

from det_scaling.cli import main as cli_main
from det_scaling.cli.train import add_training_arguments
from det_scaling.engine import ScalingTrainer, build_step
from det_scaling.engine.launch import launch, under_torchrun
from det_scaling.tasks import build_trainer as build_run_trainer
from det_scaling.tasks import prepare_run

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny.yaml"
DIST_TIMEOUT = "90s"  # what the NCCL step passes as --dist-timeout, and reads back from the group


class Result:
    """What a step found; :meth:`write` saves it for the orchestrator."""

    def __init__(self) -> None:
        self.headline = ""
        self.figures: dict[str, Any] = {}
        self.tables: list[str] = []
        self.checks: list[dict[str, Any]] = []
        self.notes: list[str] = []

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail})
        return bool(ok)

    def table(self, title: str, rows: list[dict[str, Any]]) -> None:
        self.tables.append(f"{title}\n\n{tabulate(rows, headers='keys', tablefmt='github')}")

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "headline": self.headline,
            "figures": self.figures,
            "tables": self.tables,
            "checks": self.checks,
            "notes": self.notes,
        }
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")


# ------------------------------------------------------------------------ shared pieces ----
def log_to_stdout() -> None:
    """detectron2's, fvcore's and det_scaling's INFO logs on stdout (the check's log file)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s]: %(message)s", "%H:%M:%S"))
    for name in ("detectron2", "det_scaling", "fvcore"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def data_overrides(quick: bool) -> list[str]:
    """The generated data set: the config's (500 training, 100 test images) or, quick, a few."""
    if not quick:
        return []
    return ["DATASETS.SYNTHETIC_VOC.NUM_TRAINVAL", "16", "DATASETS.SYNTHETIC_VOC.NUM_TEST", "4"]


def tiny_cfg(device: str, quick: bool, output_dir: Path, *overrides: Any) -> Any:
    """The tiny detector's config on ``device``, training only (no evaluation, no checkpoint
    before the end), with ``overrides`` (KEY VALUE ...) last."""
    opts = [
        "MODEL.DEVICE", device,
        "TEST.EVAL_PERIOD", "0",
        "DATASETS.TEST", "()",
        "SOLVER.CHECKPOINT_PERIOD", "1000000",
        "SCALING.DATASET_SIZE", "0",
        "OUTPUT_DIR", str(output_dir),
        *data_overrides(quick),
        *map(str, overrides),
    ]  # fmt: skip
    return det_scaling.load_cfg(str(CONFIG), opts)


def schedule(iterations: int) -> list[str]:
    """A short schedule with a warmup and one LR step, so that the LR changes during the run."""
    return [
        "SOLVER.MAX_ITER", str(iterations),
        "SOLVER.WARMUP_ITERS", str(max(1, iterations // 4)),
        "SOLVER.STEPS", f"({max(1, iterations * 3 // 4)},)",
    ]  # fmt: skip


def build_trainer(cfg: Any) -> ScalingTrainer:
    """The config resolved for this process (data generated once) and its trainer."""
    return build_run_trainer(prepare_run(cfg, comm.get_world_size()))


def release(device: str) -> None:
    """Frees what deleted trainers held (CUDA's cache too, so that memory figures start clean)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def history(trainer: ScalingTrainer, name: str) -> list[float]:
    """A scalar's value at every iteration the trainer's storage recorded it."""
    histories = trainer.storage.histories()
    return [value for value, _ in histories[name].values()] if name in histories else []


def all_finite(values: list[float]) -> bool:
    return bool(values) and all(math.isfinite(v) for v in values)


def _load_tool(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- environment ----
def environment(args: argparse.Namespace, result: Result) -> None:
    wheelhouse = _load_tool("gpu_wheelhouse")
    report = wheelhouse.environment_report(args.wheelhouse)
    failed = {n: m["error"] for n, m in report["modules"].items() if "error" in m}
    unmet = report["unmet_requirements"]
    result.check("every requirement met", not unmet, "; ".join(unmet))
    result.check(
        "every module imports", not failed, "; ".join(f"{n}: {e}" for n, e in failed.items())
    )
    versions: dict[str, Any] = {
        "python": report["python"],
        "executable": report["executable"],
        **{name: m.get("version", "") for name, m in report["modules"].items() if "error" not in m},
        "torch cuda": torch.version.cuda,
        "det_scaling compat fixes": ", ".join(det_scaling.compat.applied_fixes()) or "none",
    }
    cuda = torch.cuda.is_available()
    if cuda:
        props = torch.cuda.get_device_properties(0)
        versions.update(
            {
                "gpu": f"{props.name} ({props.total_memory / 2**30:.0f} GiB, "
                f"{props.multi_processor_count} SMs, compute {props.major}.{props.minor})",
                "gpus": torch.cuda.device_count(),
                "cudnn": torch.backends.cudnn.version(),
                "nccl": _nccl_version(),
                "bf16 supported": torch.cuda.is_bf16_supported(),
                "driver": _nvidia_smi("driver_version"),
            }
        )
    # A file, not an import: det_scaling.compat puts a placeholder module where the ops are not.
    package = Path(importlib.util.find_spec("detectron2").origin).parent
    versions["detectron2 compiled ops"] = any(package.glob("_C.*"))
    versions["cpu"] = f"{_cpu_model()}, {os.cpu_count()} cores"
    result.figures["versions"] = versions
    result.figures["modules"] = report["modules"]
    if args.device == "cuda":
        result.check("CUDA is available", cuda, "torch.cuda.is_available() is False")
    else:
        result.notes.append(f"no CUDA step runs on this device: {args.device}")
    result.table("Versions", [{"what": k, "version": v} for k, v in versions.items()])
    gpu = versions.get("gpu", "no GPU")
    result.headline = (
        f"Python {report['python']}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"detectron2 {versions.get('detectron2', '?')}; {gpu}"
    )


def _nccl_version() -> str:
    version = torch.cuda.nccl.version()  # a tuple in recent torch, an int (2.x.y as 2xxyy) before
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def _nvidia_smi(field: str) -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unknown ({error})"
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else "unknown"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


# ------------------------------------------------------------------------------- detector ----
def images_per_second(
    device: str, batch: int, quick: bool, work: Path, warmup: int, timed: int
) -> dict[str, Any]:
    """Median iteration time (hooks included) of the tiny detector at ``batch`` images per step
    in one process on ``device``; images/s and, on CUDA, the peak memory allocated."""
    cfg = tiny_cfg(
        device, quick, work / f"throughput_{device}_{batch}",
        "SOLVER.REFERENCE_WORLD_SIZE", 0, "SOLVER.IMS_PER_BATCH", batch,
        "SOLVER.MAX_ITER", 100000, "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", 0,
    )  # fmt: skip
    stepper = Stepper(build_trainer(cfg))
    stepper.steps(warmup)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = stepper.steps(timed)
    median = statistics.median(times)
    row = {
        "device": device,
        "batch": batch,
        "median iteration (ms)": round(median * 1e3, 2),
        "images/s": round(batch / median, 1),
        "timed iterations": timed,
    }
    if device == "cuda":
        row["peak memory (MiB)"] = round(torch.cuda.max_memory_allocated() / 2**20)
    else:
        row["torch threads"] = torch.get_num_threads()
    del stepper
    release(device)
    return row


def amp_with_accumulation(device: str, quick: bool, work: Path, result: Result) -> None:
    """The same total batch and schedule with 1 and with 4 micro-batches per step, under AMP
    on CUDA (fp32 on the CPU: detectron2's AMP is CUDA's)."""
    total, iterations = (4, 2) if quick else (8, 40)
    amp = device == "cuda"
    runs = {}
    for label, accumulation in (("no accumulation", 1), ("accumulation 4", 4)):
        cfg = tiny_cfg(
            device, quick, work / f"amp_accum{accumulation}",
            "SOLVER.REFERENCE_WORLD_SIZE", 1, "SOLVER.IMS_PER_BATCH", total,
            "SCALING.GRAD_ACCUM_STEPS", accumulation, "SOLVER.AMP.ENABLED", amp,
            "SOLVER.BASE_LR", 0.02, *schedule(iterations),
        )  # fmt: skip
        trainer = build_trainer(cfg)
        summary = trainer.train()
        scaler = trainer._trainer.grad_scaler
        runs[label] = {
            "summary": summary,
            "lr": history(trainer, "lr"),
            "loss": history(trainer, "total_loss"),
            "scale": None if scaler is None else float(scaler.get_scale()),
        }
        del trainer
        release(device)
    plain, accumulated = runs["no accumulation"], runs["accumulation 4"]
    result.check(
        "same LR at every step, with and without accumulation",
        len(plain["lr"]) == iterations and plain["lr"] == accumulated["lr"],
        f"{plain['lr']} vs {accumulated['lr']}",
    )
    for label, run in runs.items():
        summary = run["summary"]
        result.check(f"{label}: finite losses", all_finite(run["loss"]), str(run["loss"]))
        result.check(
            f"{label}: {iterations} steps of {total} images",
            summary["iterations_done"] == iterations and summary["ims_per_batch"] == total,
            f"{summary['iterations_done']} steps of {summary['ims_per_batch']}",
        )
        if amp:
            result.check(f"{label}: AMP loss scale finite", math.isfinite(run["scale"] or math.nan))
    rows = []
    for label, run in runs.items():
        summary, losses = run["summary"], run["loss"]
        last = losses[-max(1, len(losses) // 4) :]
        rows.append(
            {
                "run": label,
                "micro-batches x images": f"{summary['grad_accum_steps']} x "
                f"{summary['micro_batch_per_process']}",
                "AMP": amp,
                "steps": summary["iterations_done"],
                "final LR": summary["final_lr"],
                "mean loss, last quarter": round(statistics.fmean(last), 4) if last else None,
                "images/s": round(summary["images_per_s"], 1),
                "loss scale at end": run["scale"],
            }
        )
    result.figures["amp_accumulation"] = rows
    result.table(f"AMP, total batch {total}, {iterations} steps ({device})", rows)
    if not amp:
        result.notes.append("AMP needs CUDA (detectron2's AMPTrainer too): fp32 on the CPU")


def detector(args: argparse.Namespace, result: Result) -> None:
    device, quick = args.device, args.quick
    batches = (1, 2) if quick else (1, 2, 4, 8, 16)
    warmup, timed = (0, 2) if quick else (5, 20)
    rows = [images_per_second(device, b, quick, args.work, warmup, timed) for b in batches]
    if device == "cuda":  # the CPU for scale, with all its cores
        rows.append(images_per_second("cpu", 2, quick, args.work, 1, 3 if quick else 5))
    result.figures["throughput"] = rows
    result.table("Images/s, one process (median iteration, hooks included)", rows)
    for row in rows:
        result.check(
            f"{row['device']} batch {row['batch']}: images/s measured", row["images/s"] > 0
        )
    amp_with_accumulation(device, quick, args.work, result)
    best = max((r for r in rows if r["device"] == device), key=lambda r: r["images/s"])
    cpu = [r for r in rows if r["device"] == "cpu" and device == "cuda"]
    result.headline = f"{best['images/s']} images/s at batch {best['batch']} on {device}" + (
        f" (CPU: {cpu[0]['images/s']} at batch 2)" if cpu else ""
    )


# ----------------------------------------------------------------------------------- nccl ----
def nccl(args: argparse.Namespace, result: Result) -> None:
    """Runs in the one process of ``torchrun --nproc-per-node 1``: ``launch`` makes its process
    group from torchrun's environment (NCCL with a GPU, gloo without)."""
    if not under_torchrun():
        raise SystemExit("the nccl step runs under torchrun (gpu_check.py starts it so)")
    iterations, first, second = _train_and_resume(args.device, args.quick, args.work, result)
    found, backend = _group_checks(args.device, args.quick, args.work, result)
    _report_nccl(result, iterations, first, second, found, backend)


def _train_and_resume(
    device: str, quick: bool, work: Path, result: Result
) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """``det-scaling train`` with ``--dist-timeout``, then ``--resume`` to twice the steps,
    checked; the step count and the two runs' summaries."""
    iterations = 2 if quick else 20
    output = work / "nccl_train"
    train = [
        "train", "--config-file", str(CONFIG), "--no-scale", "--dist-timeout", DIST_TIMEOUT,
        "MODEL.DEVICE", device, "SCALING.DATASET_SIZE", "0", "TEST.EVAL_PERIOD", "0",
        "SOLVER.CHECKPOINT_PERIOD", str(iterations // 2), *data_overrides(quick),
        "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", f"({max(1, iterations * 3 // 4)},)",
        "OUTPUT_DIR", str(output),
    ]  # fmt: skip
    code = cli_main([*train, "SOLVER.MAX_ITER", str(iterations)])
    first = _read_json(output / "summary.json")
    result.check("train: exit status 0", code == 0, f"exit status {code}")
    result.check(
        f"train: {iterations} steps, checkpoints written",
        first.get("iterations_done") == iterations
        and (output / f"model_{iterations // 2 - 1:07d}.pth").is_file()
        and (output / "model_final.pth").is_file(),
        f"{first.get('iterations_done')} steps; {sorted(p.name for p in output.glob('*.pth'))}",
    )
    code = cli_main([*train, "--resume", "SOLVER.MAX_ITER", str(2 * iterations)])
    second = _read_json(output / "summary.json")
    result.check("resume: exit status 0", code == 0, f"exit status {code}")
    result.check(
        f"resume: continues at step {iterations} to {2 * iterations}",
        second.get("start_iter") == iterations and second.get("max_iter") == 2 * iterations,
        f"start_iter {second.get('start_iter')}, max_iter {second.get('max_iter')}",
    )
    metrics = second.get("metrics", {})
    result.check("evaluated at the end (VOC07 AP50)", "bbox/AP50" in metrics, str(metrics))
    return iterations, first, second


def _group_checks(
    device: str, quick: bool, work: Path, result: Result
) -> tuple[dict[str, Any], str]:
    """The group ``launch`` makes, checked: its backend and timeout, an all-reduce, DDP's
    gradient and the accumulating step on DDP; what was found, and "backend, world size"."""
    found: dict[str, Any] = {}
    timeout = _parsed_dist_timeout()
    launch(_ddp_check, 1, timeout=timeout, args=(device, quick, work, found))
    expected = "nccl" if device == "cuda" else "gloo"
    backend = f"{found.get('backend')}, world size {found.get('world_size')}"
    result.check(f"launch made a {expected} group", found.get("backend") == expected, backend)
    result.check(
        f"--dist-timeout {DIST_TIMEOUT} reached the group",
        found.get("timeout_s") == timeout.total_seconds(),
        f"the group's timeout: {found.get('timeout_s')} s",
    )
    result.check("all_reduce over the group", found.get("all_reduce_ok", False))
    result.check(
        "the run's step wrapped the model in DDP",
        found.get("ddp_model") == "DistributedDataParallel",
        str(found.get("ddp_model")),
    )
    result.check(
        "DDP's gradient = the model's own (relative difference < 1e-3)",
        found.get("ddp_grad_rel_diff", math.inf) < 1e-3,
        f"{found.get('ddp_grad_rel_diff')}",
    )
    for label in ("DDP, accumulation 2", "DDP, own all-reduce (AUTO_MICRO_BATCH)"):
        losses = found.get("losses", {}).get(label, [])
        moved = found.get("moved", {}).get(label, False)
        result.check(
            f"{label}: finite losses, weights moved", all_finite(losses) and moved, str(losses)
        )
    return found, backend


def _report_nccl(
    result: Result,
    iterations: int,
    first: dict[str, Any],
    second: dict[str, Any],
    found: dict[str, Any],
    backend: str,
) -> None:
    """The nccl step's figures, table, note and headline."""
    result.figures.update(
        {
            "train": {k: first.get(k) for k in ("iterations_done", "images_per_s", "final_lr")},
            "resume": {k: second.get(k) for k in ("start_iter", "max_iter", "final_lr", "metrics")},
            "group": {k: v for k, v in found.items() if k != "losses"},
        }
    )
    metrics = second.get("metrics", {})
    rows = {
        "backend, world size": backend,
        "group timeout (s)": found.get("timeout_s"),
        "train: steps, images/s": f"{first.get('iterations_done')}, "
        f"{first.get('images_per_s', 0):.1f}",
        "resume: from, to": f"{second.get('start_iter')}, {second.get('max_iter')}",
        "AP50 after resume": metrics.get("bbox/AP50"),
        "DDP gradient, relative difference": found.get("ddp_grad_rel_diff"),
    }
    result.table(
        "1-process group through det_scaling.engine.launch under torchrun",
        [{"what": what, "found": value} for what, value in rows.items()],
    )
    result.notes.append(
        "At world size 1 the trainer builds no DDP (create_ddp_model returns the model) and "
        "detectron2's comm skips its collectives; the DDP and all-reduce figures come from the "
        "run's step built with DDP at one process, in the same group. A dead peer (what "
        "--dist-timeout is for) needs 2 GPUs."
    )
    difference = found.get("ddp_grad_rel_diff")
    result.headline = (
        f"{found.get('backend')} group, timeout {found.get('timeout_s')} s; train {iterations} "
        f"+ resume to {2 * iterations} steps; DDP gradient difference "
        + (f"{difference:.2g}" if isinstance(difference, float) else "not measured")
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _parsed_dist_timeout() -> timedelta:
    """``--dist-timeout`` as ``det-scaling train`` parses it."""
    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    return parser.parse_args(["--config-file", "x", "--dist-timeout", DIST_TIMEOUT]).dist_timeout


def _group_timeout_s() -> float | None:
    group = dist.distributed_c10d._get_default_group()
    device = torch.device("cuda" if dist.get_backend() == "nccl" else "cpu")
    with contextlib.suppress(Exception):  # private API: None when this torch lays it out otherwise
        return group._get_backend(device).options._timeout.total_seconds()
    return None


def _ddp_check(device: str, quick: bool, work: Path, found: dict[str, Any]) -> None:
    """In the process group ``launch`` made: its backend and timeout, an all-reduce, DDP's
    gradient against the model's own on the same micro-batch, and the accumulating step on DDP
    (DDP's all-reduce in the last backward pass; then the trainer's own, as under
    ``SCALING.AUTO_MICRO_BATCH``)."""
    found.update(backend=dist.get_backend(), world_size=dist.get_world_size())
    found["timeout_s"] = _group_timeout_s()
    on = (
        torch.device("cuda", torch.cuda.current_device())
        if device == "cuda"
        else torch.device("cpu")
    )
    ones = torch.ones(4, device=on)
    dist.all_reduce(ones)
    found["all_reduce_ok"] = bool(torch.all(ones == dist.get_world_size()).item())

    cfg = tiny_cfg(
        device, quick, work / "nccl_ddp",
        "SOLVER.REFERENCE_WORLD_SIZE", 0, "SOLVER.IMS_PER_BATCH", 4,
        "SCALING.GRAD_ACCUM_STEPS", 2, "SOLVER.BASE_LR", 0.01, *schedule(20),
    )  # fmt: skip
    run = prepare_run(cfg, dist.get_world_size())
    seed_all_rng(run.cfg.SEED)
    step = build_step(run, ScalingTrainer, ddp_at_one_process=True)
    found["ddp_model"] = type(step.ddp_model).__name__
    reference = ScalingTrainer.build_model(run.cfg)
    reference.load_state_dict(step.model.state_dict())
    # One iterator for everything: two over detectron2 v0.6's grouped loader share its buckets,
    # and the second then never fills one.
    batches = iter(step.data_loader)
    step.trainer.replace_data_loader(batches)
    batch = next(batches)
    grads = {}
    for name, net in (("ddp", step.ddp_model), ("reference", reference)):
        torch.manual_seed(0)  # the same proposal and RoI sampling in both passes
        with EventStorage(0):  # the heads log their sampling there
            sum(net(batch).values()).backward()
        grads[name] = [p.grad.detach().float() for p in net.parameters() if p.grad is not None]
    difference = math.sqrt(
        sum(float((a - b).pow(2).sum()) for a, b in zip(*grads.values(), strict=True))
    )
    norm = math.sqrt(sum(float(b.pow(2).sum()) for b in grads["reference"]))
    found["ddp_grad_rel_diff"] = difference / norm if norm > 0 else math.inf

    trainer, model = step.trainer, step.model
    found["losses"], found["moved"] = {}, {}
    with EventStorage(0) as storage:
        for label, own_all_reduce in (
            ("DDP, accumulation 2", False),
            ("DDP, own all-reduce (AUTO_MICRO_BATCH)", True),
        ):
            trainer.auto_micro_batch = own_all_reduce
            before = [p.detach().clone() for p in model.parameters()]
            losses = []
            for _ in range(1 if quick else 5):
                trainer.iter = storage.iter
                trainer.run_step()
                losses.append(float(storage.latest()["total_loss"][0]))
                storage.step()
            found["losses"][label] = losses
            found["moved"][label] = any(
                not torch.equal(a, b.detach())
                for a, b in zip(before, model.parameters(), strict=True)
            )


# ----------------------------------------------------------------------- auto micro-batch ----
@contextlib.contextmanager
def micro_batch_messages() -> Iterator[list[str]]:
    """The trainer's "Micro-batch A -> B ..." log lines while the block runs."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message.startswith("Micro-batch"):
                lines.append(message)

    handler = Collect()
    logger = logging.getLogger("det_scaling")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def peak_reserved(device: str, quick: bool, work: Path, micro_batch: int, big: list[str]) -> int:
    """Bytes CUDA's caching allocator reserves at most over 2 steps of ``micro_batch`` images,
    from an emptied cache."""
    release(device)
    torch.cuda.reset_peak_memory_stats()
    cfg = tiny_cfg(
        device, quick, work / f"calibrate_{micro_batch}",
        "SOLVER.REFERENCE_WORLD_SIZE", 0, "SOLVER.IMS_PER_BATCH", micro_batch,
        "SOLVER.MAX_ITER", 100, "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", 0, *big,
    )  # fmt: skip
    stepper = Stepper(build_trainer(cfg))
    stepper.steps(2)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_reserved()
    del stepper
    release(device)
    return peak


TrainAutoMicroBatch = Callable[..., dict[str, Any]]  # (name, before=None) -> the run's record


def auto_micro_batch(args: argparse.Namespace, result: Result) -> None:
    """``SCALING.AUTO_MICRO_BATCH`` against an out-of-memory error: a capped run must halve its
    micro-batch and match the uncapped run's total batch, images and LRs."""
    device, quick = args.device, args.quick
    total, iterations = (4, 2) if quick else (16, 6)
    # Larger inputs on the GPU: activations, which scale with the micro-batch, then dominate
    # the memory the weights and the optimizer hold, so the cap below separates 4 from 8.
    big = (
        []
        if device != "cuda"
        else ["INPUT.MIN_SIZE_TRAIN", "(512,)", "INPUT.MAX_SIZE_TRAIN", "1024"]
    )
    common = [
        "SOLVER.REFERENCE_WORLD_SIZE", 1, "SOLVER.IMS_PER_BATCH", total,
        "SCALING.AUTO_MICRO_BATCH", True, "SOLVER.BASE_LR", 0.01, *schedule(iterations), *big,
    ]  # fmt: skip
    train = partial(_train_auto_micro_batch, device, quick, args.work, common)
    reference = train("amb_reference")
    if device == "cuda":
        capped_run = _capped_on_cuda(device, quick, args.work, big, result, train)
        if capped_run is None:
            return
        capped, how = capped_run
    else:
        capped, how = _capped_on_cpu(result, train)
    _check_auto_micro_batch(result, total, iterations, reference, capped)
    _report_auto_micro_batch(result, total, how, reference, capped)


def _train_auto_micro_batch(
    device: str,
    quick: bool,
    work: Path,
    common: list[Any],
    name: str,
    before: Callable[[ScalingTrainer], None] | None = None,
) -> dict[str, Any]:
    """One run of the tiny detector with ``common``: its summary, LR, batch and loss per step,
    and the trainer's micro-batch messages. ``before`` is applied to the trainer first."""
    trainer = build_trainer(tiny_cfg(device, quick, work / name, *common))
    if before is not None:
        before(trainer)
    with micro_batch_messages() as messages:
        summary = trainer.train()
    out = {
        "summary": summary,
        "lr": history(trainer, "lr"),
        "ims_per_batch": history(trainer, "ims_per_batch"),
        "loss": history(trainer, "total_loss"),
        "messages": messages,
    }
    del trainer
    release(device)
    return out


def _capped_on_cuda(
    device: str, quick: bool, work: Path, big: list[str], result: Result, train: TrainAutoMicroBatch
) -> tuple[dict[str, Any], str] | None:
    """The run under a CUDA memory cap with room for 6 images, and how it was capped; None when
    the calibration failed (checked)."""
    low, high = 2, 4
    reserved = {m: peak_reserved(device, quick, work, m, big) for m in (low, high)}
    per_image = (reserved[high] - reserved[low]) / (high - low)
    base = reserved[low] - low * per_image
    if per_image <= 0:
        result.check("calibration: memory grows with the micro-batch", False, str(reserved))
        return None
    # Room for 6 images: micro-batches of 16 and 8 do not fit, 4 fits with 2 to spare.
    cap = base + 6 * per_image
    total_memory = torch.cuda.get_device_properties(0).total_memory
    fraction = cap / total_memory
    torch.cuda.set_per_process_memory_fraction(fraction)
    result.figures["calibration"] = {
        "peak reserved at 2 images (MiB)": round(reserved[low] / 2**20),
        "peak reserved at 4 images (MiB)": round(reserved[high] / 2**20),
        "per image (MiB)": round(per_image / 2**20),
        "cap (MiB)": round(cap / 2**20),
        "memory fraction": fraction,
        "reserved before the capped run (MiB)": round(torch.cuda.memory_reserved() / 2**20),
    }
    capped = train("amb_capped")
    how = f"torch.cuda.set_per_process_memory_fraction({fraction:.5f}): {cap / 2**20:.0f} MiB"
    return capped, how


def _capped_on_cpu(result: Result, train: TrainAutoMicroBatch) -> tuple[dict[str, Any], str]:
    """The run with an out-of-memory error raised above one image per micro-batch (no device
    memory to cap), and how it was capped."""
    cap_images = 1

    def out_of_memory_above_one_image(trainer: ScalingTrainer) -> None:
        def hook(module: torch.nn.Module, inputs: tuple[Any, ...]) -> None:
            if len(inputs[0]) > cap_images:
                raise torch.cuda.OutOfMemoryError(
                    f"out of memory (CPU stand-in: more than {cap_images} image)"
                )

        trainer.model.register_forward_pre_hook(hook)

    capped = train("amb_capped", out_of_memory_above_one_image)
    how = f"CPU stand-in: torch.cuda.OutOfMemoryError raised above {cap_images} image"
    result.notes.append(
        "No device memory to cap on the CPU: the out-of-memory error is raised by a forward "
        "hook above one image per micro-batch; the GPU run caps real CUDA memory"
    )
    return capped, how


def _check_auto_micro_batch(
    result: Result,
    total: int,
    iterations: int,
    reference: dict[str, Any],
    capped: dict[str, Any],
) -> None:
    """The capped run against the uncapped one: halved micro-batch, same batch, images, LRs."""
    summary, reference_summary = capped["summary"], reference["summary"]
    final = summary["micro_batch_per_process"]
    result.check(
        f"uncapped: {total} images per micro-batch",
        reference_summary["micro_batch_per_process"] == total and not reference["messages"],
        str(reference["messages"]),
    )
    result.check(
        "capped: the micro-batch was halved after out-of-memory",
        final < total and any("out of memory" in m for m in capped["messages"]),
        "; ".join(capped["messages"]) or f"micro-batch {final}",
    )
    result.check(
        f"capped: {iterations} steps of {total} images, the same images seen",
        summary["iterations_done"] == iterations
        and capped["ims_per_batch"] == [total] * iterations
        and summary["images_seen"] == reference_summary["images_seen"],
        f"{summary['iterations_done']} steps, ims_per_batch {capped['ims_per_batch']}",
    )
    result.check("capped: the same LR at every step", capped["lr"] == reference["lr"],
                 f"{capped['lr']} vs {reference['lr']}")  # fmt: skip
    result.check("capped: finite losses", all_finite(capped["loss"]), str(capped["loss"]))


def _report_auto_micro_batch(
    result: Result, total: int, how: str, reference: dict[str, Any], capped: dict[str, Any]
) -> None:
    """The two runs' table, figures and the headline."""
    final = capped["summary"]["micro_batch_per_process"]
    rows = [
        {
            "run": name,
            "micro-batch at end": run["summary"]["micro_batch_per_process"],
            "accumulation at end": run["summary"]["grad_accum_steps"],
            "total batch": run["summary"]["ims_per_batch"],
            "steps": run["summary"]["iterations_done"],
            "final LR": run["summary"]["final_lr"],
            "images/s": round(run["summary"]["images_per_s"], 1),
        }
        for name, run in (("uncapped", reference), ("capped", capped))
    ]
    result.figures.update(runs=rows, messages=capped["messages"], cap=how)
    result.table(f"SCALING.AUTO_MICRO_BATCH, total batch {total} ({how})", rows)
    result.headline = f"micro-batch {total} -> {final} under the cap; " + (
        "same total batch and LRs" if all(c["ok"] for c in result.checks) else "see the checks"
    )


# ------------------------------------------------------------------------- adascale cost ----
def adascale_cost(args: argparse.Namespace, result: Result) -> None:
    device, quick = args.device, args.quick
    micro, gpus = (1, 2) if quick else (4, 4)
    iterations, chunk, warmup = (2, 1, 1) if quick else (30, 5, 3)
    steppers = {}
    for rule in ("adascale", "linear"):
        written = tiny_cfg(
            device, quick, args.work / f"adascale_cost_{rule}",
            "SOLVER.REFERENCE_WORLD_SIZE", 1, "SOLVER.IMS_PER_BATCH", micro,
            "SCALING.RULE", rule, *schedule(2000),
        )  # fmt: skip
        prepared = prepare_run(written, 1).cfg  # the data set sized, as a real run sees it
        simulated = det_scaling.plan_scaling(prepared, gpus).cfg
        cfg = det_scaling.plan_scaling(simulated, 1, keep_reference_batch=True).cfg
        steppers[rule] = Stepper(build_trainer(cfg))
    measured = compare(steppers, iterations, chunk, warmup)
    gain = steppers["adascale"].trainer.adascale.summary()
    ratio = measured["ratio"]
    rows = [
        {
            "rule": rule,
            "median iteration (ms)": round(measured["median_s"][rule] * 1e3, 2),
            "25-75% (ms)": "-".join(f"{q * 1e3:.1f}" for q in measured["quartiles_s"][rule]),
        }
        for rule in steppers
    ]
    result.figures.update(
        ratio=ratio, rows=rows, geometry=f"1 process x {gpus} micro-batches of {micro}",
        adascale=gain,
    )  # fmt: skip
    result.table(
        f"AdaScale vs linear, {gpus} simulated GPUs of {micro} image(s) by accumulation, "
        f"{iterations} timed iterations each in chunks of {chunk} ({device})",
        rows,
    )
    result.check("both timed", all(v > 0 for v in measured["median_s"].values()))
    result.check(
        f"AdaScale at scale {gpus}, a gain measured every step",
        bool(gain) and gain["scale"] == gpus and gain["steps"] >= iterations,
        str(gain),
    )
    result.headline = f"AdaScale / linear iteration time: {ratio:.3f} ({device})"


# -------------------------------------------------------------------------- determinism ----
def determinism(args: argparse.Namespace, result: Result) -> None:
    """The tiny detector trained twice with ``DETERMINISTIC`` (and once without, for contrast)
    from the same seed: with it, bit-identical weights."""
    device, quick = args.device, args.quick
    iterations = 2 if quick else 30
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for name, deterministic in (("first", True), ("second", True), ("default kernels", False)):
        cfg = tiny_cfg(
            device, quick, args.work / f"determinism_{name.replace(' ', '_')}",
            "SOLVER.REFERENCE_WORLD_SIZE", 1, "SOLVER.IMS_PER_BATCH", 4,
            "DETERMINISTIC", deterministic, *schedule(iterations),
        )  # fmt: skip
        trainer = build_trainer(cfg)
        switched = torch.are_deterministic_algorithms_enabled()
        result.check(f"{name}: deterministic algorithms {deterministic}", switched == deterministic)
        trainer.train()
        weights[name] = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
        del trainer
        release(device)
        # The switch is per process: the run without it needs it off again.
        torch.use_deterministic_algorithms(False)
    rows = []
    for name in ("second", "default kernels"):
        differing = [
            k for k in weights["first"] if not torch.equal(weights["first"][k], weights[name][k])
        ]
        largest = max(
            (float((weights["first"][k] - weights[name][k]).abs().max()) for k in differing),
            default=0.0,
        )
        rows.append(
            {
                "against the first": name,
                "tensors differing": len(differing),
                "largest |difference|": largest,
            }
        )
    result.figures["determinism"] = rows
    result.table(
        f"Weights after {iterations} steps against the first DETERMINISTIC run ({device})", rows
    )
    result.check(
        "DETERMINISTIC twice: bit-identical weights",
        rows[0]["tensors differing"] == 0,
        str(rows[0]),
    )
    same = rows[0]["tensors differing"] == 0
    result.headline = (
        f"DETERMINISTIC runs {'bit-identical' if same else 'differ'}; without it "
        f"{rows[1]['tensors differing']} tensors differ ({device})"
    )


STEPS: dict[str, Callable[[argparse.Namespace, Result], None]] = {
    "environment": environment,
    "detector": detector,
    "nccl": nccl,
    "auto_micro_batch": auto_micro_batch,
    "adascale_cost": adascale_cost,
    "determinism": determinism,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=list(STEPS))
    parser.add_argument("--device", choices=("cuda", "cpu"), required=True)
    parser.add_argument("--work", type=Path, required=True, help="scratch folder of the step")
    parser.add_argument("--result", type=Path, required=True, help="the step's JSON result")
    parser.add_argument("--quick", action="store_true", help="small sizes (the dry run)")
    parser.add_argument("--wheelhouse", type=Path, default=REPO / ".gpu-wheelhouse")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.step != "nccl":  # there det-scaling train sets up its own logging, as in a run
        log_to_stdout()
    result = Result()
    start = time.perf_counter()
    try:
        STEPS[args.step](args, result)
    finally:
        result.figures["step_seconds"] = round(time.perf_counter() - start, 1)
        if comm.get_rank() == 0:
            result.write(args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

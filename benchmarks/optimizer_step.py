"""Time one optimizer step over ResNet-50's parameters: SGD as detectron2 builds it, LARS, LARC.

    python benchmarks/optimizer_step.py [--device cuda] [--dtype float32 bfloat16] [--steps 40]
        [--threads 1] [--json FILE]

Every optimizer updates the same ResNet-50 parameters (torchvision's layout, 161 tensors, 25.6M
values) with the same random gradients, each with its own momentum buffers. The steps are
timed in rounds, each round stepping every optimizer once in a rotating order, so that all of
them see the same machine conditions; the first ``--warmup`` rounds are not counted. The table
gives the median step time and its ratio to SGD, all measured in this one run; one table per
``--dtype`` of the parameters and gradients (bfloat16: a model trained in bf16), and with
``--json`` the same figures in a file.

Rows: detectron2's ``build_optimizer`` (torch SGD with its default implementation: a
per-parameter loop on CPU, multi-tensor on CUDA) and the same SGD forced to multi-tensor;
det_scaling's LARS and LARC as ``build_optimizer`` builds them (biases and norm parameters
excluded from adaptation) and LARS adapting every parameter; apex's LARC as a per-parameter
loop around SGD (its own parameters, since it rewrites the gradients); timm's ``Lars`` (trust
clipping on, as LARC) when timm is installed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _environment import write_results  # benchmarks/: the results file

import det_scaling
from det_scaling.solver import LARS

CONFIG_OVERRIDES = ["SOLVER.BASE_LR", "0.001", "SOLVER.WEIGHT_DECAY", "0.0001"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument(
        "--dtype",
        nargs="+",
        choices=list(DTYPES),
        default=["float32"],
        help="dtype of the parameters and gradients, one table each (default: float32)",
    )
    parser.add_argument("--steps", type=int, default=40, help="timed rounds (default: 40)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first rounds (default: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")

    machine = describe_machine(device, args.threads)
    print(machine)
    record: dict = {"machine": machine, "steps": args.steps, "warmup": args.warmup, "dtypes": {}}
    for name in args.dtype:
        steps = build_steppers(device, DTYPES[name])
        times = time_rounds(steps, args.steps, args.warmup, device)
        print(f"\nparameters and gradients in {name}:")
        print(format_table(times))
        record["dtypes"][name] = summarize(times)
        del steps
    if args.json is not None:
        write_results(args.json, record, world_size=1)


def resnet50(device: torch.device, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """ResNet-50 in ``dtype`` with random weights and random gradients on every parameter."""
    import torchvision

    model = torchvision.models.resnet50().to(device=device, dtype=dtype)
    generator = torch.Generator(device=device).manual_seed(0)
    for param in model.parameters():
        grad = torch.randn(param.shape, generator=generator, device=device) * 1e-2
        param.grad = grad.to(dtype)
    return model


Stepper = tuple[Callable[[], None], Callable[[], None] | None]


def build_steppers(device: torch.device, dtype: torch.dtype = torch.float32) -> dict[str, Stepper]:
    """Name -> (one step of that optimizer, an untimed preparation to run before it or None),
    each over its own copy of the state of ResNet-50 in ``dtype``."""
    from detectron2.solver.build import get_default_optimizer_params

    cfg = det_scaling.load_cfg(overrides=CONFIG_OVERRIDES)
    model = resnet50(device, dtype)
    solver = cfg.SOLVER

    def optimizer_named(name: str) -> torch.optim.Optimizer:
        cfg.SOLVER.OPTIMIZER = name
        return det_scaling.solver.build_optimizer(cfg, model)

    sgd_groups = get_default_optimizer_params(model, base_lr=solver.BASE_LR, weight_decay_norm=0.0)
    sgd_foreach = torch.optim.SGD(
        sgd_groups,
        lr=solver.BASE_LR,
        momentum=solver.MOMENTUM,
        weight_decay=solver.WEIGHT_DECAY,
        foreach=True,
    )
    lars_all = LARS(
        model.parameters(),
        lr=solver.BASE_LR,
        momentum=solver.MOMENTUM,
        weight_decay=solver.WEIGHT_DECAY,
    )
    steppers: dict[str, Stepper] = {
        "SGD (detectron2 build)": (optimizer_named("SGD").step, None),
        "SGD foreach": (sgd_foreach.step, None),
        "LARS (det_scaling)": (optimizer_named("LARS").step, None),
        "LARC (det_scaling)": (optimizer_named("LARC").step, None),
        "LARS, all adapted": (lars_all.step, None),
        "apex-style LARC loop": apex_style_larc(resnet50(device, dtype), solver.BASE_LR),
    }
    timm_lars = _timm_lars(model, solver.BASE_LR, solver.WEIGHT_DECAY)
    if timm_lars is not None:
        steppers["timm Lars (clip)"] = (timm_lars.step, None)
    return steppers


def apex_style_larc(model: torch.nn.Module, lr: float) -> Stepper:
    """One step of NVIDIA apex's LARC (clip mode, trust 0.02) around momentum SGD, written the
    way apex runs it: a Python loop over parameters, norms compared on the host, gradients
    rewritten in place, then the wrapped SGD steps with weight decay 0. LARC scales the
    gradients in place, so the untimed preparation puts the original ones back."""
    params = list(model.parameters())
    original_grads = [p.grad.clone() for p in params]
    sgd = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=0.0)
    weight_decay, trust_coefficient, eps = 1e-4, 0.02, 1e-8

    @torch.no_grad()
    def restore_gradients() -> None:
        for param, grad in zip(params, original_grads, strict=True):
            param.grad.copy_(grad)

    @torch.no_grad()
    def step() -> None:
        for param in params:
            param_norm = torch.norm(param)
            grad_norm = torch.norm(param.grad)
            if param_norm != 0 and grad_norm != 0:
                adaptive = (
                    trust_coefficient * param_norm / (grad_norm + param_norm * weight_decay + eps)
                )
                adaptive = min(adaptive / lr, 1)
                param.grad += weight_decay * param
                param.grad *= adaptive
        sgd.step()

    return step, restore_gradients


def _timm_lars(
    model: torch.nn.Module, lr: float, weight_decay: float
) -> torch.optim.Optimizer | None:
    try:
        from timm.optim import Lars
    except ImportError:
        return None
    return Lars(
        model.parameters(),
        lr=lr,
        momentum=0.9,
        weight_decay=weight_decay,
        trust_coeff=0.02,
        trust_clip=True,
    )


def time_rounds(
    steppers: dict[str, Stepper], rounds: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per step of each stepper, from ``rounds`` rounds after ``warmup`` untimed ones."""
    names = list(steppers)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:  # rotate who goes first
            step, prepare = steppers[name]
            if prepare is not None:
                prepare()
            _synchronize(device)
            start = time.perf_counter()
            step()
            _synchronize(device)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_table(times: dict[str, list[float]]) -> str:
    """Median step time (and the middle half of the times) per optimizer, and the median's ratio
    to both SGD rows."""
    medians = {name: statistics.median(values) for name, values in times.items()}
    sgd = medians["SGD (detectron2 build)"]
    sgd_foreach = medians["SGD foreach"]
    rows = [
        "| optimizer | median step (ms) | 25-75% (ms) | / SGD (detectron2 build) | / SGD foreach |",
        "|---|---|---|---|---|",
    ]
    for name, median in medians.items():
        low, _, high = statistics.quantiles(times[name], n=4)
        rows.append(
            f"| {name} | {median * 1e3:.2f} | {low * 1e3:.1f}-{high * 1e3:.1f} "
            f"| {median / sgd:.2f} | {median / sgd_foreach:.2f} |"
        )
    return "\n".join(rows)


def summarize(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per optimizer: the median step (ms), its quartiles and the median's ratio to SGD."""
    medians = {name: statistics.median(values) for name, values in times.items()}
    sgd = medians["SGD (detectron2 build)"]
    out = {}
    for name, median in medians.items():
        low, _, high = (
            statistics.quantiles(times[name], n=4) if len(times[name]) > 1 else [median] * 3
        )
        out[name] = {
            "median_ms": median * 1e3,
            "q25_ms": low * 1e3,
            "q75_ms": high * 1e3,
            "ratio_to_sgd": median / sgd,
        }
    return out


def describe_machine(device: torch.device, threads: int) -> str:
    """CPU model, cores, torch version, device and thread count, on one line."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    text = (
        f"CPU: {cpu}, {os.cpu_count()} cores; torch {torch.__version__}; "
        f"{threads} torch thread(s); device {device}"
    )
    if device.type == "cuda":
        text += f" ({torch.cuda.get_device_name(device)})"
    return text


if __name__ == "__main__":
    main()

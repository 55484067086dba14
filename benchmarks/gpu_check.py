"""Everything of det-scaling that needs CUDA, in one command on one GPU machine, in 8 minutes.

    benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--budget SECONDS] [--work DIR]

Run from the repository root on the GPU machine, with the wheelhouse of ``make gpu-wheelhouse``
carried beside the checkout (``.gpu-wheelhouse``). The steps, cheapest and most informative
first, each in its own process and time-boxed (its budget, and the clock of the whole run):

1. ``install``: the wheelhouse installed offline into ``--site`` (the machine's torch kept);
2. ``environment``: requirements met, modules imported, versions (Python, torch, CUDA, cuDNN,
   NCCL, the GPU, detectron2 and its stack);
3. ``cuda_tests``: the suite's tests marked ``cuda`` (``pytest -m cuda``);
4. ``optimizer_step``: ``benchmarks/optimizer_step.py --device cuda``, fp32 and bf16;
5. ``detector``: the tiny detector's images/s at batch 1-16 (and the CPU's), AMP with
   accumulation 4 against none;
6. ``nccl``: a 1-process NCCL group through ``det_scaling.engine.launch`` under torchrun:
   training, a checkpoint, resume, ``--dist-timeout``, DDP;
7. ``auto_micro_batch``: ``SCALING.AUTO_MICRO_BATCH`` against a real CUDA out-of-memory error;
8. ``determinism``: the tiny detector trained twice with ``DETERMINISTIC``: bit-identical weights;
9. ``adascale_cost``: AdaScale's iteration time against the linear rule's;
10. ``scaling_table`` (optional, when the clock leaves time): the scaling table's GPU leg.

Steps 5-9 are ``benchmarks/gpu_steps.py``. ``--dry-run`` runs the same steps on the CPU, small:
no install (the environment running this is used as it is), CUDA tests collected and skipped,
the others on their CPU equivalents, the optional step skipped; CI runs it
(``tests/benchmarks/test_gpu_check.py``). Writes ``gpu_check.json``, ``gpu_check.md`` and
``gpu_check.log`` (every step's output) to ``--out`` (default ``$OUT``, else
``output/gpu_check``), prints the Markdown, and exits 1 when a step failed or ran out of time.

Only the standard library: this runs before the wheelhouse is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESERVE_S = 10.0  # kept at the end of the budget for the summaries


@dataclass(frozen=True)
class Step:
    """One step: at most ``budget_s`` seconds on the GPU; an optional one starts only with at
    least ``min_s`` seconds left on the clock."""

    name: str
    title: str
    budget_s: float
    optional: bool = False
    min_s: float = 0.0


STEPS = (
    Step("install", "Install from the wheelhouse", 45),
    Step("environment", "Environment and versions", 45),
    Step("cuda_tests", "CUDA tests of the suite (pytest -m cuda)", 60),
    Step("optimizer_step", "Optimizer step on ResNet-50's parameters (fp32, bf16)", 45),
    Step("detector", "Tiny detector: images/s by batch; AMP with accumulation", 85),
    Step("nccl", "NCCL: 1-process group through launch, checkpoint, resume, DDP", 75),
    Step("auto_micro_batch", "SCALING.AUTO_MICRO_BATCH against a CUDA out-of-memory error", 60),
    Step("determinism", "DETERMINISTIC: two runs bit-identical on CUDA", 40),
    Step("adascale_cost", "AdaScale's cost per step against the linear rule", 45),
    Step("scaling_table", "Scaling table, GPU leg (optional)", 0, optional=True, min_s=120),
)


class Check:
    """The run's settings, its clock and its log."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry_run: bool = args.dry_run
        self.device = "cpu" if args.dry_run else "cuda"
        self.python: str = args.python
        self.start = time.monotonic()
        self.deadline = self.start + args.budget
        self.out: Path = args.out
        self.work: Path = args.work
        self.site: Path = args.site
        self.installed = False
        self.log = (self.out / "gpu_check.log").open("w")

    def left(self) -> float:
        return self.deadline - time.monotonic() - RESERVE_S

    def env(self) -> dict[str, str]:
        """Every step's environment: the installed wheels and this checkout first on the path,
        the generated data sets in the work folder."""
        env = dict(os.environ)
        path = [str(self.site)] if self.installed else []
        path += [str(REPO), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
        env["DETECTRON2_DATASETS"] = str(self.work / "datasets")
        env["PYTHONUNBUFFERED"] = "1"
        env["MPLBACKEND"] = "Agg"
        if self.dry_run:
            env.setdefault("OMP_NUM_THREADS", "1")  # a small shared CI machine
        return env

    def say(self, message: str) -> None:
        line = f"[gpu_check {time.monotonic() - self.start:6.1f}s] {message}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()


# -------------------------------------------------------------------------- the commands ----
def _steps_script(check: Check, step: str) -> list[str]:
    args = [
        "benchmarks/gpu_steps.py", step, "--device", check.device,
        "--work", str(check.work / step), "--result", str(check.work / f"{step}.json"),
        "--wheelhouse", str(check.args.wheelhouse),
    ]  # fmt: skip
    return args + (["--quick"] if check.dry_run else [])


def cuda_test_files() -> list[str]:
    """The test files that mark a test ``cuda`` (collecting only them: the whole suite takes
    longer to collect than these take to run)."""
    found = []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        if re.search(r"\bmark\.cuda\b", path.read_text()):
            found.append(str(path.relative_to(REPO)))
    return found


def command_for(check: Check, step: Step) -> tuple[list[str] | None, str]:
    """The step's command, or None and why it is skipped."""
    py = check.python
    if step.name == "install":
        if check.dry_run:
            return None, "dry run: the environment running the check is used as it is"
        manifest = check.args.wheelhouse / "MANIFEST.json"
        if not manifest.is_file():
            return None, f"no wheelhouse at {check.args.wheelhouse}: the environment as it is"
        target = ["--wheelhouse", str(check.args.wheelhouse), "--target", str(check.site)]
        return [py, "tools/gpu_wheelhouse.py", "install", *target], ""
    if step.name == "cuda_tests":
        files = cuda_test_files()
        if not files:
            return None, "no test is marked cuda"
        xml = str(check.work / "cuda_tests.xml")
        pytest = ["-m", "pytest", "-m", "cuda", "-p", "no:cacheprovider", "-q", "-rA"]
        return [py, *pytest, "--junitxml", xml, *files], ""
    if step.name == "optimizer_step":
        rounds = ["--steps", "2", "--warmup", "0"] if check.dry_run else ["--steps", "40"]
        output = ["--json", str(check.work / "optimizer_step.json")]
        dtypes = ["--dtype", "float32", "bfloat16"]
        script = [py, "benchmarks/optimizer_step.py", "--device", check.device]
        return [*script, *dtypes, *rounds, *output], ""
    if step.name == "nccl":
        torchrun = [py, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
        return [*torchrun, *_steps_script(check, step.name)], ""
    if step.name == "scaling_table":
        if check.dry_run:
            return None, "dry run: optional, and it trains 7 detectors"
        return [
            py, "benchmarks/scaling_table.py", "--processes", "1", "--backbone", "scratch",
            "--gpus", "1", "2", "4", "8", "--series", "linear", "none", "--larc-gpus",
            "--seeds", "0", "--max-epochs", "1", "--output-dir", str(check.work / "scaling_table"),
            # 4 images per GPU (the config: 2 GPUs x 1 image at LR 0.01), LR by the linear rule
            "MODEL.DEVICE", "cuda", "SOLVER.IMS_PER_BATCH", "8", "SOLVER.BASE_LR", "0.04",
        ], ""  # fmt: skip
    return [py, *_steps_script(check, step.name)], ""


# ------------------------------------------------------------------------------ results ----
def read_result(check: Check, step: Step) -> dict[str, Any]:
    """What the step found: its own JSON (gpu_steps.py), or read from its outputs."""
    if step.name == "cuda_tests":
        return _pytest_result(check, check.work / "cuda_tests.xml")
    if step.name == "optimizer_step":
        return _optimizer_result(check.work / "optimizer_step.json")
    if step.name == "scaling_table":
        return _scaling_table_result(check.work / "scaling_table")
    if step.name == "install":
        return {"headline": "installed (see the log)", "checks": []}
    path = check.work / f"{step.name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _pytest_result(check: Check, path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    cases = []
    for case in ElementTree.parse(path).iter("testcase"):
        outcome, detail = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome, detail = tag, found.get("message", "")
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        seconds = float(case.get("time", 0))
        cases.append({"test": name, "outcome": outcome, "seconds": seconds, "detail": detail})
    outcomes = ("passed", "failure", "error", "skipped")
    counts = {k: sum(c["outcome"] == k for c in cases) for k in outcomes}
    checks = [
        {"name": "tests collected", "ok": bool(cases), "detail": f"{len(cases)} test(s)"},
        {
            "name": "none failed",
            "ok": counts["failure"] + counts["error"] == 0,
            "detail": str(counts),
        },
    ]
    if not check.dry_run:  # on the GPU machine a skip means CUDA was not there
        checks.append({"name": "none skipped", "ok": counts["skipped"] == 0, "detail": str(counts)})
    rows = "\n".join(
        f"| {c['test']} | {c['outcome']} | {c['seconds']:.2f} | {c['detail'][:80]} |" for c in cases
    )
    return {
        "headline": ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no test",
        "figures": {"tests": cases, "counts": counts},
        "tables": [f"| test | outcome | s | detail |\n|---|---|---|---|\n{rows}"],
        "checks": checks,
        "notes": ["dry run: no CUDA here, so every CUDA test is skipped"] if check.dry_run else [],
    }


def _optimizer_result(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    record = json.loads(path.read_text())
    tables, headline = [], []
    for dtype, rows in record["dtypes"].items():
        lines = [f"{dtype} parameters and gradients ({record['machine']})", "",
                 "| optimizer | median step (ms) | 25-75% (ms) | / SGD (detectron2 build) |",
                 "|---|---|---|---|"]  # fmt: skip
        for name, row in rows.items():
            lines.append(
                f"| {name} | {row['median_ms']:.3f} | {row['q25_ms']:.3f}-{row['q75_ms']:.3f} | "
                f"{row['ratio_to_sgd']:.2f} |"
            )
        tables.append("\n".join(lines))
        headline.append(f"LARS / SGD {rows['LARS (det_scaling)']['ratio_to_sgd']:.2f} ({dtype})")
    expected = {"SGD (detectron2 build)", "SGD foreach", "LARS (det_scaling)", "LARC (det_scaling)"}
    checks = [
        {"name": f"{dtype}: SGD, LARS and LARC timed", "ok": expected <= set(rows), "detail": ""}
        for dtype, rows in record["dtypes"].items()
    ]
    return {"headline": "; ".join(headline), "figures": record, "tables": tables, "checks": checks}


def _scaling_table_result(folder: Path) -> dict[str, Any]:
    table, results = folder / "table.md", folder / "results.json"
    if not (table.is_file() and results.is_file()):
        return {}
    return {
        "headline": "the table is below",
        "figures": json.loads(results.read_text()).get("rows", {}),
        "tables": [table.read_text()],
        "checks": [],
    }


# ---------------------------------------------------------------------------- running ----
def run_step(check: Check, step: Step) -> dict[str, Any]:
    """Runs one step (or skips it, saying why); returns its record."""
    record: dict[str, Any] = {"name": step.name, "title": step.title, "budget_s": step.budget_s}
    left = check.left()
    command, reason = command_for(check, step)
    if command is not None and step.optional and left < step.min_s:
        command, reason = None, f"the clock: {left:.0f} s left, it needs {step.min_s:.0f} s"
    elif command is not None and left < 5:
        command, reason = None, f"the clock: {left:.0f} s left of the budget"
    if command is None:
        check.say(f"{step.name}: skipped ({reason})")
        return {**record, "status": "skipped", "reason": reason, "seconds": 0.0}
    timeout = left if step.optional else min(step.budget_s, left)
    check.say(f"{step.name}: {' '.join(command)}  (time box {timeout:.0f} s)")
    check.log.write(f"\n===== {step.name}: {' '.join(command)}\n")
    check.log.flush()
    start = time.monotonic()
    code, timed_out, tail = _run(command, check.env(), timeout, check.log)
    seconds = time.monotonic() - start
    found = read_result(check, step)
    checks = found.get("checks", [])
    if timed_out:
        status = "timed out"
    elif code != 0 or not found or not all(c["ok"] for c in checks):
        status = "failed"
    else:
        status = "passed"
    if step.name == "install" and code == 0:
        check.installed = True
    record.update(
        status=status, seconds=round(seconds, 1), exit_status=code, command=command, **found
    )
    if status != "passed":
        record["output_tail"] = tail
    check.say(f"{step.name}: {status} in {seconds:.1f} s. {found.get('headline', '')}")
    if status != "passed":
        failed = [c["name"] for c in checks if not c["ok"]]
        if failed:
            check.say(f"{step.name}: failed checks: {failed}")
        print("\n".join(tail[-30:]), flush=True)
    return record


def _run(
    command: list[str], env: dict[str, str], timeout: float, log: Any
) -> tuple[int, bool, list[str]]:
    """Runs ``command`` in its own process group (so a time-out ends its children too: torchrun's
    worker, spawned processes), its output appended to ``log``; returns the exit status, whether
    it ran out of time, and its last lines."""
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    lines: list[str] = []
    timed_out = False
    deadline = time.monotonic() + timeout

    def kill() -> None:
        nonlocal timed_out
        timed_out = True
        # torchrun starts its worker in a session of its own: end every descendant by its id.
        for pid in [process.pid, *_descendants(process.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), kill)
    timer.start()
    try:
        for line in process.stdout:
            log.write(line)
            lines.append(line.rstrip("\n"))
            del lines[:-200]
        code = process.wait()
    finally:
        timer.cancel()
        log.flush()
    if timed_out:
        lines.append(f"(ended after {timeout:.0f} s: its time box)")
    return code, timed_out, lines


def _descendants(pid: int) -> list[int]:
    """The ids of ``pid``'s children, their children and so on (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The parent id is the 2nd field after the command name, which may hold spaces.
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


# --------------------------------------------------------------------------- summaries ----
def markdown(check: Check, report: dict[str, Any]) -> str:
    """The Markdown summary: the steps in a table, then each step's figures and checks."""
    mode = (
        "**Dry run on the CPU: not a GPU run.** CUDA steps ran their CPU equivalents or were "
        "skipped, at small sizes."
        if check.dry_run
        else f"GPU run on {report['versions'].get('gpu', 'an unknown GPU')}."
    )
    counts = {s: sum(r["status"] == s for r in report["steps"]) for s in STATUS_ORDER}
    lines = [
        "# GPU check",
        "",
        mode,
        "",
        f"Started {report['started']}; {report['wall_s']:.0f} s of the {report['budget_s']:.0f} s "
        "budget; " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ".",
        "",
        "| step | status | seconds | result |",
        "|---|---|---|---|",
    ]
    for r in report["steps"]:
        result = r.get("headline") or r.get("reason", "")
        lines.append(f"| {r['name']} | {r['status']} | {r['seconds']:.1f} | {result} |")
    for r in report["steps"]:
        lines += ["", f"## {r['title']} ({r['name']}): {r['status']}", ""]
        if r["status"] == "skipped":
            lines.append(f"Skipped: {r['reason']}.")
            continue
        lines.append(f"`{' '.join(r.get('command', []))}`")
        for table in r.get("tables", []):
            lines += ["", table]
        if r.get("checks"):
            lines += ["", "Checks:", ""]
            for c in r["checks"]:
                mark = "passed" if c["ok"] else "FAILED"
                detail = f" ({c['detail']})" if c.get("detail") and not c["ok"] else ""
                lines.append(f"- {mark}: {c['name']}{detail}")
        for note in r.get("notes", []):
            lines += ["", f"Note: {note}"]
        if r.get("output_tail"):
            lines += ["", "Last lines of its output:", "", "```", *r["output_tail"][-15:], "```"]
    skipped = [r for r in report["steps"] if r["status"] == "skipped"]
    if skipped:
        lines += ["", "## Skipped", ""]
        lines += [f"- {r['name']}: {r['reason']}" for r in skipped]
    return "\n".join(lines) + "\n"


STATUS_ORDER = ("passed", "failed", "timed out", "skipped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the CPU equivalents, small")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT") or REPO / "output" / "gpu_check"),
        help="where the JSON, Markdown and log go (default: $OUT, else output/gpu_check)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="scratch folder: data sets, runs (default: a new temporary folder, kept)",
    )
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for all (480)")
    parser.add_argument("--wheelhouse", type=Path, default=REPO / ".gpu-wheelhouse")
    parser.add_argument(
        "--site",
        type=Path,
        default=Path(tempfile.gettempdir()) / "det-scaling-site",
        help="where the wheelhouse is installed (put first on PYTHONPATH for every step)",
    )
    parser.add_argument(
        "--python",
        default=os.environ.get("PYTHON", "python3"),
        help="the Python of every step (default: $PYTHON, else python3)",
    )
    parser.add_argument("--only", nargs="+", choices=[s.name for s in STEPS], help="these steps")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = args.work or Path(tempfile.mkdtemp(prefix="det-scaling-gpu-check-"))
    args.work.mkdir(parents=True, exist_ok=True)

    check = Check(args)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    mode = "dry run (CPU)" if check.dry_run else "GPU"
    check.say(f"{mode}; budget {args.budget:.0f} s; out {args.out}; work {args.work}")
    steps = [s for s in STEPS if args.only is None or s.name in args.only or s.name == "install"]
    records = []
    for step in steps:
        records.append(run_step(check, step))
    versions = {}
    for record in records:
        if record["name"] == "environment":
            versions = record.get("figures", {}).get("versions", {})
    report = {
        "mode": "dry-run" if check.dry_run else "gpu",
        "started": started,
        "budget_s": args.budget,
        "wall_s": round(time.monotonic() - check.start, 1),
        "versions": versions,
        "steps": records,
        "skipped": {r["name"]: r["reason"] for r in records if r["status"] == "skipped"},
        "passed": all(r["status"] in ("passed", "skipped") for r in records),
    }
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    summary = markdown(check, report)
    (args.out / "gpu_check.md").write_text(summary)
    check.say(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    check.log.close()
    print(summary, flush=True)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

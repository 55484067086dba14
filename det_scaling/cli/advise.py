"""``advise CONFIG --num-gpus 1 2 4 8``: what to run on each GPU count, and for how long.

Finds the config's critical batch B_crit, then prints for each GPU count the total batch, the
epochs and iterations the critical-batch law asks for (a batch B needs (1 + B / B_crit) /
(1 + B_ref / B_crit) times the reference's epochs, McCandlish et al. 2018) with the band B_crit's
90% interval gives, the rule to use and why, and, where step times are known, the wall time and
GPU-hours with the count that minimizes each. B_crit comes from a short probe of the reference
schedule (by default a tenth of its images, YAML configs), from a finished run (--from-run), or
from finished runs at several batch sizes (--from-runs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tabulate import tabulate

from det_scaling.cli._common import (
    add_config_argument,
    add_num_gpus_argument,
    add_overrides_argument,
    check_output_file,
)
from det_scaling.commands import advise
from det_scaling.config import load_cfg, require_yaml_config
from det_scaling.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "advise",
        help="what to run on each GPU count, and for how long (the critical-batch law)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_argument(parser)
    add_num_gpus_argument(parser, multiple=True)
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--from-run",
        metavar="OUTPUT_DIR",
        help="measure B_crit at this finished run's last checkpoint instead of probing",
    )
    source.add_argument(
        "--from-runs",
        nargs="+",
        metavar="OUTPUT_DIR",
        help="fit B_crit to finished runs at two or more batch sizes (their evaluation curves)",
    )
    source.add_argument(
        "--b-crit", type=float, metavar="IMAGES", help="use this critical batch; nothing is run"
    )
    parser.add_argument(
        "--probe-fraction",
        type=float,
        default=advise.DEFAULT_PROBE_FRACTION,
        metavar="F",
        help="share of the reference run's images the probe trains "
        f"(default: {advise.DEFAULT_PROBE_FRACTION:g})",
    )
    parser.add_argument(
        "--step-time",
        nargs="+",
        metavar="N=SECONDS",
        help="seconds per step on N GPUs (e.g. 1=0.41 8=0.47), instead of the probe's timing",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=1.0,
        help="--from-runs: the target is the reference runs' mean final metric minus this",
    )
    parser.add_argument("--write", metavar="DIR", help="write the scaled config of each count")
    parser.add_argument("--json", metavar="PATH", help="write the numbers as JSON")
    add_overrides_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.json:
        check_output_file(args.json, "--json")
    step_times = _step_times(args.step_time)
    probe = None
    if args.from_run:
        cfg, critical = advise.from_run(args.from_run)
    else:
        cfg = load_cfg(args.config, args.opts)
        if args.b_crit is not None:
            if not args.b_crit > 0:
                raise ConfigError(f"--b-crit must be positive, got {args.b_crit:g}")
            critical = advise.CriticalBatch(args.b_crit, None, "--b-crit")
        elif args.from_runs:
            critical = _fitted(args.from_runs, args.margin)
        else:
            require_yaml_config(args.config, "advise's probe (or give --b-crit or --from-runs)")
            critical, probe = advise.probe(
                cfg,
                fraction=args.probe_fraction,
                time_two_processes=step_times is None,
                progress=_progress_line,
            )
            step_times = step_times or probe.step_times
    result = advise.advise(cfg, args.num_gpus, critical, step_times=step_times, config=args.config)
    result.probe = probe
    print(format_advice(result))
    if args.write:
        config = args.config if not args.from_run else str(Path(args.from_run) / "config.yaml")
        for path in advise.write_configs(result, config, args.opts, args.write):
            print(f"wrote {path}")
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def format_advice(result: advise.Advice) -> str:
    """The advice as text: where B_crit comes from, one row per GPU count, the per-module
    B_simple when the probe measured it."""
    critical = result.critical_batch
    band = (
        f" (90% interval {critical.interval[0]:.3g}-{critical.interval[1]:.3g})"
        if critical.interval
        else ""
    )
    epochs = f", {result.reference_epochs:.3g} epochs" if result.reference_epochs else ""
    lines = [
        f"reference: {result.reference_gpus} GPU(s), batch {result.reference_batch}, "
        f"{result.reference_iterations} iterations{epochs}",
        f"B_crit {critical.value:.3g} images{band}: {critical.source}",
    ]
    probe = result.probe
    if probe is not None:
        reference = next((r for r in result.rows if r.num_gpus == result.reference_gpus), None)
        against = (
            f"; the reference run: {_duration(reference.wall_time_s)} predicted"
            if reference and reference.wall_time_s
            else ""
        )
        lines.append(
            f"probe: {probe.steps} steps, {probe.seconds:.0f} s, "
            f"{100 * probe.fraction:.3g}% of the reference run's images{against}"
        )
        lines += [f"note: {note}" for note in probe.notes]
        moved = ", ".join(
            "?" if w.noise_scale is None else f"{w.noise_scale:.3g}" for w in probe.windows
        )
        lines.append(f"B_simple as the probe trained ({len(probe.windows)} windows): {moved}")
    rows = []
    for row in result.rows:
        cells = {
            "GPUs": row.num_gpus,
            "batch": row.total_batch,
            "epochs x": f"{row.epochs_factor:.2f}"
            + ("" if critical.interval is None else f" ({_band(row.factor_band)})"),
            "epochs": "" if row.epochs is None else f"{row.epochs:.3g}",
            "iterations": row.iterations,
            "rule": row.rule,
        }
        if row.wall_time_s is not None:
            cells["wall time"] = _duration(row.wall_time_s)
            cells["GPU-hours"] = f"{row.gpu_hours:.3g}"
        rows.append(cells)
    lines.append(tabulate(rows, headers="keys", tablefmt="github"))
    lines += [f"{row.num_gpus} GPU(s): {row.rule}: {row.why}" for row in result.rows]
    fastest, cheapest = result.fastest(), result.cheapest()
    if fastest and cheapest:
        lines.append(
            f"fastest: {fastest.num_gpus} GPU(s), {_duration(fastest.wall_time_s)}; fewest "
            f"GPU-hours: {cheapest.num_gpus} GPU(s), {cheapest.gpu_hours:.3g}"
        )
    if probe is not None and probe.modules:
        modules = [
            {
                "module": name,
                "B_simple": "not resolved"
                if estimate.noise_scale is None
                else f"{estimate.noise_scale:.3g} +- {estimate.standard_error or 0:.2g}",
                "|G|^2": f"{estimate.sq_grad_norm:.3g}",
                "tr(Sigma)": f"{estimate.trace_sigma:.3g}",
            }
            for name, estimate in probe.modules.items()
        ]
        lines.append("B_simple by module (the probe's second half):")
        lines.append(tabulate(modules, headers="keys", tablefmt="github"))
    return "\n".join(lines)


def _fitted(folders: list[str], margin: float) -> advise.CriticalBatch:
    from det_scaling.commands.finished_runs import fit_from_runs, read_finished_run

    runs = [read_finished_run(folder) for folder in folders]
    target, points, fit, *_ = fit_from_runs(runs, margin=margin)
    shown = ", ".join(f"batch {batch}: {epochs:.3g}" for batch, epochs in points)
    return advise.CriticalBatch(
        fit.b_crit,
        fit.b_crit_interval,
        f"fit of epochs to {target:.4g} over {len(runs)} runs ({shown})",
    )


def _step_times(pairs: list[str] | None) -> dict[int, float] | None:
    if not pairs:
        return None
    times = {}
    for pair in pairs:
        count, _, seconds = pair.partition("=")
        try:
            times[int(count)] = float(seconds)
        except ValueError:
            raise ConfigError(f"--step-time {pair}: expected N=SECONDS, like 8=0.47") from None
        if times[int(count)] <= 0 or int(count) < 1:
            raise ConfigError(f"--step-time {pair}: N and SECONDS must be positive")
    return times


def _progress_line(done: int, total: int, seconds: float) -> None:
    """One line rewritten in place on a terminal; a line every tenth of the probe otherwise."""
    eta = seconds / done * (total - done)
    line = f"probe: step {done}/{total}, {seconds:.0f} s, ETA {eta:.0f} s"
    if sys.stderr.isatty():
        print(f"\r{line}", end="\n" if done == total else "", file=sys.stderr, flush=True)
    elif done == total or done % max(1, total // 10) == 0:
        print(line, file=sys.stderr, flush=True)


def _band(band: tuple[float, float]) -> str:
    low, high = band
    return f"{low:.2f}-" + ("inf" if high == float("inf") else f"{high:.2f}")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"

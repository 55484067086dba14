"""Which keys differ between a config as written and another, or its overridden and scaled self,
and why (what ``diff`` prints)."""

from __future__ import annotations

from det_scaling.config import check_same_format, flatten_cfg, load_cfg
from det_scaling.scaling.plan import Change, plan_scaling

__all__ = ["diff_configs", "format_diff"]

_ABSENT = "<absent>"


def diff_configs(
    config: str, config_b: str | None, opts: list[str], num_gpus: int | None
) -> list[Change]:
    """The changes from ``config`` to ``config_b`` (or ``config``) + ``opts``, scaled to
    ``num_gpus`` when given, sorted by key. YAML or LazyConfig files, both of one format."""
    if config_b:
        check_same_format(config, config_b)
    left = load_cfg(config)
    right_file = config_b or config
    reasons: dict[str, str] = {}
    if config_b:
        flat_b = flatten_cfg(load_cfg(config_b))
        for key, value in flatten_cfg(left).items():
            if flat_b.get(key, _ABSENT) != value:
                reasons[key] = f"from {config_b}"
    right = load_cfg(right_file, opts)
    for key in _override_keys(opts):
        reasons[key] = "override"
    if num_gpus is not None:
        plan = plan_scaling(right, num_gpus)
        right = plan.cfg
        for change in plan.changes:
            earlier = reasons.get(change.key)
            reasons[change.key] = f"{earlier}, then {change.reason}" if earlier else change.reason
    flat_left, flat_right = flatten_cfg(left), flatten_cfg(right)
    changes = []
    for key in sorted(flat_left.keys() | flat_right.keys()):
        old, new = flat_left.get(key, _ABSENT), flat_right.get(key, _ABSENT)
        if old != new:
            changes.append(Change(key, old, new, reasons.get(key, f"from {right_file}")))
    return changes


def format_diff(changes: list[Change]) -> str:
    """What ``diff`` prints: one line per change, or a line saying there is none."""
    lines = [change.format() for change in changes] or ["no differences"]
    return "\n".join(lines) + "\n"


def _override_keys(opts: list[str]) -> list[str]:
    """The keys of ``KEY VALUE`` pairs or of ``key=value`` tokens."""
    if any("=" in opt for opt in opts[::2]):
        return [opt.partition("=")[0].lstrip("+") for opt in opts]
    return list(opts[::2])

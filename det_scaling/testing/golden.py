"""Golden files of what a config gives at each GPU count: built, compared, rewritten, explained.

A golden file has two parts. Its body, every line that does not start with ``#``, is compared:
what ``diff`` or ``plan`` prints, or for the pytest fixture the plan table and each GPU count's
changed keys with their reasons. The ``#`` lines are not compared: they say what made the file,
how to accept a change, the toolkit version, rule and reference it was scaled with, and for each
config the values its scaling reads and the keys that change, each with the file that sets it.
So a difference is explained, not only shown: a value as written that changed (and the file of
the ``_BASE_`` chain or the import that sets it), or, the config as written being the same, the
rule, reference or toolkit version that changed.

The text is the same on every machine: keys sorted, floats to 6 significant digits, paths
relative to the working directory (the CLI's; the plugin works from pytest's rootdir).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import det_scaling
from det_scaling.commands.diff import diff_configs, format_diff
from det_scaling.commands.plan import format_plan_table
from det_scaling.config import config_format, flatten_cfg, load_cfg
from det_scaling.config.sources import key_sources
from det_scaling.errors import ConfigError
from det_scaling.scaling.plan import format_value, plan_scaling
from det_scaling.scaling.rules import RULES, rule_of

__all__ = [
    "Golden",
    "WrittenConfig",
    "compare_golden",
    "config_golden",
    "diff_golden",
    "plan_golden",
    "write_golden",
]

DEFAULT = "default"  # the source of a value no file sets
ABSENT = "<absent>"
NOT_COMPARED = (
    "# Lines starting with # are not compared: they record where each value is written, to "
    "explain a change."
)
_MADE_BY = re.compile(r"^# made by det-scaling (\S+)(?: \(rule: (.*), reference: (.*)\))?$")
_WRITTEN = re.compile(r"^# (.+) as written:$")
_ENTRY = re.compile(r"^#   (\S+): (.*)  \((.*)\)$")
_SECTION = "== "  # a section heading of a body (the fixture's), named in a diff's hunks


@dataclass(frozen=True)
class Entry:
    """A key's value as written, and the file that sets it (``default``: none does)."""

    value: str
    source: str


class WrittenConfig:
    """A config file as written (no overrides): its keys' values and the files that set them.

    ``keys`` are those the golden file records: the inputs of scaling and any changed key."""

    def __init__(self, config_file: str, keys: Sequence[str] = ()) -> None:
        self.config_file = config_file
        self.name = display_path(config_file)
        self.cfg = load_cfg(config_file)
        self.flat = flatten_cfg(self.cfg)
        self.keys = sorted({*scaling_keys(self.cfg), *keys} & self.flat.keys())

    def entries(self, keys: Sequence[str] | None = None) -> dict[str, Entry]:
        keys = self.keys if keys is None else keys
        sources = key_sources(self.config_file, [key for key in keys if key in self.flat])
        return {
            key: Entry(
                format_value(self.flat[key]) if key in self.flat else ABSENT,
                display_path(sources[key]) if sources.get(key) else DEFAULT,
            )
            for key in keys
        }


@dataclass
class Golden:
    """The text of a golden file: the compared ``body`` and the notes around it."""

    title: str  # what made it: a command line, or the config and GPU counts
    accept: str  # how to rewrite the file after reviewing a change
    body: str
    written: list[WrittenConfig] = field(default_factory=list)
    rule: str | None = None  # the rule scaling applied (None: nothing scaled)
    reference: str | None = None  # the GPU count the config is written for

    def text(self) -> str:
        made_by = f"# made by det-scaling {det_scaling.__version__}"
        if self.rule is not None:
            made_by += f" (rule: {self.rule}, reference: {self.reference})"
        lines = [f"# {self.title}", NOT_COMPARED, f"# Accept a change: {self.accept}", made_by]
        for config in self.written:
            lines.append(f"# {config.name} as written:")
            lines += [
                f"#   {key}: {entry.value}  ({entry.source})"
                for key, entry in config.entries().items()
            ]
        return "\n".join(lines) + "\n" + self.body


def display_path(path: str | os.PathLike) -> str:
    """``path`` relative to the working directory, with ``/``: the same on every machine."""
    try:
        relative = os.path.relpath(os.path.abspath(path))
    except ValueError:  # another drive (Windows): no relative path
        relative = os.path.abspath(path)
    return Path(relative).as_posix()


def scaling_keys(cfg: Any) -> list[str]:
    """The keys whose values scaling reads: reference, batch, LRs, schedule, rule and the
    settings that choose it; the epochs and AdaBatch sections when they are on."""
    adapter = config_format(cfg)
    keys = adapter.keys
    recipe = adapter.recipe()
    names = [
        keys.reference_world_size,
        keys.ims_per_batch,
        keys.grad_accum_steps,
        *recipe.lrs,
        keys.rule,
        keys.keep_reference_batch,
        keys.dataset_size,
        keys.optimizer,
        keys.child(keys.epochs, "max"),
        keys.child(keys.adabatch, "enabled"),
    ]
    for schedule_field in adapter.schedule_fields():
        names += [schedule_field.key, schedule_field.length or schedule_field.key]
    flat_keys = flatten_cfg(cfg)
    if recipe.epochs.max > 0:
        names += [key for key in flat_keys if key.startswith(f"{keys.epochs}.")]
    if recipe.adabatch.enabled:
        names += [key for key in flat_keys if key.startswith(f"{keys.adabatch}.")]
    rule = RULES.get(recipe.rule)  # an unknown rule reads none of its settings
    if rule is not None and rule.adam_sde:
        names.append(keys.adam_sde)
    if rule is not None and rule.adascale:
        names.append(keys.adascale_reference_batch)
    return names


# ---- what the commands and the fixture compare ----


def diff_golden(
    config: str,
    config_b: str | None,
    opts: Sequence[str],
    num_gpus: int | None,
    *,
    title: str,
    accept: str,
) -> Golden:
    """What ``diff`` prints, with the notes on ``config`` (and ``config_b``) as written."""
    changes = diff_configs(config, config_b, list(opts), num_gpus)
    changed = [change.key for change in changes]
    written = [WrittenConfig(path, changed) for path in (config, config_b) if path]
    golden = Golden(title, accept, format_diff(changes), written)
    if num_gpus is not None:
        _note_scaling(golden, load_cfg(config_b or config, opts), num_gpus)
    return golden


def plan_golden(
    config: str, opts: Sequence[str], gpu_counts: Sequence[int], *, title: str, accept: str
) -> Golden:
    """What ``plan`` prints, with the notes on ``config`` as written."""
    cfg = load_cfg(config, opts)
    body = format_plan_table(cfg, list(gpu_counts)) + "\n"
    golden = Golden(title, accept, body, [WrittenConfig(config)])
    _note_scaling(golden, cfg, gpu_counts[0])
    return golden


def config_golden(
    config: str, opts: Sequence[str], gpu_counts: Sequence[int], *, title: str, accept: str
) -> Golden:
    """The plan table at ``gpu_counts``, then what ``diff`` prints at each of them: every value
    that differs from the config as written, with its reason (the fixture's golden)."""
    cfg = load_cfg(config, opts)
    counts = ", ".join(str(n) for n in gpu_counts)
    sections = [f"{_SECTION}plan at {counts} GPUs\n{format_plan_table(cfg, list(gpu_counts))}\n"]
    changed: set[str] = set()
    for num_gpus in gpu_counts:
        changes = diff_configs(config, None, list(opts), num_gpus)
        changed.update(change.key for change in changes)
        sections.append(f"{_SECTION}diff at {_gpus(num_gpus)}\n{format_diff(changes)}")
    golden = Golden(title, accept, "\n".join(sections), [WrittenConfig(config, sorted(changed))])
    _note_scaling(golden, cfg, gpu_counts[0])
    return golden


def _note_scaling(golden: Golden, cfg: Any, num_gpus: int) -> None:
    recipe = plan_scaling(cfg, num_gpus).written
    golden.rule = recipe.rule
    rule = rule_of(recipe.rule, recipe.keys.rule)
    applied = rule.applied_to(recipe)[0]
    if applied is not rule:  # chosen for the optimizer (auto)
        golden.rule += f": {applied.name}"
    reference = recipe.reference_world_size
    golden.reference = _gpus(reference) if reference else "0 (as written at any GPU count)"


def _gpus(count: int) -> str:
    return f"{count} GPU{'s' if count != 1 else ''}"


# ---- compared, rewritten, explained ----


def compare_golden(path: str | os.PathLike, golden: Golden) -> list[str] | None:
    """None when the file at ``path`` has ``golden``'s body; else why they differ and their
    unified diff, as lines. A missing file is a ``ConfigError`` naming ``golden.accept``."""
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a directory; give the golden file")
    try:
        expected = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; write it with: {golden.accept}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot be read ({error})") from None
    old, new = _body(expected), _body(golden.body)
    if old == new:
        return None
    return _explain(_Notes.parse(expected), golden) + _unified_diff(old, new, str(path))


def write_golden(path: str | os.PathLike, golden: Golden) -> bool:
    """Writes ``golden`` to ``path`` unless it holds that text already; True when written."""
    text = golden.text()
    target = Path(path)
    if target.is_file() and target.read_bytes() == text.encode():
        return False
    target.write_text(text, encoding="utf-8", newline="\n")  # the same bytes on every machine
    return True


def _body(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("#")]


@dataclass
class _Notes:
    """A golden file's ``#`` lines, as read back."""

    title: str | None = None
    version: str | None = None
    rule: str | None = None
    reference: str | None = None
    written: dict[str, dict[str, Entry]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> _Notes:
        notes = cls()
        block: dict[str, Entry] | None = None
        lines = text.splitlines()
        if lines and lines[0].startswith("# "):
            notes.title = lines[0][2:]
        for line in lines:
            if match := _MADE_BY.match(line):
                notes.version, notes.rule, notes.reference = match.groups()
            elif match := _WRITTEN.match(line):
                block = notes.written.setdefault(match.group(1), {})
            elif (match := _ENTRY.match(line)) and block is not None:
                key, value, source = match.groups()
                block[key] = Entry(value, source)
            elif not line.startswith("#"):
                block = None
        return notes


def _explain(notes: _Notes, golden: Golden) -> list[str]:
    """Whether the config as written changed (which key, in which file) or only the scaled
    result (rule, reference, toolkit version)."""
    if notes.version is None and not notes.written:
        return ["why: not known (the golden file has no # lines saying how it was made)"]
    changed = []
    for config in golden.written:
        old = notes.written.get(config.name, {})
        for key, new in config.entries(sorted(old)).items():
            was = old[key]
            if new.value == was.value:
                continue
            where = _where(new.source)
            if new.source != was.source:
                where += f"; was {_where(was.source)}"
            changed.append(f"  {key}: {was.value} -> {new.value}  ({where})")
    scaled = []
    if notes.title != golden.title:
        scaled += [f"  was made by: {notes.title}", f"  now made by: {golden.title}"]
    for what, old, new in (
        ("det-scaling", notes.version, det_scaling.__version__),
        ("rule:", notes.rule, golden.rule),
        ("reference:", notes.reference, golden.reference),
    ):
        if old != new:
            scaled.append(f"  {what} {old} -> {new}")
    if changed:
        return ["why: the config as written changed:", *changed] + (
            ["and so did how it is scaled:", *scaled] if scaled else []
        )
    if scaled:
        return [
            "why: the config as written is the same (every value recorded under 'as written'); "
            "what changed is how it is scaled:",
            *scaled,
        ]
    return [
        "why: the config as written is the same (every value recorded under 'as written'), and "
        f"so are the rule ({golden.rule}), the reference ({golden.reference}) and the toolkit "
        f"(det-scaling {det_scaling.__version__}): the scaled result changed with det-scaling's "
        "or detectron2's code"
    ]


def _where(source: str) -> str:
    return f"set in {source}" if source != DEFAULT else "a default: no file sets it"


def _unified_diff(old: list[str], new: list[str], name: str) -> list[str]:
    """A short unified diff; each hunk header names the section it starts in, as git's names
    the function."""
    lines = []
    for line in difflib.unified_diff(old, new, name, "now", n=1, lineterm=""):
        match = re.match(r"^@@ -(\d+)", line)
        if match:
            start = int(match.group(1))
            heading = next((h for h in reversed(old[:start]) if h.startswith(_SECTION)), None)
            line += f" {heading}" if heading else ""
        lines.append(line)
    return lines

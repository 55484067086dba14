"""The ``config_diff`` fixture's object: a config's plan table and every changed key with its
reason at each GPU count, kept in a golden file next to the test module and compared on each run.

Config paths are relative to pytest's rootdir (where its ini file is). Each test keeps its golden
file in ``config_diff/`` next to its module, named ``<module>.<test>.txt``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from det_scaling.errors import ConfigError
from det_scaling.testing.golden import Golden, compare_golden, config_golden, write_golden
from det_scaling.testing.update import ACCEPT, REWRITTEN, update_requested

__all__ = ["ConfigDiff", "fixture_golden"]

GOLDEN_FOLDER = "config_diff"


class ConfigDiff:
    """What a config gives at each GPU count, checked against the test's golden file."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._config = request.config
        self._root = Path(request.config.rootpath)
        test = "::".join(request.node.nodeid.split("::")[1:]) or request.node.name
        module = Path(request.node.path)
        name = f"{module.stem}.{re.sub(r'[^A-Za-z0-9_.-]+', '_', test.replace('::', '.'))}"
        self._golden = module.parent / GOLDEN_FOLDER / name
        self._calls = 0

    def check(
        self,
        config: str | os.PathLike,
        num_gpus: int | Sequence[int] = (1, 2, 4, 8),
        *,
        overrides: Sequence[str] = (),
    ) -> None:
        """Fails the test unless ``config`` (relative to the rootdir), with ``overrides``
        (``KEY VALUE`` pairs, or ``key=value`` for a LazyConfig), gives at each of ``num_gpus``
        the plan table and changed keys of the golden file. A second call in one test keeps its
        own file (``.2.txt``)."""
        self._calls += 1
        suffix = f".{self._calls}" if self._calls > 1 else ""
        golden_path = self._golden.with_name(f"{self._golden.name}{suffix}.txt")
        counts = [num_gpus] if isinstance(num_gpus, int) else list(num_gpus)
        shown = _relative(golden_path, self._root)
        relative = _relative(Path(config), self._root)
        try:
            with _working_directory(self._root):
                golden = fixture_golden(relative, counts, overrides)
                if update_requested(self._config):
                    Path(shown).parent.mkdir(parents=True, exist_ok=True)
                    if write_golden(shown, golden):
                        self._config.stash[REWRITTEN].append(shown)
                    return
                report = compare_golden(shown, golden)
        except ConfigError as error:  # the user's to fix: one line, no traceback of ours
            report = [str(error)]
        else:
            if report is None:
                return
            heading = f"{shown} differs from what {relative} gives at {_counts(counts)} GPUs"
            report.insert(0, f"{heading}; accept with: {ACCEPT}")
        pytest.fail("\n".join(report), pytrace=False)


def fixture_golden(config: str, gpu_counts: Sequence[int], overrides: Sequence[str] = ()) -> Golden:
    """The golden text ``check`` compares: :func:`~det_scaling.testing.golden.config_golden`
    under the fixture's title, for a config path relative to the working directory."""
    title = f"det-scaling config-diff golden: {config} at {_counts(gpu_counts)} GPUs"
    if overrides:
        title += f" with {' '.join(overrides)}"
    return config_golden(config, overrides, gpu_counts, title=title, accept=ACCEPT)


def _counts(counts: Sequence[int]) -> str:
    return ", ".join(str(n) for n in counts)


def _relative(path: Path, root: Path) -> str:
    """``path`` (relative to ``root`` unless absolute) relative to ``root``, with ``/``."""
    full = path if path.is_absolute() else root / path
    try:
        return Path(os.path.relpath(full, root)).as_posix()
    except ValueError:  # another drive (Windows)
        return full.as_posix()


@contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """Paths in golden files are relative to the working directory: the rootdir's here."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)

"""Data sets the toolkit writes itself (the synthetic VOC set, the digits export): one manifest
protocol, and one way to generate them once per machine in a multi-process run.

A generated set's directory holds a JSON manifest: the parameters it was made with and
``"complete"``, false from before the first file is written until the last one is. A set whose
manifest says complete with the same parameters, and whose files exist, is reused; one made with
other parameters, or left incomplete, is replaced; a directory holding the set's folders without a
manifest is someone else's data and is never touched. Independent runs on one machine (two
launches started together) take the set's lock file in turn: the first writes, the next finds the
set complete.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from detectron2.utils import comm

try:
    import fcntl
except ImportError:  # not POSIX: no lock between independent runs
    fcntl = None

__all__ = ["GeneratedSet", "generate_once", "read_manifest"]


def read_manifest(root: str | Path, name: str) -> dict[str, Any] | None:
    """The manifest ``name`` under ``root``, or None when there is none (or it is unreadable)."""
    path = Path(root) / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


class GeneratedSet:
    """The directory ``root`` of a generated set: its manifest ``manifest_name``, the folders it
    owns (``owned``, relative to ``root``) and the ``params`` that determine its files."""

    def __init__(
        self, root: str | Path, manifest_name: str, owned: Sequence[str], params: dict[str, Any]
    ) -> None:
        self.root = Path(root)
        self.manifest_name = manifest_name
        self.owned = tuple(owned)
        self.params = dict(params)

    def manifest(self) -> dict[str, Any] | None:
        return read_manifest(self.root, self.manifest_name)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Holds the set's lock (``root/<manifest>.lock``) while checking and writing it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{self.manifest_name}.lock", "a") as handle:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
            yield

    def is_complete(self, files: Iterable[Path]) -> bool:
        """Whether the set was completed with these parameters and all ``files`` exist."""
        manifest = self.manifest()
        if manifest is None or not manifest.get("complete", False):
            return False
        if any(manifest.get(key) != value for key, value in self.params.items()):
            return False
        return all(path.is_file() for path in files)

    def begin(self) -> None:
        """Clears an earlier set made here and marks the directory as being written."""
        if any((self.root / sub).exists() for sub in self.owned):
            if self.manifest() is None:
                raise FileExistsError(
                    f"{self.root} already holds {', '.join(self.owned)} without a "
                    f"{self.manifest_name}: it looks like a real data set, which will not be "
                    "overwritten; choose another root"
                )
            for sub in self.owned:
                shutil.rmtree(self.root / sub, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self._write(complete=False)

    def finish(self, **extra: Any) -> None:
        """Marks the set complete, with ``extra`` facts (counts, class names) in the manifest."""
        self._write(complete=True, **extra)

    def _write(self, complete: bool, **extra: Any) -> None:
        manifest = {**self.params, **extra, "complete": complete}
        (self.root / self.manifest_name).write_text(json.dumps(manifest, indent=2) + "\n")


def generate_once(make: Callable[[], Any]) -> None:
    """Runs ``make`` on the first process of each machine while the others wait; a failure there
    is raised in every process (not left as a hang at the barrier)."""
    caught: Exception | None = None
    if comm.get_local_rank() == 0:
        try:
            make()
        except Exception as exc:  # raised below, after the others heard of it
            caught = exc
    if comm.get_world_size() > 1:
        message = None if caught is None else f"{type(caught).__name__}: {caught}"
        failures = [m for m in comm.all_gather(message) if m is not None]
        if failures and caught is None:
            raise RuntimeError(f"generating the data set failed on another process: {failures[0]}")
    if caught is not None:
        raise caught

"""Data sets the toolkit writes itself (the synthetic VOC set, the digits export): one manifest
protocol, one folder per parameter set, and one way to generate them once per machine in a
multi-process run.

A generated set's directory holds a JSON manifest: the parameters it was made with and
``"complete"``, false from before the first file is written until the last one is. Each parameter
set has a folder of its own, named by :func:`parameter_key` (a few parameters for people, then a
hash of all of them), so runs with other parameters under the same data sets root never share
files. Such a folder is written once and never rewritten once complete, since a run may be
reading it (:meth:`GeneratedSet.reusable`); one left incomplete by a writer that stopped is
replaced. A directory holding the set's folders without a manifest is someone else's data and is
never touched. Independent runs on one machine (two launches started together) take the set's
lock file in turn: the first writes, the next finds the set complete. (A cache kept in one
directory whatever its parameters, the pretraining cache, is replaced when they change instead:
:meth:`GeneratedSet.is_complete`.)
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from detectron2.utils import comm

from det_scaling.errors import ConfigError

try:
    import fcntl
except ImportError:  # not POSIX: no lock between independent runs
    fcntl = None

__all__ = ["GeneratedSet", "generate_once", "parameter_key", "read_manifest"]

# Hex digits of the parameters' hash in a folder name: 40 bits, no collision in practice.
_KEY_HASH_DIGITS = 10


def parameter_key(label: str, params: Mapping[str, Any]) -> str:
    """The folder name of a parameter set: ``<label>-<hash>``, ``label`` a few of the parameters
    for people to read, ``hash`` the first hex digits of the SHA-256 of all ``params`` (as JSON
    with sorted keys), which alone tells one set from another."""
    text = json.dumps(dict(params), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:_KEY_HASH_DIGITS]
    return f"{label}-{digest}"


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
        """Whether the set was completed with these parameters and all ``files`` exist; for a
        directory that holds whichever parameters were asked last and is replaced when they
        change (the pretraining cache), unlike a parameter set's own folder (:meth:`reusable`)."""
        manifest = self.manifest()
        if manifest is None or not manifest.get("complete", False):
            return False
        if any(manifest.get(key) != value for key, value in self.params.items()):
            return False
        return all(path.is_file() for path in files)

    def reusable(self, files: Iterable[Path]) -> bool:
        """For a set in its parameters' own folder (:func:`parameter_key`): True when it is
        complete, to be used as it is; False when it is absent or incomplete (its writer stopped),
        to be written now. A complete set is never rewritten, since runs may be reading it:
        raises ``ConfigError`` when it was made with other parameters or misses ``files``."""
        manifest = self.manifest()
        if manifest is None or not manifest.get("complete", False):
            return False
        other = sorted(key for key, value in self.params.items() if manifest.get(key) != value)
        if other:
            raise ConfigError(
                f"{self.root} holds a complete set made with other {', '.join(other)} (see its "
                f"{self.manifest_name}); runs may be reading it, so it is not rewritten: move it "
                "away if no run uses it"
            )
        missing = [path for path in files if not path.is_file()]
        if missing:
            raise ConfigError(
                f"{self.root} is a complete set with {len(missing)} of its files missing (e.g. "
                f"{missing[0]}); runs may be reading it, so it is not rewritten: delete the "
                "folder to have it made again"
            )
        return True

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
        """Marks the set complete, with ``extra`` facts (counts, class names) and the digest of
        its files (:meth:`files_sha256`) in the manifest."""
        self._write(complete=True, **extra, files_sha256=self.files_sha256())

    def files_sha256(self) -> str:
        """The sha256 of the set's files, names and bytes in name order. The parameters fix what
        is drawn, not every byte: another Pillow (its JPEG encoder) writes other bytes, and the
        manifest, which a run's environment record fingerprints, tells them apart."""
        files = [path for sub in self.owned for path in (self.root / sub).rglob("*")]
        digest = hashlib.sha256()
        for path in sorted(path for path in files if path.is_file()):
            digest.update(path.relative_to(self.root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
        return digest.hexdigest()

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

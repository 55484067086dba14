"""Checkpoints that survive a crash: on disk whole or not at all, and resume skips a bad one.

detectron2's checkpointer writes ``torch.save`` straight into the final file, then points
``last_checkpoint`` at it: a machine lost or a disk filled while saving leaves a truncated
checkpoint that ``--resume`` cannot read, and the good ones beside it are ignored.
:class:`SafeCheckpointer` (used by the trainer for every checkpoint it writes or resumes from):

* writes a checkpoint, and then the ``last_checkpoint`` pointer, to a temporary file in the same
  directory, flushed and fsynced, then renamed over the final name (atomic on POSIX);
* on resume, reads the checkpoint the pointer names and, when that fails, the trainer's other
  checkpoints newest first (by modification time: iteration numbers of runs at other GPU counts
  do not compare), each one skipped with a warning naming it and why;
* with ``SOLVER.CHECKPOINT_MAX_TO_KEEP`` (``train.checkpointer.max_to_keep``;
  :func:`periodic_checkpointer`) at least 2 checkpoints are kept, and the oldest is deleted only
  once the newest is safely written.

It is also det_scaling's one reader of weights and checkpoints (:meth:`SafeCheckpointer._load_file`;
:func:`read_checkpoint_file` calls it), which runs no code from a file unless the user allows it:

* ``.pth`` and ``.pyth`` files are read with ``torch.load(weights_only=True)``: tensors and plain
  data only, anything else is refused;
* ``.pkl`` files (Detectron's and detectron2's model zoos; pickles, which run code when read) only
  from detectron2's model-zoo download cache (:func:`model_zoo_cache`), or from anywhere with
  ``MODEL.ALLOW_PICKLED_WEIGHTS`` (``train.allow_pickled_weights``, ``--allow-pickled-weights``).

A refused file is a :class:`RefusedFileError`.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Callable
from typing import IO, Any
from urllib.parse import parse_qs, urlparse

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import hooks
from detectron2.utils import comm
from iopath.common.file_io import get_cache_dir

from det_scaling.errors import ConfigError

__all__ = [
    "CHECKPOINT_PREFIX",
    "READ_ERRORS",
    "RefusedFileError",
    "SafeCheckpointer",
    "UnreadableCheckpointError",
    "check_retention",
    "model_zoo_cache",
    "periodic_checkpointer",
    "read_checkpoint_file",
    "write_atomically",
]

logger = logging.getLogger(__name__)

# The trainer's checkpoints are <prefix>_<7-digit iteration>.pth and <prefix>_final.pth.
CHECKPOINT_PREFIX = "model"
_PARTIAL_SUFFIX = ".partial"
# What torch.load raises for a file cut short or damaged (a truncated zip archive, a pickle
# stream that ends early or is garbage), or one that cannot be read at all.
READ_ERRORS = (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile)


class UnreadableCheckpointError(RuntimeError):
    """No checkpoint of OUTPUT_DIR can be read, though ``last_checkpoint`` says there is one."""


class RefusedFileError(ConfigError):
    """A weights or checkpoint file not read because reading it could run code from it;
    ``path`` is the file, ``why`` the message without it."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = path
        self.why = why


def write_atomically(path: str, write: Callable[[IO[bytes]], Any]) -> None:
    """Calls ``write`` on a temporary file beside ``path``, flushes it to disk and renames it to
    ``path``: a reader finds the old file or the whole new one, never a part of it."""
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=_PARTIAL_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise
    _fsync_directory(directory)  # the rename itself survives a power loss


class SafeCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose saves are atomic and whose resume falls back to the newest
    readable checkpoint (see the module). A ``save_dir`` that is not a local path (a PathManager
    URI) is written as detectron2 writes it."""

    def __init__(
        self,
        model: torch.nn.Module,
        save_dir: str = "",
        *,
        allow_pickled: bool = False,
        allow_pickled_key: str = "MODEL.ALLOW_PICKLED_WEIGHTS",
        **kwargs: Any,
    ) -> None:
        """``allow_pickled``: read ``.pkl`` files from anywhere, not only from detectron2's
        model-zoo cache; ``allow_pickled_key``: the config key that says so, for the message of
        a refused file. ``kwargs``: detectron2's (``save_to_disk``, checkpointables)."""
        super().__init__(model, save_dir, **kwargs)
        self.allow_pickled = allow_pickled
        self.allow_pickled_key = allow_pickled_key
        self._preloaded: tuple[str, dict[str, Any]] | None = None

    # ---- writing ----
    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        if not _is_local(self.save_dir):
            super().save(name, **kwargs)
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        write_atomically(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not _is_local(self.save_dir):
            super().tag_last_checkpoint(last_filename_basename)
            return
        write_atomically(
            os.path.join(self.save_dir, "last_checkpoint"),
            lambda f: f.write(last_filename_basename.encode()),
        )

    # ---- resuming ----
    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """As detectron2's: with ``resume`` and a ``last_checkpoint``, the newest readable of the
        trainer's checkpoints with everything in it; else only the model from ``path``."""
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        if comm.is_main_process() and _is_local(self.save_dir):
            self._remove_partial_files()
        chosen, data = self._newest_readable()
        self._preloaded = (chosen, data)
        try:
            return self.load(chosen)
        finally:
            self._preloaded = None

    # ---- reading ----
    def _load_file(self, filename: str) -> dict[str, Any]:
        """The checkpoint in the local file ``filename``, as detectron2's reader returns it
        (``{"model": state dict, ...}``), read without running code from it (see the module);
        :class:`RefusedFileError` for a file that would need to."""
        if self._preloaded is not None and self._preloaded[0] == filename:
            return self._preloaded[1]  # read once already, when it was chosen
        if filename.endswith(".pkl"):
            self._check_pickle_allowed(filename)
            return super()._load_file(filename)  # detectron2's: Detectron and model-zoo formats
        data = _load_tensors(filename)
        if filename.endswith(".pyth"):  # pycls's checkpoints, as detectron2 reads them
            if "model_state" not in data:
                raise ValueError(f"{filename}: a .pyth (pycls) checkpoint has no 'model_state'")
            model = {
                name: value
                for name, value in data["model_state"].items()
                if not name.endswith("num_batches_tracked")
            }
            return {"model": model, "__author__": "pycls", "matching_heuristics": True}
        if "model" not in data:
            data = {"model": data}
        # Upstream detectron2 main takes options in the URL (?matching_heuristics=True); its load,
        # and read_checkpoint_file, leave them here. v0.6 has no such attribute.
        parsed = getattr(self, "_parsed_url_during_load", None)
        if parsed is not None:
            options = parse_qs(parsed.query)
            if options.pop("matching_heuristics", None) == ["True"]:
                data["matching_heuristics"] = True
            if options:
                raise ValueError(f"{parsed.geturl()}: unsupported URL options {sorted(options)}")
        return data

    def _check_pickle_allowed(self, filename: str) -> None:
        """Raises :class:`RefusedFileError` unless ``.pkl`` files are allowed everywhere or
        ``filename`` is in detectron2's model-zoo cache (where ``detectron2://`` URLs land)."""
        if self.allow_pickled:
            return
        cache = model_zoo_cache()
        inside = os.path.realpath(cache)
        # Real paths: a link in the cache to a file elsewhere is elsewhere.
        if os.path.commonpath([os.path.realpath(filename), inside]) == inside:
            return
        raise RefusedFileError(
            filename,
            "not read: reading a .pkl file can run code in it, and this one is outside "
            f"detectron2's model-zoo cache ({cache}); if you trust it, set "
            f"{self.allow_pickled_key} True (det-scaling train: --allow-pickled-weights)",
        )

    def resume_candidates(self) -> list[str]:
        """The checkpoints resume tries, in order: the one ``last_checkpoint`` names, then the
        trainer's others (``model_<iteration>.pth``, ``model_final.pth``), newest first."""
        pointed = self.get_checkpoint_file()
        pattern = re.compile(rf"{CHECKPOINT_PREFIX}_(\d+|final)\.pth$")
        others = [
            path
            for path in self.get_all_checkpoint_files()
            if pattern.match(os.path.basename(path)) and path != pointed
        ]
        others.sort(key=lambda p: (os.path.getmtime(p), os.path.basename(p)), reverse=True)
        return [pointed, *others]

    def _newest_readable(self) -> tuple[str, dict[str, Any]]:
        skipped = []
        for candidate in self.resume_candidates():
            if not os.path.isfile(candidate):
                reason = "missing"
            else:
                try:
                    return candidate, read_checkpoint_file(self, candidate)
                except (*READ_ERRORS, RefusedFileError) as error:
                    reason = " ".join(str(error).split()) or type(error).__name__
            self.logger.warning("Skipping unreadable checkpoint %s: %s", candidate, reason)
            skipped.append(candidate)
        raise UnreadableCheckpointError(
            f"no readable checkpoint in {self.save_dir} (tried {', '.join(skipped)}): remove "
            "them (and last_checkpoint) to start afresh, or point MODEL.WEIGHTS at a good one "
            "and train without --resume"
        )

    def _remove_partial_files(self) -> None:
        # Left by a crash while writing: never read, possibly as large as a checkpoint.
        for partial in glob.glob(os.path.join(self.save_dir, f".*{_PARTIAL_SUFFIX}")):
            self.logger.info("Removing %s, left by a checkpoint write that did not finish", partial)
            with contextlib.suppress(OSError):
                os.remove(partial)


def model_zoo_cache() -> str:
    """detectron2's model-zoo download cache: iopath's cache directory (``$FVCORE_CACHE``, else
    ``~/.torch/iopath_cache``), folder ``detectron2``, where ``detectron2://`` URLs are saved."""
    return os.path.join(get_cache_dir(), "detectron2")


def read_checkpoint_file(checkpointer: DetectionCheckpointer, path: str) -> dict[str, Any]:
    """``checkpointer._load_file(path)`` outside ``load``: with a :class:`SafeCheckpointer`,
    det_scaling's reader (see the module), with detectron2's formats. Upstream main's reader
    takes the URL options (``?matching_heuristics=True``) that its ``load`` parses first; they
    are parsed here the same way."""
    if not hasattr(checkpointer, "_parsed_url_during_load"):  # v0.6
        return checkpointer._load_file(path)
    parsed = urlparse(path)
    checkpointer._parsed_url_during_load = parsed
    try:
        return checkpointer._load_file(parsed._replace(query="").geturl())
    finally:
        checkpointer._parsed_url_during_load = None


def check_retention(keep: int, key: str) -> None:
    """Raises ``ConfigError`` naming ``key`` unless ``keep`` checkpoints is 0 (all) or >= 2."""
    if keep < 0 or keep == 1:
        raise ConfigError(
            f"{key} is {keep}: use 0 to keep every checkpoint, or 2 or more so that an older one "
            "is there when the newest cannot be read"
        )


def periodic_checkpointer(
    checkpointer: DetectionCheckpointer, period: int, max_to_keep: int
) -> hooks.PeriodicCheckpointer:
    """detectron2's periodic checkpoint hook, keeping ``max_to_keep`` checkpoints (0: all).
    fvcore's hook deletes the oldest after the save returns, so with :class:`SafeCheckpointer`
    the newest is complete on disk first."""
    return hooks.PeriodicCheckpointer(
        checkpointer, period, max_to_keep=max_to_keep or None, file_prefix=CHECKPOINT_PREFIX
    )


def _load_tensors(filename: str) -> dict[str, Any]:
    """``torch.load`` of ``filename`` with ``weights_only=True`` (on any torch: the default
    changed in 2.6); :class:`RefusedFileError` for a file that holds anything else."""
    try:
        return torch.load(filename, map_location=torch.device("cpu"), weights_only=True)
    except pickle.UnpicklingError as error:  # torch's message: what it refused, then advice
        _, found, after = str(error).partition("WeightsUnpickler error:")
        lines = [line.strip() for line in (after if found else str(error)).splitlines()]
        reason = next((line for line in lines if line), type(error).__name__).split(". ")[0]
        raise RefusedFileError(
            filename,
            f"not read: torch.load(weights_only=True) refuses it ({reason.rstrip('.')}): it holds "
            "more than tensors and plain data, and loading that could run code from it (or it is "
            "damaged); use a checkpoint of tensors, e.g. a model's state_dict()",
        ) from None


def _is_local(path: str) -> bool:
    return "://" not in path


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory; the rename is done anyway
        pass
    finally:
        os.close(fd)

"""One run per OUTPUT_DIR: a lock file naming the host and process that hold it.

A lock whose process is gone (on this host), or that a process of the same torchrun job left
(``TORCHELASTIC_RUN_ID``: a restarted worker group), is taken over, saying so; any other lock
refuses the run in one line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator

from det_scaling.errors import ConfigError

__all__ = ["LOCK_FILE", "output_dir_lock"]

logger = logging.getLogger(__name__)

LOCK_FILE = "run.lock"


@contextlib.contextmanager
def output_dir_lock(output_dir: str, key: str = "OUTPUT_DIR") -> Iterator[None]:
    """Holds ``output_dir`` (created if missing) while the block runs. Raises ``ConfigError``
    naming ``key`` when a live run holds it."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, LOCK_FILE)
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "torchelastic_run_id": os.environ.get("TORCHELASTIC_RUN_ID"),
    }
    _acquire(path, me, output_dir, key)
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            if _read(path).get("pid") == me["pid"]:
                os.remove(path)


def _acquire(path: str, me: dict, output_dir: str, key: str) -> None:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        holder = _read(path)
        if not _stale(holder, me):
            raise ConfigError(
                f"{key} {output_dir}: a run is using it (process {holder.get('pid')} on "
                f"{holder.get('host')}, since {holder.get('since')}); wait for it to end or "
                f"choose another {key} (if that run is gone, delete {path})"
            ) from None
        logger.warning(
            "Taking over %s from a run that ended (process %s on %s)",
            path,
            holder.get("pid"),
            holder.get("host"),
        )
        temporary = f"{path}.{me['pid']}"
        with open(temporary, "w") as f:
            json.dump(me, f)
        os.replace(temporary, path)
        return
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _stale(holder: dict, me: dict) -> bool:
    """Whether the lock's holder is gone: a process of this torchrun job, or a process of this
    host that no longer exists (an unreadable lock counts as gone)."""
    if not holder:
        return True
    job = me["torchelastic_run_id"]
    if job and job != "none" and holder.get("torchelastic_run_id") == job:
        return True
    if holder.get("host") != me["host"]:
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    return False

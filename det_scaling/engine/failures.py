"""A failure on one rank, told once: which rank failed first, and why, in one line.

When one process of a run raises, its peers fail a moment later in their next collective ("gloo:
Connection closed by peer"), and every process prints a traceback; the one that matters is the
first. Here each process that fails appends its full traceback to its own log file (detectron2's
``log.txt`` / ``log.txt.rank<N>``) and leaves a :class:`RankFailure` record; the launching
process reads the records and raises :class:`RankFailedError` for the root cause: the earliest
failure that is not a consequence of another one (:func:`is_consequence`), else the earliest.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from det_scaling.errors import ConfigError

__all__ = [
    "ConsequenceOfAnotherRank",
    "RankFailedError",
    "RankFailure",
    "is_consequence",
    "keep_tracebacks_off_the_console",
    "rank_log_file",
    "read_failures",
    "record_failure",
    "root_cause",
]

# What gloo and NCCL say when a peer process is gone or a collective was aborted because of it.
_LOST_PEER = re.compile(
    r"Connection (closed|reset) by peer|Broken pipe|remote worker crash|NCCL communicator was "
    r"aborted|Watchdog caught collective operation timeout|ProcessGroupNCCL is aborted",
    re.IGNORECASE,
)
# The most of a cause kept in the one line (a loss dict and advice fit; a page of text does not).
_MAX_CAUSE = 1500


class ConsequenceOfAnotherRank(Exception):
    """Mixed into an exception a process raises because another rank failed (its own state is
    fine): the other rank's failure is the one to report."""


@dataclass(frozen=True)
class RankFailure:
    """One process's failure: its rank, when, the cause in one line, whether it only follows from
    another rank's failure, and where its traceback is (``traceback`` when there is no log)."""

    rank: int
    world_size: int
    time: float
    cause: str
    consequence: bool = False
    log_file: str | None = None
    traceback: str = ""
    # A ConfigError: its message alone is what the user reads (exit status 2, no traceback).
    config_error: str = ""

    def describe(self) -> str:
        """The one line a user reads."""
        where = "the run" if self.world_size == 1 else f"rank {self.rank} of {self.world_size}"
        if self.consequence:
            text = f"{where} stopped because another rank failed ({self.cause}); the cause is in "
            text += "that rank's message or log"
        else:
            text = f"{where} failed: {self.cause}"
        if self.log_file:
            text += f" (full traceback in {self.log_file})"
        return text


class RankFailedError(RuntimeError):
    """A process of a run failed; ``failure`` says which and why (the message is its one line)."""

    def __init__(self, failure: RankFailure) -> None:
        super().__init__(failure.describe())
        self.failure = failure


def is_consequence(error: BaseException) -> bool:
    """Whether ``error`` only follows from another rank's failure: a collective whose peer is gone
    (gloo, NCCL), or an exception marked :class:`ConsequenceOfAnotherRank`."""
    if isinstance(error, ConsequenceOfAnotherRank):
        return True
    return isinstance(error, RuntimeError) and bool(_LOST_PEER.search(str(error)))


def rank_log_file(log_dir: str, rank: int) -> str:
    """The log file detectron2's ``setup_logger`` gives ``rank`` in ``log_dir``."""
    return os.path.join(log_dir, "log.txt" if rank == 0 else f"log.txt.rank{rank}")


def record_failure(
    error: BaseException,
    rank: int,
    world_size: int,
    records_dir: str | None,
    log_dir: str | None,
) -> RankFailure:
    """Call while handling ``error``: appends its traceback to this rank's log in ``log_dir``
    (kept in the record instead when there is none), writes the record into ``records_dir`` (when
    given) for the launching process, and returns it."""
    stack = traceback.format_exc()
    log_file = rank_log_file(log_dir, rank) if log_dir else None
    if log_file is not None:
        try:
            _append_to_log(log_file, f"rank {rank} of {world_size} failed:\n{stack}")
        except OSError:
            log_file = None
    failure = RankFailure(
        rank=rank,
        world_size=world_size,
        time=time.time(),
        cause=_one_line(error),
        consequence=is_consequence(error),
        log_file=log_file,
        traceback="" if log_file else stack,
        config_error=str(error) if isinstance(error, ConfigError) else "",
    )
    if records_dir is not None:
        path = Path(records_dir) / f"rank{rank}.json"
        path.write_text(json.dumps(dataclasses.asdict(failure)))
    return failure


def read_failures(records_dir: str) -> list[RankFailure]:
    """The records left in ``records_dir`` by :func:`record_failure`, by rank."""
    paths = sorted(Path(records_dir).glob("rank*.json"), key=lambda p: int(p.stem[4:]))
    return [RankFailure(**json.loads(path.read_text())) for path in paths]


def root_cause(failures: list[RankFailure]) -> RankFailure:
    """The failure to report: the earliest that is not a consequence, else the earliest."""
    causes = [f for f in failures if not f.consequence] or failures
    return min(causes, key=lambda f: f.time)


def keep_tracebacks_off_the_console(*logger_names: str) -> None:
    """Console handlers of these loggers no longer print records that carry a traceback (detectron2
    logs "Exception during training" with one): the log files keep them, and the launching
    process prints the failure once (:class:`RankFailedError`)."""
    for name in logger_names:
        for handler in logging.getLogger(name).handlers:
            on_console = getattr(handler, "stream", None) in (sys.stdout, sys.stderr)
            if on_console and not any(isinstance(f, _NoTraceback) for f in handler.filters):
                handler.addFilter(_NoTraceback())


class _NoTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is None


def _one_line(error: BaseException) -> str:
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= _MAX_CAUSE else text[: _MAX_CAUSE - 3] + "..."


def _append_to_log(log_file: str, text: str) -> None:
    # The loggers' buffered streams first, so the traceback follows what they already hold.
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", ()):
            handler.flush()
    os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
    with open(log_file, "a") as f:
        f.write(text)

"""Logging helpers shared by the modules."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

__all__ = [
    "UNACTIONABLE_WARNINGS",
    "plain_config_dump",
    "quiet_logger",
    "unactionable_warnings_ignored",
]

# Warnings that libraries raise from inside what det_scaling calls, with nothing for the user to
# do about them: detectron2 v0.6's comm.all_gather serializes through torch's deprecated
# TypedStorage; detectron2's anchor generator calls torch.meshgrid without ``indexing``.
UNACTIONABLE_WARNINGS = (
    (UserWarning, r"TypedStorage is deprecated"),
    (UserWarning, r"torch\.meshgrid: in an upcoming release, it will be required to pass"),
)


@contextlib.contextmanager
def quiet_logger(name: str, level: int = logging.ERROR) -> Iterator[None]:
    """Logger ``name`` drops records below ``level`` meanwhile (for a library's message that is
    noise in this context, such as one Python would print to stderr with no handler set)."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


@contextlib.contextmanager
def unactionable_warnings_ignored() -> Iterator[None]:
    """:data:`UNACTIONABLE_WARNINGS` are ignored meanwhile; every other warning shows as usual.
    Also a decorator: ``@unactionable_warnings_ignored()`` on the function of a process."""
    with warnings.catch_warnings():
        for category, message in UNACTIONABLE_WARNINGS:
            warnings.filterwarnings("ignore", message, category)
        yield


@contextlib.contextmanager
def plain_config_dump() -> Iterator[None]:
    """detectron2's ``default_setup`` logs the config file and the full config without terminal
    colour codes meanwhile: it colours them with pygments when that is installed, and the codes
    would end up in ``log.txt`` too."""
    from detectron2.engine import defaults

    highlight = getattr(defaults, "_highlight", None)
    if highlight is None:  # a detectron2 that does not colour them
        yield
        return
    defaults._highlight = _plain
    try:
        yield
    finally:
        defaults._highlight = highlight


def _plain(code: str, filename: str) -> str:
    return code

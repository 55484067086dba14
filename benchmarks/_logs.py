"""Logging shared by the benchmark scripts: the run logs go to a file, stdout keeps the table."""

from __future__ import annotations

import logging
from pathlib import Path


def log_to(path: Path | None) -> None:
    """Sends detectron2's, fvcore's and det_scaling's logs to ``path`` only (``None``: nowhere),
    keeping stdout for the table; the trainer then leaves the loggers as they are."""
    handler: logging.Handler = logging.NullHandler()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s]: %(message)s", "%H:%M:%S"))
    for name in ("detectron2", "det_scaling", "fvcore"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
            old.close()
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False

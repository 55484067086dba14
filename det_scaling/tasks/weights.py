"""``MODEL.WEIGHTS`` (``train.init_checkpoint``) checked before a run starts: there, readable,
and a checkpoint of this model.

detectron2 loads the weights in every process once training starts. A missing file is then an
``AssertionError`` in each of them; a checkpoint of another architecture is worse: each key that
does not match is skipped with a warning, and the run trains from random weights. Here the file is
read once in the launching process and compared with the config's model, built on PyTorch's meta
device (shapes only: no memory, no compute). It is read as the trainer reads it
(:class:`~det_scaling.engine.checkpoint.SafeCheckpointer`): a file whose reading would run code
from it is refused, as ``MODEL.ALLOW_PICKLED_WEIGHTS`` (``train.allow_pickled_weights``) says.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import torch
from detectron2.utils.file_io import PathManager

from det_scaling.config import ConfigFormat
from det_scaling.engine.checkpoint import (
    READ_ERRORS,
    RefusedFileError,
    SafeCheckpointer,
    read_checkpoint_file,
)
from det_scaling.engine.run import Run
from det_scaling.errors import ConfigError
from det_scaling.tasks.trainers import trainer_class

__all__ = ["check_weights"]

logger = logging.getLogger(__name__)


def check_weights(run: Run) -> None:
    """Raises ``ConfigError`` naming ``MODEL.WEIGHTS`` (``train.init_checkpoint``) when it is set
    and the file cannot be fetched or read, reading it would run code from it and the run does
    not allow that, or none of the model's parameters is in it (by name, after detectron2's name
    conversions, and shape)."""
    keys, weights = run.adapter.keys, run.settings.weights
    key = keys.weights
    if not weights:
        return
    path = _local_path(weights, key)
    model = _meta_model(run.adapter)
    # The trainer's reader: detectron2's formats (.pth, Detectron .pkl, pycls .pyth) and name
    # conversions, and what it refuses.
    checkpointer = SafeCheckpointer(
        model if model is not None else torch.nn.Module(),
        allow_pickled=run.settings.allow_pickled_weights,
        allow_pickled_key=keys.allow_pickled_weights,
    )
    try:
        checkpoint = read_checkpoint_file(checkpointer, path)
    except RefusedFileError as error:
        where = weights if path == weights else f"{weights} ({path})"  # a URL: its download
        raise ConfigError(f"{key} {where}: {error.why}") from None
    except (*READ_ERRORS, ValueError, KeyError, AssertionError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ConfigError(
            f"{key} {weights}: cannot be read as a checkpoint ({reason}); point it at a whole "
            "checkpoint, or set it to '' to train from scratch"
        ) from None
    if model is None:
        return
    num_tensors = len(checkpoint.get("model", {}))
    with warnings.catch_warnings():
        # Loading into meta tensors copies nothing, on purpose; torch warns for each one.
        warnings.simplefilter("ignore")
        incompatible = checkpointer._load_model(checkpoint)
    unmatched = set(incompatible.missing_keys) | {key for key, *_ in incompatible.incorrect_shapes}
    parameters = [name for name, _ in model.named_parameters()]
    if not set(parameters) - unmatched:
        raise ConfigError(
            f"{key} {weights}: none of its {num_tensors} tensors matches a parameter of the "
            f"model ({type(model).__name__}, {len(parameters)} parameters, by name and shape): it "
            f"is a checkpoint of another model; use one of this model, or set {key} '' to train "
            "from scratch"
        )


def _local_path(weights: str, key: str) -> str:
    """The local file behind ``weights`` (a URL such as detectron2://... is downloaded once into
    detectron2's cache, where the processes of the run then find it)."""
    output = io.StringIO()
    try:
        # iopath prints a progress bar and its own failure lines; the error below says it all.
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            path = PathManager.get_local_path(weights)
    except Exception as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ConfigError(
            f"{key} {weights}: cannot be fetched ({reason}); download it and set {key} to the "
            "file, or to '' to train from scratch"
        ) from None
    if not PathManager.isfile(path):
        raise ConfigError(
            f"{key} {weights}: no such file; set it to a checkpoint, or to '' to train from scratch"
        )
    return path


def _meta_model(adapter: ConfigFormat) -> torch.nn.Module | None:
    """The config's model with meta tensors, or None when its code cannot be built that way (then
    only the file's readability is checked)."""
    meta = adapter.writable_copy()
    meta.set(meta.keys.device, "meta")
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return trainer_class(meta).build_model(meta.cfg)
    except Exception as error:  # a model whose construction needs real tensors
        logger.info("MODEL.WEIGHTS not compared with the model: %s", error)
        return None

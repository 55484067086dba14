"""The detectron2 compatibility layer: the only side effect of ``import det_scaling``.

detectron2 v0.6 (the version the registry's ``pb1-detectron2`` re-upload carries, installed by
``tools/install_detectron2.py`` as pure Python) predates numpy 2, Pillow 10 and CPU-only installs.
:func:`install` makes it importable and usable with today's packages without importing it: each
fix runs when the detectron2 module it concerns is imported (an import hook), checks whether it is
needed and does nothing otherwise, so a source build of upstream main (which fixed these) is left
as it is. :func:`applied_fixes` says which ones ran.

========================  ===================================================================
fix                       what it does, and when
========================  ===================================================================
``pil_linear``            Pillow 10 removed ``Image.LINEAR``; v0.6 uses it as a default argument
                          in ``detectron2/data/transforms/transform.py`` at import time. Adds
                          ``PIL.Image.LINEAR = PIL.Image.BILINEAR`` (the same filter) when Pillow
                          lacks it and that file uses it (upstream main does not).
``placeholder_c_ops``     v0.6 imports ``detectron2._C`` at module level in ``layers`` and
                          ``evaluation`` although Faster R-CNN never calls it. When no compiled
                          ``_C`` exists, registers a placeholder module whose functions raise
                          :class:`MissingCompiledOpsError` (rotated boxes, deformable conv, the
                          fast COCO evaluator) and whose version probes report "not compiled".
``numpy_removed_aliases`` numpy 1.24 removed ``np.int``, ``np.float``, ``np.str``, ``np.object``;
                          v0.6 uses them in the VOC loader, the class histogram printed when a
                          training loader is built, masks and visualizers. Gives only those
                          modules (when their source uses an alias numpy lacks) a view of numpy
                          with the aliases; numpy itself is not changed.
========================  ===================================================================

Also: recent torch answers each ``torch.jit.script`` call with a FutureWarning, and fvcore and
detectron2 call it while they import: that warning is silenced while those modules import (the
user's own ``torch.jit.script`` still warns).

Handled elsewhere rather than patched: ``pkg_resources`` (used by ``detectron2.model_zoo``) by
requiring ``setuptools<81``; v0.6's CUDA-only ``detectron2.engine.launch`` by
:mod:`det_scaling.engine.launch` (under upstream main too, whose launch can start CPU processes but
not record which rank failed).

Pieces upstream main has and v0.6 lacks, used from detectron2 when it has them (told by feature:
upstream still reports version 0.6), composed here for v0.6:

* :func:`build_test_loader`: ``build_detection_test_loader``'s ``batch_size``;
* :func:`create_local_process_group`: ``comm``'s group of the processes on this machine.

And :func:`create_ddp_model`: detectron2's, which passes ``device_ids`` that DDP rejects for CPU
models in every version.
"""

from __future__ import annotations

import builtins
import importlib.abc
import importlib.util
import inspect
import os
import re
import sys
import types
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "MissingCompiledOpsError",
    "applied_fixes",
    "build_test_loader",
    "create_ddp_model",
    "create_local_process_group",
    "install",
]

# Aliases numpy removed in 1.24 (``np.bool`` came back in 2.0 as ``np.bool_``).
_NUMPY_REMOVED_ALIASES = {
    "int": builtins.int,
    "float": builtins.float,
    "str": builtins.str,
    "object": builtins.object,
    "bool": builtins.bool,
}
# detectron2 v0.6 modules that use one of the aliases.
_MODULES_USING_NUMPY_ALIASES = (
    "detectron2.data.build",
    "detectron2.data.datasets.pascal_voc",
    "detectron2.structures.masks",
    "detectron2.evaluation.pascal_voc_evaluation",
    "detectron2.evaluation.sem_seg_evaluation",
    "detectron2.utils.visualizer",
    "detectron2.utils.video_visualizer",
)
_PIL_LINEAR_MODULE = "detectron2.data.transforms.transform"
# Modules that call torch.jit.script while they import.
_MODULES_SCRIPTING_ON_IMPORT = ("detectron2.modeling.box_regression", "fvcore.nn.focal_loss")
_JIT_SCRIPT_DEPRECATED = r"`torch\.jit\.script` is deprecated"

_applied: list[str] = []


class MissingCompiledOpsError(RuntimeError):
    """A detectron2 operator that needs the compiled ``detectron2._C`` extension was called."""


class _PlaceholderCOps(types.ModuleType):
    """Stands in for ``detectron2._C`` when detectron2 was installed without its C++ ops."""

    def get_compiler_version(self) -> str:
        return "not compiled (pure-Python detectron2, see det_scaling.compat)"

    def get_cuda_version(self) -> str:
        return "not compiled"

    def has_cuda(self) -> bool:
        return False

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise MissingCompiledOpsError(
            f"detectron2._C.{name} is not available: this detectron2 was installed without its "
            "compiled C++/CUDA ops, which rotated boxes, deformable convolution and the fast COCO "
            "evaluator need (Faster R-CNN does not). Install a source build: "
            "python tools/install_detectron2.py --force --source /path/to/detectron2"
        )


class _NumpyWithRemovedAliases(types.ModuleType):
    """numpy, plus the scalar aliases numpy removed; handed to old modules as their ``np``."""

    def __init__(self) -> None:
        import numpy

        super().__init__("numpy", numpy.__doc__)
        self._numpy = numpy

    def __getattr__(self, name: str):
        if name in _NUMPY_REMOVED_ALIASES and not _numpy_has(name):
            return _NUMPY_REMOVED_ALIASES[name]
        return getattr(self._numpy, name)

    def __dir__(self) -> Iterable[str]:
        return sorted(set(dir(self._numpy)) | set(_NUMPY_REMOVED_ALIASES))


def _numpy_has(name: str) -> bool:
    import numpy

    with warnings.catch_warnings():  # numpy 2 warns while refusing some removed names
        warnings.simplefilter("ignore")
        return hasattr(numpy, name)


def _pil_linear_needed(image_module: types.ModuleType) -> bool:
    return not hasattr(image_module, "LINEAR")


def _source(module: types.ModuleType) -> str:
    origin = getattr(module.__spec__, "origin", None)
    if not origin or not os.path.isfile(origin):
        return ""
    with open(origin, encoding="utf-8") as f:
        return f.read()


def _fix_pil_linear(transform: types.ModuleType) -> bool:
    from PIL import Image

    if not (_pil_linear_needed(Image) and "Image.LINEAR" in _source(transform)):
        return False
    Image.LINEAR = Image.BILINEAR
    return True


def _compiled_ops_missing() -> bool:
    if "detectron2._C" in sys.modules:
        return False
    return importlib.util.find_spec("detectron2._C") is None


def _fix_placeholder_c_ops(detectron2: types.ModuleType) -> bool:
    if not _compiled_ops_missing():
        return False
    placeholder = _PlaceholderCOps("detectron2._C", _PlaceholderCOps.__doc__)
    sys.modules["detectron2._C"] = placeholder
    detectron2._C = placeholder
    return True


def _uses_missing_numpy_alias(source: str) -> bool:
    used = set(re.findall(r"\bnp\.(int|float|str|object|bool)\b", source))
    return any(not _numpy_has(alias) for alias in used)


def _fix_numpy_removed_aliases(module: types.ModuleType) -> bool:
    import numpy

    if getattr(module, "np", None) is not numpy or not _uses_missing_numpy_alias(_source(module)):
        return False
    module.np = _NumpyWithRemovedAliases()
    return True


# module -> (fix name, the fix), run before the module executes / after it has.
_BEFORE_IMPORT: dict[str, tuple[str, Callable[[types.ModuleType], bool]]] = {
    _PIL_LINEAR_MODULE: ("pil_linear", _fix_pil_linear),
}
_AFTER_IMPORT: dict[str, tuple[str, Callable[[types.ModuleType], bool]]] = {
    "detectron2": ("placeholder_c_ops", _fix_placeholder_c_ops),
    **{
        name: ("numpy_removed_aliases", _fix_numpy_removed_aliases)
        for name in _MODULES_USING_NUMPY_ALIASES
    },
}


def _run_fix(fixes: dict, module: types.ModuleType) -> None:
    name, fix = fixes[module.__name__]
    if fix(module) and name not in _applied:
        _applied.append(name)


class _FixingFinder(importlib.abc.MetaPathFinder):
    """Finds the modules the fixes concern as the other finders do, and has their loader run
    the fixes around executing them."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        quiet = fullname in _MODULES_SCRIPTING_ON_IMPORT
        if not (quiet or fullname in _BEFORE_IMPORT or fullname in _AFTER_IMPORT):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader.exec_module = _with_fixes(spec.loader.exec_module, quiet)
        return spec


def _with_fixes(exec_module: Callable[[types.ModuleType], None], quiet: bool) -> Callable:
    def exec_with_fixes(module: types.ModuleType) -> None:
        if module.__name__ in _BEFORE_IMPORT:
            _run_fix(_BEFORE_IMPORT, module)
        if quiet:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", _JIT_SCRIPT_DEPRECATED, FutureWarning)
                exec_module(module)
        else:
            exec_module(module)
        if module.__name__ in _AFTER_IMPORT:
            _run_fix(_AFTER_IMPORT, module)

    return exec_with_fixes


def install() -> None:
    """Has every fix this environment needs run as detectron2's modules import (once); fixes the
    modules imported already.

    Raises ImportError with install instructions when detectron2 is not installed.
    """
    if importlib.util.find_spec("detectron2") is None:
        raise ImportError(
            "det_scaling needs detectron2, which is not installed in this environment. Run "
            "`make setup`, or `python tools/install_detectron2.py` inside your environment "
            "(it keeps an existing build, takes --source PATH, or installs detectron2 v0.6)."
        )
    if any(isinstance(finder, _FixingFinder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _FixingFinder())
    for name in _AFTER_IMPORT:
        if name in sys.modules:
            _run_fix(_AFTER_IMPORT, sys.modules[name])


def applied_fixes() -> list[str]:
    """Names of the fixes applied in this process so far."""
    return list(_applied)


def build_test_loader(
    dataset: Sequence[dict[str, Any]],
    mapper: Callable[[dict[str, Any]], Any],
    batch_size: int,
    num_workers: int = 0,
) -> torch.utils.data.DataLoader:
    """detectron2's test loader: every item of ``dataset`` once, mapped by ``mapper``, split
    among the processes by its ``InferenceSampler``, in lists of ``batch_size`` items.

    Upstream main's ``build_detection_test_loader`` takes ``batch_size`` and is used."""
    from detectron2.data import build_detection_test_loader

    if "batch_size" in inspect.signature(build_detection_test_loader).parameters:
        return build_detection_test_loader(
            list(dataset), mapper=mapper, batch_size=batch_size, num_workers=num_workers
        )
    # v0.6 gap: its build_detection_test_loader has 1 item a batch; the same loader otherwise.
    import torch
    from detectron2.data import DatasetFromList, MapDataset
    from detectron2.data.build import trivial_batch_collator
    from detectron2.data.samplers import InferenceSampler

    mapped = MapDataset(DatasetFromList(list(dataset), copy=False), mapper)
    return torch.utils.data.DataLoader(
        mapped,
        batch_size=batch_size,
        sampler=InferenceSampler(len(mapped)),
        num_workers=num_workers,
        collate_fn=trivial_batch_collator,
    )


def create_local_process_group(processes_per_machine: int) -> None:
    """Sets detectron2's group of the processes on this machine (``comm.get_local_rank`` needs
    it), in every process of the process group: upstream main's
    ``comm.create_local_process_group`` where it exists."""
    import torch.distributed as dist
    from detectron2.utils import comm

    if hasattr(comm, "create_local_process_group"):  # detectron2 after v0.6
        # Its function is cached and keeps the group of an earlier launch in this process, which
        # destroy_process_group has ended: a second launch needs a new one.
        comm._LOCAL_PROCESS_GROUP = None
        getattr(comm.create_local_process_group, "cache_clear", lambda: None)()
        comm.create_local_process_group(processes_per_machine)
        return
    # v0.6 gap: no such function; its launch builds the groups inline and stores this machine's
    # in comm._LOCAL_PROCESS_GROUP, as done here.
    from det_scaling.errors import ConfigError

    world_size, rank = dist.get_world_size(), dist.get_rank()
    if world_size % processes_per_machine:
        raise ConfigError(
            f"world size {world_size} is not a multiple of {processes_per_machine} processes "
            "per machine"
        )
    machine_rank = rank // processes_per_machine
    # Every process must create every group (new_group is collective), keeping only its own.
    for machine in range(world_size // processes_per_machine):
        first = machine * processes_per_machine
        group = dist.new_group(list(range(first, first + processes_per_machine)))
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group


def create_ddp_model(
    model: torch.nn.Module,
    *,
    fp16_compression: bool = False,
    at_one_process: bool = False,
    **kwargs: Any,
) -> torch.nn.Module:
    """``model`` wrapped in ``DistributedDataParallel`` when there is more than one process (or,
    with ``at_one_process``, in a process group of one: a check of DDP itself), else ``model``
    itself; ``kwargs`` go to ``DistributedDataParallel``.

    Like ``detectron2.engine.create_ddp_model``, except that ``device_ids`` defaults to this
    process's local GPU only for a CUDA model: for a CPU model DDP requires ``device_ids=None``.
    ``fp16_compression`` registers PyTorch's fp16 gradient compression hook, as detectron2's does.
    """
    from detectron2.utils import comm
    from torch.nn.parallel import DistributedDataParallel

    if comm.get_world_size() == 1 and not at_one_process:
        return model
    on_cuda = any(p.device.type == "cuda" for p in model.parameters())
    if "device_ids" not in kwargs:
        kwargs["device_ids"] = [comm.get_local_rank()] if on_cuda else None
    # Recent torch deprecates broadcast_buffers (detectron2's name) for forward_sync_buffers, with
    # a FutureWarning at every use. That one also broadcasts the buffers once when DDP is built,
    # which changes nothing here: every rank builds the same model (and loads the same weights,
    # if any) before DDP wraps it, so their buffers are already equal.
    renamed = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    if "broadcast_buffers" in kwargs and renamed:
        kwargs.setdefault("forward_sync_buffers", kwargs.pop("broadcast_buffers"))
    ddp = DistributedDataParallel(model, **kwargs)
    if fp16_compression:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp

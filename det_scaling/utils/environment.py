"""Where a run was made: versions, CPU, GPU, threads, numerics settings, seeds and data sets, as
one JSON-serialisable record (:func:`collect_environment`), and the differences between two
records that change a run's numbers (:func:`numeric_differences`).

Nothing runs at import; torch, detectron2 and the other libraries are imported when a record is
collected.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "GENERATED_MANIFESTS",
    "NUMERICS_VARIABLES",
    "collect_environment",
    "dataset_fingerprint",
    "environment_mismatch",
    "numeric_differences",
]

# Environment variables that change CPU numerics (the kernels chosen, their summation order) or
# the threads a process uses.
NUMERICS_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "MKL_CBWR",
    "OPENBLAS_CORETYPE",
    "CUBLAS_WORKSPACE_CONFIG",
)
# The manifest file of each data set the toolkit generates (the synthetic VOC set's
# det_scaling.data.synthetic_voc.MANIFEST_NAME, the digits export's
# det_scaling.classification.digits.MANIFEST_NAME): named here because utils sits below both
# packages; tests/utils/test_environment.py checks that the names agree.
GENERATED_MANIFESTS = ("synthetic.json", "digits.json")
NOT_A_CHECKOUT = "not a git checkout"


def collect_environment(
    *,
    world_size: int | None = None,
    seeds: Any = None,
    datasets: Iterable[str] = (),
) -> dict[str, Any]:
    """The record of this process: det_scaling's source (version, git commit, dirty), library
    versions, CPU, GPUs (None without CUDA), threads, the numerics variables, deterministic
    algorithms, ``world_size`` and ``seeds`` as given, and a fingerprint of each registered data
    set in ``datasets`` (:func:`dataset_fingerprint`)."""
    import torch

    commit, dirty = _source_state()
    return {
        "det_scaling": {"version": _version("det_scaling"), "commit": commit, "dirty": dirty},
        "versions": {
            "python": platform.python_version(),
            "torch": str(torch.__version__),  # a TorchVersion, which weights_only loads refuse
            "torchvision": _version("torchvision"),
            "detectron2": _version("detectron2"),
            "numpy": _version("numpy"),
            "Pillow": _version("PIL"),
            "fvcore": _version("fvcore"),
        },
        "cpu": {
            "model": _cpu_model(),
            # A virtual machine's model name can be as vague as "AMD EPYC"; the family and
            # model numbers tell its generations (and their kernels) apart.
            "family_model": _cpu_family_model(),
            "capability": torch.backends.cpu.get_cpu_capability(),
            "count": os.cpu_count(),
        },
        "gpu": _gpu(),
        "threads": {
            "torch": torch.get_num_threads(),
            "torch_interop": torch.get_num_interop_threads(),
        },
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "numerics_variables": {name: os.environ.get(name) for name in NUMERICS_VARIABLES},
        "world_size": world_size,
        "seeds": seeds,
        "datasets": {name: dataset_fingerprint(name) for name in dict.fromkeys(datasets)},
    }


def dataset_fingerprint(name: str) -> dict[str, str] | None:
    """What identifies the registered data set ``name``: the sha256 of its manifest when it is a
    generated set, else of its split's list file (a VOC-layout set's
    ``ImageSets/Main/<split>.txt``), with the file hashed; None when it is not registered or
    nothing identifies it. The folder is the one detectron2's ``MetadataCatalog`` entry records
    (``dirname`` of a VOC-layout set, ``split_dir`` of an image-folder split)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name not in DatasetCatalog.list():
        return None
    meta = MetadataCatalog.get(name)
    dirname, split_dir = meta.get("dirname"), meta.get("split_dir")
    folders = [Path(dirname)] if dirname else []
    if split_dir:  # an image-folder split: the set's manifest is beside the split folders
        folders += [Path(split_dir), Path(split_dir).parent]
    for folder in folders:
        for manifest in GENERATED_MANIFESTS:
            if (folder / manifest).is_file():
                return _file_fingerprint(folder / manifest)
    split = meta.get("split")
    if dirname and split:
        listing = Path(dirname) / "ImageSets" / "Main" / f"{split}.txt"
        if listing.is_file():
            return _file_fingerprint(listing)
    return None


def _file_fingerprint(path: Path) -> dict[str, str]:
    return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "file": str(path)}


def _version(module: str) -> str | None:
    """The version of an imported-on-demand module, None when it is not installed."""
    try:
        imported = __import__(module)
    except ImportError:
        return None
    return getattr(imported, "__version__", None)


def _source_state() -> tuple[str, bool | None]:
    """The git commit of det_scaling's checkout and whether tracked files differ from it
    (untracked files, such as run outputs, do not count); ``(NOT_A_CHECKOUT, None)`` when the
    package is installed outside one."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():  # an installed copy, even one inside another repository
        return NOT_A_CHECKOUT, None
    try:
        result = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain=v2", "--branch", "-uno"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return NOT_A_CHECKOUT, None
    if result.returncode != 0:
        return NOT_A_CHECKOUT, None
    lines = result.stdout.splitlines()
    commit = next(
        (line.split()[2] for line in lines if line.startswith("# branch.oid ")), NOT_A_CHECKOUT
    )
    return commit, any(not line.startswith("#") for line in lines)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_family_model() -> str | None:
    """``"<cpu family>/<model>"`` from /proc/cpuinfo (x86), None where it does not say."""
    found: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("cpu family", "model") and key not in found:
                    found[key] = value.strip()
                if not line.strip():  # the first processor's block is enough
                    break
    except OSError:
        return None
    if "cpu family" not in found:
        return None
    return f"{found['cpu family']}/{found.get('model', '?')}"


def _gpu() -> dict[str, Any] | None:
    """GPU names, driver, CUDA and cuDNN versions; None when CUDA is not available."""
    import torch

    if not torch.cuda.is_available():
        return None
    return {
        "names": [torch.cuda.get_device_name(k) for k in range(torch.cuda.device_count())],
        "driver": _nvidia_driver(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }


def _nvidia_driver() -> str | None:
    """The NVIDIA kernel module's version, read from /proc (no nvidia-smi process)."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    words = text.split("Kernel Module", 1)[-1].split()
    return words[0] if words else None


def _field(record: Mapping[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(record, Mapping):
            return None
        record = record.get(key)
    return record


def _python_minor(version: str | None) -> str | None:
    return None if version is None else ".".join(version.split(".")[:2])


# The fields compared, as (what the phrase calls it, how to read it from a record). Not compared:
# det_scaling's commit and dirty state (a table's rows are made over several commits, and each
# run's config hash is recorded beside it), interop threads (they schedule independent ops, never
# split a reduction), the world size and seeds (rows differ in them by design).
_NUMERIC_FIELDS = (
    ("Python", lambda r: _python_minor(_field(r, "versions", "python"))),
    *(
        (name, lambda r, name=name: _field(r, "versions", name))
        for name in ("torch", "torchvision", "detectron2", "numpy", "Pillow")
    ),
    ("CPU", lambda r: _field(r, "cpu", "model")),
    ("CPU family/model", lambda r: _field(r, "cpu", "family_model")),
    ("CPU capability", lambda r: _field(r, "cpu", "capability")),
    *(
        (name, lambda r, name=name: _field(r, "numerics_variables", name))
        for name in NUMERICS_VARIABLES
    ),
    ("GPU", lambda r: _field(r, "gpu", "names")),
    ("NVIDIA driver", lambda r: _field(r, "gpu", "driver")),
    ("CUDA", lambda r: _field(r, "gpu", "cuda")),
    ("cuDNN", lambda r: _field(r, "gpu", "cudnn")),
    ("torch threads", lambda r: _field(r, "threads", "torch")),
    ("deterministic algorithms", lambda r: _field(r, "deterministic_algorithms")),
)


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return str(value)


def numeric_differences(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> list[str]:
    """The differences between two records (:func:`collect_environment`) in what changes a run's
    numbers, each a short phrase ("CPU capability AVX512 vs AVX2"); ``["no environment
    recorded"]`` when either is missing."""
    if not a or not b:
        return ["no environment recorded"]
    differences = [
        f"{label} {_shown(read(a))} vs {_shown(read(b))}"
        for label, read in _NUMERIC_FIELDS
        if read(a) != read(b)
    ]
    sets_a, sets_b = a.get("datasets") or {}, b.get("datasets") or {}
    if set(sets_a) != set(sets_b):
        differences.append(f"data sets {_shown(sorted(sets_a))} vs {_shown(sorted(sets_b))}")
    for name in sorted(set(sets_a) & set(sets_b)):
        first, second = _field(sets_a, name, "sha256"), _field(sets_b, name, "sha256")
        if first != second:
            differences.append(
                f"data set {name} {(first or 'unknown')[:12]} vs {(second or 'unknown')[:12]}"
            )
    return differences


def environment_mismatch(records: Mapping[str, Mapping[str, Any] | None]) -> str | None:
    """The first run of ``records`` (name -> record) whose environment differs from the first
    run's in what changes numbers, as one line naming both runs and the differences; None when
    all agree."""
    names = list(records)
    first = names[0] if names else None
    for name in names[1:]:
        differences = numeric_differences(records[first], records[name])
        if differences:
            missing = [n for n in (first, name) if not records[n]]
            if missing:
                differences = [f"no environment recorded for {' and '.join(missing)}"]
            return f"{first} and {name} differ: {'; '.join(differences)}"
    return None

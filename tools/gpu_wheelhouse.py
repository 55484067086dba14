#!/usr/bin/env python3
"""The wheels the GPU machine lacks, built here for its Python, and installed there offline.

The GPU machine (benchmarks/README.md, "GPU check") runs CPython 3.12 on manylinux x86-64 with
its own torch, torchvision, numpy, matplotlib, scikit-learn, pytest and hypothesis, and cannot
reach any registry; detectron2 and the packages below are not there. Three commands:

``build --dest DIR`` (here, with the registry; ``make gpu-wheelhouse``)
    downloads the wheels of :data:`PINNED` for CPython 3.12 manylinux x86-64 (the pure-Python
    ones that the registry has only as sdists are built here), builds detectron2 v0.6 as a
    pure-Python wheel from the sdist that ``tools/install_detectron2.py`` pins, checks that each
    wheel installs on that Python and that every requirement of the wheels and of det-scaling is
    met by the wheelhouse or by what the GPU machine already has (:data:`GPU_MACHINE_HAS`), and
    writes ``MANIFEST.json``. Refuses a wheelhouse over :data:`SIZE_LIMIT`.
``install --wheelhouse DIR --target SITE`` (there, offline)
    installs with ``pip --no-index --no-deps --target SITE`` the wheels whose distribution this
    Python lacks or has at a version the requirements refuse; the machine's own packages, torch
    first, stay as they are. Put SITE first on ``PYTHONPATH`` afterwards.
``check [--wheelhouse DIR]`` (with SITE on ``PYTHONPATH``)
    checks that det-scaling's requirements and those of the wheelhouse's distributions are met
    here, and imports det_scaling, detectron2 and its stack; prints what came from where.

Uses the standard library, pip and ``packaging`` (which pip, setuptools and the GPU machine have).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterable
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip's own copy of the same parser
    from pip._vendor import tomli as tomllib

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WHEELHOUSE = REPO / ".gpu-wheelhouse"
MANIFEST = "MANIFEST.json"
SIZE_LIMIT = 40 * 1024 * 1024  # the repository, what is carried and the results share 64 MiB

# The GPU machine's interpreter and platform.
PYTHON_VERSION = (3, 12)
# manylinux_2_17 (manylinux2014) to 2_39: Python 3.12.3 there is Ubuntu 24.04's (glibc 2.39).
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(39, 16, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]
MARKER_ENVIRONMENT = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "implementation_version": "3.12.3",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
}

# What the wheelhouse holds, at the versions det-scaling is tested with here (the project's
# .venv). "sdist": the registry has no wheel of that version; it is pure Python and built here.
PINNED: dict[str, tuple[str, str]] = {
    "fvcore": ("0.1.5.post20221221", "sdist"),
    "iopath": ("0.1.9", "wheel"),
    "yacs": ("0.1.8", "wheel"),
    "omegaconf": ("2.3.1", "wheel"),
    "hydra-core": ("1.3.8", "wheel"),
    "antlr4-python3-runtime": ("4.9.3", "sdist"),
    "pycocotools": ("2.0.11", "wheel"),  # compiled: the cp312 manylinux wheel
    "termcolor": ("3.3.0", "wheel"),
    # det-scaling needs setuptools<81 (detectron2's model zoo imports pkg_resources); installed
    # there only when the machine's own is 81 or later.
    "setuptools": ("80.10.2", "wheel"),
}
DETECTRON2 = "detectron2"

# Packages the GPU machine has (tools' device notes, KINDS.md, read 2026-11-17) that the
# wheelhouse's wheels or det-scaling require: their versions there are not known here, so only
# their presence is relied on (``check`` there verifies the versions).
GPU_MACHINE_HAS = frozenset(
    canonicalize_name(name)
    for name in (
        "torch",
        "torchvision",
        "numpy",
        "pillow",
        "matplotlib",
        "pyyaml",
        "tqdm",
        "tabulate",
        "portalocker",
        "packaging",
        "typing-extensions",
        "cloudpickle",
        "tensorboard",
        "scikit-learn",
        "setuptools",
        "pytest",
        "hypothesis",
    )
)
# Imported by ``check``: det-scaling, detectron2 and the modules the wheelhouse brings.
IMPORTS = (
    "torch",
    "torchvision",
    "det_scaling",
    "detectron2",
    "detectron2.model_zoo",
    "fvcore",
    "iopath",
    "yacs",
    "omegaconf",
    "hydra",
    "pycocotools.mask",
    "termcolor",
    "pkg_resources",
)


class WheelhouseError(RuntimeError):
    """The wheelhouse cannot be built, installed or trusted; the message says why."""


def _log(message: str) -> None:
    print(f"[gpu_wheelhouse] {message}", flush=True)


def _pip(*args: str, shown: str | None = None) -> None:
    """Runs this Python's pip; logs the command (or ``shown`` in its place)."""
    command = [sys.executable, "-m", "pip", *args]
    _log(shown or " ".join(command))
    subprocess.run(command, check=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------ wheel metadata ----
def target_tags() -> set[Tag]:
    """Every tag a wheel may carry to install on the GPU machine's CPython 3.12."""
    tags = set(cpython_tags(PYTHON_VERSION, platforms=PLATFORMS))
    tags |= set(compatible_tags(PYTHON_VERSION, "cp312", PLATFORMS))
    return tags


def installs_on_target(wheel: Path) -> bool:
    """Whether ``wheel``'s file name says it installs on CPython 3.12 manylinux x86-64."""
    _, _, _, tags = parse_wheel_filename(wheel.name)
    return bool(tags & target_tags())


def wheel_metadata(wheel: Path) -> tuple[str, str, list[str]]:
    """A wheel's distribution name, version and ``Requires-Dist`` lines (from its METADATA)."""
    with zipfile.ZipFile(wheel) as archive:
        # The wheel's own, at its top: setuptools' wheel also holds those of what it vendors.
        names = [
            n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
        ]
        if len(names) != 1:
            raise WheelhouseError(f"{wheel.name}: no single .dist-info/METADATA in it")
        text = archive.read(names[0]).decode("utf-8")
    headers = HeaderParser().parsestr(text)
    return headers["Name"], headers["Version"], headers.get_all("Requires-Dist") or []


def applicable(requirements: Iterable[str], environment: dict[str, str]) -> list[Requirement]:
    """The requirements whose markers hold in ``environment`` (no extras requested)."""
    out = []
    for line in requirements:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or marker.evaluate({**environment, "extra": ""}):
            out.append(requirement)
    return out


def project_requirements() -> list[str]:
    """det-scaling's run-time dependencies, from its pyproject.toml."""
    with (REPO / "pyproject.toml").open("rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def unmet_in_wheelhouse(
    wheels: Iterable[Path], requirements: Iterable[str], machine_has: frozenset[str]
) -> list[str]:
    """What the wheels' requirements and ``requirements`` need on the GPU machine that neither a
    wheel (at a version the requirement accepts) nor ``machine_has`` provides, one line each."""
    provided: dict[str, tuple[Version, str]] = {}
    needs: list[tuple[str, str]] = [("det-scaling", line) for line in requirements]
    for wheel in wheels:
        name, version, requires = wheel_metadata(wheel)
        provided[canonicalize_name(name)] = (Version(version), wheel.name)
        needs += [(wheel.name, line) for line in requires]
    environment = {**default_environment(), **MARKER_ENVIRONMENT}
    problems = []
    for who, line in needs:
        for requirement in applicable([line], environment):
            name = canonicalize_name(requirement.name)
            if name in provided:
                version, file = provided[name]
                if not requirement.specifier.contains(version, prereleases=True):
                    problems.append(f"{who} needs {requirement}, the wheelhouse has {file}")
            elif name not in machine_has:
                problems.append(f"{who} needs {requirement}: neither in the wheelhouse nor there")
    return problems


# ---------------------------------------------------------------------------------- build ----
def _download_wheel(name: str, version: str, dest: Path) -> None:
    platforms = [flag for platform in PLATFORMS for flag in ("--platform", platform)]
    _pip(
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        ".".join(map(str, PYTHON_VERSION)),
        "--implementation",
        "cp",
        *platforms,
        "--dest",
        str(dest),
        f"{name}=={version}",
        shown=f"pip download {name}=={version} (a wheel for CPython 3.12 manylinux x86-64)",
    )


def _build_from_sdist(name: str, version: str, dest: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="gpu-wheelhouse-sdist-") as tmp:
        _pip(
            "download", "--quiet", "--no-deps", "--no-binary=:all:", "-d", tmp, f"{name}=={version}"
        )
        (sdist,) = Path(tmp).iterdir()
        # This environment's setuptools builds it: no download of build tools, and the result
        # is pure Python (checked against the target's tags below).
        _pip("wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(dest), str(sdist))


def _detectron2_wheel(dest: Path, index_url: str) -> Path:
    spec = importlib.util.spec_from_file_location(
        "install_detectron2", REPO / "tools" / "install_detectron2.py"
    )
    installer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(installer)
    sdist = installer.fetch_sdist(index_url)  # its sha256 checked against the pin
    return installer.build_wheel_from_sdist(sdist, dest)


def build(dest: Path, index_url: str) -> dict[str, Any]:
    """Makes the wheelhouse in ``dest`` (replacing one there); returns its manifest."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    sources = {}
    for name, (version, kind) in PINNED.items():
        before = set(dest.iterdir())
        if kind == "wheel":
            _download_wheel(name, version, dest)
            sources[name] = "the registry's wheel"
        else:
            _build_from_sdist(name, version, dest)
            sources[name] = "built here from the registry's sdist (pure Python)"
        (new,) = set(dest.iterdir()) - before
        if wheel_metadata(new)[1] != version:
            raise WheelhouseError(f"{new.name}: expected {name} {version}")
    detectron2 = _detectron2_wheel(dest, index_url)
    sources[DETECTRON2] = (
        "built here from the registry's pb1-detectron2==0.6 sdist (sha256 pinned in "
        "tools/install_detectron2.py), as that installer installs it"
    )
    wheels = sorted(dest.glob("*.whl"))
    wrong = [w.name for w in wheels if not installs_on_target(w)]
    if wrong:
        raise WheelhouseError(f"not installable on CPython 3.12 manylinux x86-64: {wrong}")
    problems = unmet_in_wheelhouse(wheels, project_requirements(), GPU_MACHINE_HAS)
    if problems:
        raise WheelhouseError("requirements not met there:\n  " + "\n  ".join(problems))
    manifest = manifest_of(wheels, sources)
    manifest["detectron2"] = detectron2.name
    if manifest["total_bytes"] > SIZE_LIMIT:
        raise WheelhouseError(
            f"{manifest['total_bytes'] / 2**20:.1f} MiB, over the {SIZE_LIMIT / 2**20:.0f} MiB cap"
        )
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def manifest_of(wheels: list[Path], sources: dict[str, str]) -> dict[str, Any]:
    """The manifest of ``wheels``: each file's distribution, version, size, sha256 and where it
    came from (``sources``, by canonical name), and their total size."""
    entries = []
    for wheel in wheels:
        name, version, _ = wheel_metadata(wheel)
        key = canonicalize_name(name)
        entries.append(
            {
                "file": wheel.name,
                "name": key,
                "version": version,
                "bytes": wheel.stat().st_size,
                "sha256": _sha256(wheel),
                "source": sources.get(key, ""),
            }
        )
    return {
        "python": "CPython 3.12, manylinux x86-64",
        "wheels": entries,
        "total_bytes": sum(entry["bytes"] for entry in entries),
        "gpu_machine_has": sorted(GPU_MACHINE_HAS),
    }


# -------------------------------------------------------------------------------- install ----
def read_manifest(wheelhouse: Path) -> dict[str, Any]:
    """The wheelhouse's manifest, each file's size and sha256 checked (a truncated copy fails)."""
    path = wheelhouse / MANIFEST
    if not path.is_file():
        raise WheelhouseError(
            f"no {MANIFEST} in {wheelhouse}: run `make gpu-wheelhouse` where the registry is "
            "reachable, and carry the folder beside the checkout"
        )
    manifest = json.loads(path.read_text())
    for entry in manifest["wheels"]:
        wheel = wheelhouse / entry["file"]
        if not wheel.is_file() or _sha256(wheel) != entry["sha256"]:
            raise WheelhouseError(f"{wheel}: missing or not the file the manifest lists")
    return manifest


def _installed_version(name: str) -> Version | None:
    try:
        return Version(importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
        return None


def plan_install(wheelhouse: Path, manifest: dict[str, Any]) -> tuple[list[Path], list[str]]:
    """The wheels to install here, and a line for each distribution kept as this Python has it:
    one is kept when it is installed at a version that every requirement on it (det-scaling's
    and the wheelhouse's, markers evaluated for this Python) accepts."""
    wheels = [wheelhouse / entry["file"] for entry in manifest["wheels"]]
    lines = list(project_requirements())
    for wheel in wheels:
        lines += wheel_metadata(wheel)[2]
    specifiers: dict[str, list[Requirement]] = {}
    for requirement in applicable(lines, default_environment()):
        specifiers.setdefault(canonicalize_name(requirement.name), []).append(requirement)
    chosen, kept = [], []
    for wheel, entry in zip(wheels, manifest["wheels"], strict=True):
        installed = _installed_version(entry["name"])
        wanted = specifiers.get(entry["name"], [])
        if installed is not None and all(
            r.specifier.contains(installed, prereleases=True) for r in wanted
        ):
            kept.append(f"kept {entry['name']} {installed} (this machine's)")
        else:
            chosen.append(wheel)
    return chosen, kept


def install(wheelhouse: Path, target: Path) -> list[str]:
    """Installs into ``target``, offline, the wheels this Python needs; returns what was done."""
    manifest = read_manifest(wheelhouse)
    chosen, kept = plan_install(wheelhouse, manifest)
    if chosen:
        _pip(
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--upgrade",
            "--target",
            str(target),
            *map(str, chosen),
        )
    return kept + [f"installed {wheel.name} into {target}" for wheel in chosen]


# ---------------------------------------------------------------------------------- check ----
def unmet_here(wheelhouse: Path | None) -> list[str]:
    """What det-scaling, or a distribution of the wheelhouse installed here, requires that this
    environment lacks or has at a refused version, one line each."""
    needs = [("det-scaling", line) for line in project_requirements()]
    if wheelhouse is not None and (wheelhouse / MANIFEST).is_file():
        for entry in json.loads((wheelhouse / MANIFEST).read_text())["wheels"]:
            try:
                requires = importlib.metadata.requires(entry["name"]) or []
            except importlib.metadata.PackageNotFoundError:
                continue  # det-scaling's own lines say whether it was needed
            needs += [(entry["name"], line) for line in requires]
    problems = []
    for who, line in needs:
        for requirement in applicable([line], default_environment()):
            installed = _installed_version(requirement.name)
            if installed is None:
                problems.append(f"{who} needs {requirement}: not installed")
            elif not requirement.specifier.contains(installed, prereleases=True):
                problems.append(f"{who} needs {requirement}: {installed} is installed")
    return problems


def environment_report(wheelhouse: Path | None) -> dict[str, Any]:
    """The requirements check, and each module of :data:`IMPORTS` imported: its version and
    file, or the error."""
    modules: dict[str, Any] = {}
    distributions = importlib.metadata.packages_distributions()
    for name in IMPORTS:
        try:
            with warnings.catch_warnings():
                # detectron2's model zoo imports pkg_resources, which warns that it is deprecated.
                warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
                module = importlib.import_module(name)
        except Exception as error:  # any import failure is a finding, not a crash
            modules[name] = {"error": f"{type(error).__name__}: {error}"}
            continue
        version = getattr(module, "__version__", None)
        if version is None:  # the version of the distribution that provides the package
            provider = distributions.get(name.split(".")[0], [None])[0]
            version = _installed_version(provider) if provider else ""
        modules[name] = {"version": str(version), "file": str(getattr(module, "__file__", ""))}
    return {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "unmet_requirements": unmet_here(wheelhouse),
        "modules": modules,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="make the wheelhouse (needs the registry)")
    build_parser.add_argument("--dest", type=Path, default=DEFAULT_WHEELHOUSE)
    build_parser.add_argument(
        "--index-url",
        default=os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple"),
        help="PEP 503 index of the detectron2 sdist (default: $PIP_INDEX_URL or PyPI)",
    )
    install_parser = commands.add_parser("install", help="install from it, offline")
    install_parser.add_argument("--wheelhouse", type=Path, default=DEFAULT_WHEELHOUSE)
    install_parser.add_argument("--target", type=Path, required=True)
    check_parser = commands.add_parser("check", help="requirements met, modules import")
    check_parser.add_argument("--wheelhouse", type=Path, default=DEFAULT_WHEELHOUSE)
    args = parser.parse_args(argv)

    try:
        if args.command == "build":
            manifest = build(args.dest, args.index_url)
            for entry in manifest["wheels"]:
                _log(f"{entry['bytes'] / 2**20:7.2f} MiB  {entry['file']}")
            _log(f"{manifest['total_bytes'] / 2**20:.2f} MiB in {len(manifest['wheels'])} wheels")
        elif args.command == "install":
            for line in install(args.wheelhouse, args.target):
                _log(line)
        else:
            report = environment_report(args.wheelhouse)
            for name, found in report["modules"].items():
                detail = found.get("error") or f"{found['version']} {found['file']}"
                _log(f"{name}: {detail}")
            for problem in report["unmet_requirements"]:
                _log(f"unmet: {problem}")
            failed = [n for n, f in report["modules"].items() if "error" in f]
            if failed or report["unmet_requirements"]:
                _log(
                    f"check failed: {len(failed)} import(s), "
                    f"{len(report['unmet_requirements'])} requirement(s)"
                )
                return 1
            _log(f"check passed: Python {report['python']} ({report['executable']})")
    except (WheelhouseError, subprocess.CalledProcessError) as error:
        _log(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

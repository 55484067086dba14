#!/usr/bin/env python3
"""The wheels the GPU machine lacks, fetched here for its Python by pip, and installed there
offline by pip.

The GPU machine (benchmarks/README.md, "GPU check") runs CPython 3.12 on manylinux x86-64 with
its own torch, torchvision, numpy, matplotlib, scikit-learn, pytest and hypothesis, and cannot
reach any registry; detectron2 and the packages below are not there. Three commands:

``build --dest DIR`` (here, with the registry; ``make gpu-wheelhouse``)
    ``pip download``s the wheels of :data:`PINNED` for CPython 3.12 manylinux x86-64 (``pip
    wheel`` builds the pure-Python ones that the registry has only as sdists), adds detectron2
    v0.6 as the pure-Python wheel that ``tools/install_detectron2.py`` makes of its pinned sdist,
    writes ``requirements.txt`` (each wheel pinned by version and sha256) and ``MANIFEST.json``,
    and has pip resolve, for that Python and platform, det-scaling's requirements and the
    wheels' own: all must come from the wheelhouse or from what the GPU machine already has
    (:data:`GPU_MACHINE_HAS`). Refuses a wheelhouse over :data:`SIZE_LIMIT`.
``install --wheelhouse DIR --target SITE`` (there, offline)
    pip resolves the wheelhouse's distributions against this Python's own packages (``--no-index
    --find-links DIR``): those installed at a version every requirement accepts are kept, torch
    and the rest of the machine's stack untouched; the others are installed with ``--target SITE
    --require-hashes``. Put SITE first on ``PYTHONPATH`` afterwards.
``check [--wheelhouse DIR]`` (with SITE on ``PYTHONPATH``)
    pip resolves det-scaling's requirements and the wheelhouse's distributions against what is
    installed, with no index: anything missing or refused is unmet. Then det_scaling, detectron2
    and its stack are imported; prints what came from where.

Uses the standard library, pip (23.x or later: ``--dry-run --report``) and ``packaging`` (which
pip, setuptools and the GPU machine have).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip's own copy of the same parser
    from pip._vendor import tomli as tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WHEELHOUSE = REPO / ".gpu-wheelhouse"
MANIFEST = "MANIFEST.json"
# Every wheel of the wheelhouse as ``name==version --hash=sha256:...``: pip's hash-checking mode.
REQUIREMENTS = "requirements.txt"
SIZE_LIMIT = 40 * 1024 * 1024  # the repository, what is carried and the results share 64 MiB

# The GPU machine's interpreter and platform, as pip's options for choosing wheels.
PYTHON_VERSION = "3.12"
# manylinux_2_17 (manylinux2014) to 2_39: Python 3.12.3 there is Ubuntu 24.04's (glibc 2.39).
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(39, 16, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]
TARGET_OPTIONS = [
    "--only-binary=:all:",
    "--python-version",
    PYTHON_VERSION,
    "--implementation",
    "cp",
    *(option for platform in PLATFORMS for option in ("--platform", platform)),
]

# What the wheelhouse holds, at the versions det-scaling is tested with here (the project's
# .venv), as pip's requirement lines. The registry's wheels for CPython 3.12 manylinux x86-64:
WHEELS = [
    "iopath==0.1.9",
    "yacs==0.1.8",
    "omegaconf==2.3.1",
    "hydra-core==1.3.8",
    "pycocotools==2.0.11",  # compiled: the cp312 manylinux wheel
    "termcolor==3.3.0",
    # det-scaling needs setuptools<81 (detectron2's model zoo imports pkg_resources); installed
    # there only when the machine's own is 81 or later.
    "setuptools==80.10.2",
]
# Pure Python, with no wheel of that version on the registry: built here from the sdist.
SDISTS = ["fvcore==0.1.5.post20221221", "antlr4-python3-runtime==4.9.3"]
DETECTRON2 = "detectron2"

# Packages the GPU machine has (tools' device notes, KINDS.md, read 2026-11-17) that the
# wheelhouse's wheels or det-scaling require: their versions there are not known here, so only
# their presence is relied on (``install`` and ``check`` there resolve against the versions).
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
        "scipy",  # scikit-learn's requirement
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
    """Runs this Python's pip, raising CalledProcessError when it fails; logs the command (or
    ``shown`` in its place)."""
    command = [sys.executable, "-m", "pip", *args]
    _log(shown or " ".join(command))
    subprocess.run(command, check=True)


def pip_resolve(*args: str) -> tuple[list[dict[str, Any]] | None, list[str]]:
    """What ``pip install --dry-run ARGS`` would install (its report's entries), or None and
    pip's error lines when it cannot resolve."""
    with tempfile.TemporaryDirectory(prefix="gpu-wheelhouse-report-") as tmp:
        report = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet"]
        command += ["--report", str(report), *args]
        done = subprocess.run(command, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            # pip's "Could not find a version" line repeats the "No matching distribution" one.
            errors = [
                line
                for line in done.stderr.splitlines()
                if line.startswith("ERROR") and "Could not find a version" not in line
            ]
            return None, errors or [f"pip exit {done.returncode}: {done.stderr.strip()}"]
        return json.loads(report.read_text())["install"], []


def _load_installer() -> Any:
    spec = importlib.util.spec_from_file_location(
        "install_detectron2", REPO / "tools" / "install_detectron2.py"
    )
    installer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(installer)
    return installer


def project_requirements() -> list[str]:
    """det-scaling's run-time dependencies, from its pyproject.toml."""
    with (REPO / "pyproject.toml").open("rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def _requirements_on(names: set[str], lines: list[str]) -> list[str]:
    """The requirement lines that name one of ``names`` (canonical)."""
    return [line for line in lines if canonicalize_name(Requirement(line).name) in names]


# ---------------------------------------------------------------------------------- build ----
def download_wheels(pins: list[str], dest: Path, index_options: list[str]) -> None:
    """``pip download``s the wheels of ``pins`` (``name==version``) for the GPU machine."""
    _pip(
        "download", "--quiet", "--no-deps", *TARGET_OPTIONS, *index_options,
        "--dest", str(dest), *pins,
        shown=f"pip download {' '.join(pins)} (wheels for CPython 3.12 manylinux x86-64)",
    )  # fmt: skip


def build_sdists(pins: list[str], dest: Path, index_options: list[str]) -> None:
    """``pip wheel``s the sdists of ``pins`` into ``dest``, with this environment's setuptools
    (no download of build tools; pure Python, which :func:`unmet_on_target` confirms)."""
    _pip(
        "wheel", "--quiet", "--no-deps", "--no-binary=:all:", "--no-build-isolation",
        *index_options, "--wheel-dir", str(dest), *pins,
    )  # fmt: skip


def write_requirements(wheelhouse: Path) -> dict[str, tuple[str, str]]:
    """Writes the wheelhouse's ``requirements.txt``; returns each wheel's file name, by its
    canonical distribution name, with its sha256."""
    wheels = sorted(wheelhouse.glob("*.whl"))
    hashes = _load_installer().sha256_of(*wheels) if wheels else []
    found, lines = {}, []
    for wheel, sha256 in zip(wheels, hashes, strict=True):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        found[name] = (wheel.name, sha256)
        lines.append(f"{name}=={version} --hash=sha256:{sha256}")
    (wheelhouse / REQUIREMENTS).write_text("\n".join(lines) + "\n")
    return found


def _pins(wheelhouse: Path) -> list[str]:
    """The wheelhouse's ``name==version`` lines, without their hashes."""
    lines = (wheelhouse / REQUIREMENTS).read_text().splitlines()
    return [line.split()[0] for line in lines if line.strip()]


def unmet_on_target(
    wheelhouse: Path,
    index_options: list[str],
    requirements: list[str],
    machine_has: frozenset[str],
) -> list[str]:
    """What pip, choosing for CPython 3.12 manylinux x86-64, needs besides the wheelhouse's
    wheels to install them and the ``requirements`` on distributions not in ``machine_has``
    (the index of ``index_options`` stands in for the GPU machine's packages): one line for each
    such distribution that ``machine_has`` lacks, or pip's errors when it cannot resolve."""
    pins = _pins(wheelhouse)
    provided = {canonicalize_name(pin.split("==")[0]) for pin in pins}
    ours = [
        line
        for line in requirements
        if canonicalize_name(Requirement(line).name) in provided
        or canonicalize_name(Requirement(line).name) not in machine_has
    ]
    with tempfile.TemporaryDirectory(prefix="gpu-wheelhouse-target-") as target:
        chosen, errors = pip_resolve(
            "--target", target, *TARGET_OPTIONS, "--find-links", str(wheelhouse),
            *index_options, *pins, *ours,
        )  # fmt: skip
    if chosen is None:
        return errors
    # A pinned name is the wheelhouse's version, wherever pip found that file.
    return [
        f"{item['metadata']['name']} {item['metadata']['version']} is needed there but is "
        "neither in the wheelhouse nor among the GPU machine's packages"
        for item in chosen
        if canonicalize_name(item["metadata"]["name"]) not in provided | machine_has
    ]


def build(dest: Path, index_url: str | None = None) -> dict[str, Any]:
    """Makes the wheelhouse in ``dest`` (replacing one there); returns its manifest."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    index_options = ["--index-url", index_url] if index_url else []
    download_wheels(WHEELS, dest, index_options)
    build_sdists(SDISTS, dest, index_options)
    installer = _load_installer()
    with tempfile.TemporaryDirectory(prefix="gpu-wheelhouse-sdist-") as tmp:
        try:
            sdist = installer.fetch_sdist(Path(tmp), index_url)  # hash-checked by pip
            detectron2 = installer.build_wheel_from_sdist(sdist, dest)
        except installer.InstallError as error:
            raise WheelhouseError(str(error)) from error
    built = "built here from the registry's sdist (pure Python)"
    sources = {canonicalize_name(Requirement(line).name): "the registry's wheel" for line in WHEELS}
    sources |= {canonicalize_name(Requirement(line).name): built for line in SDISTS}
    sources[DETECTRON2] = (
        "built here from the registry's pb1-detectron2==0.6 sdist (sha256 pinned in "
        "tools/install_detectron2.py), as that installer installs it"
    )
    files = write_requirements(dest)
    problems = unmet_on_target(dest, index_options, project_requirements(), GPU_MACHINE_HAS)
    if problems:
        raise WheelhouseError("requirements not met there:\n  " + "\n  ".join(problems))
    manifest = manifest_of(dest, files, sources)
    manifest["detectron2"] = detectron2.name
    if manifest["total_bytes"] > SIZE_LIMIT:
        raise WheelhouseError(
            f"{manifest['total_bytes'] / 2**20:.1f} MiB, over the {SIZE_LIMIT / 2**20:.0f} MiB cap"
        )
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def manifest_of(
    wheelhouse: Path, files: dict[str, tuple[str, str]], sources: dict[str, str]
) -> dict[str, Any]:
    """The manifest of the wheels ``files`` (as :func:`write_requirements` returns them): each
    file's distribution, version, size, sha256 and where it came from (``sources``, by canonical
    name), and their total size."""
    entries = []
    for name, (file, sha256) in sorted(files.items()):
        entries.append(
            {
                "file": file,
                "name": name,
                "version": str(parse_wheel_filename(file)[1]),
                "bytes": (wheelhouse / file).stat().st_size,
                "sha256": sha256,
                "source": sources.get(name, ""),
            }
        )
    return {
        "python": "CPython 3.12, manylinux x86-64",
        "requirements": REQUIREMENTS,
        "wheels": entries,
        "total_bytes": sum(entry["bytes"] for entry in entries),
        "gpu_machine_has": sorted(GPU_MACHINE_HAS),
    }


# -------------------------------------------------------------------------------- install ----
def read_manifest(wheelhouse: Path) -> dict[str, Any]:
    """The wheelhouse's manifest (its files' hashes are pip's to check, at install)."""
    path = wheelhouse / MANIFEST
    if not path.is_file() or not (wheelhouse / REQUIREMENTS).is_file():
        raise WheelhouseError(
            f"no {MANIFEST} and {REQUIREMENTS} in {wheelhouse}: run `make gpu-wheelhouse` where "
            "the registry is reachable, and carry the folder beside the checkout"
        )
    return json.loads(path.read_text())


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def install(wheelhouse: Path, target: Path) -> list[str]:
    """Installs into ``target``, offline, the wheels this Python needs; returns what was done."""
    manifest = read_manifest(wheelhouse)
    names = {entry["name"] for entry in manifest["wheels"]}
    wanted = sorted(names) + _requirements_on(names, project_requirements())
    chosen, errors = pip_resolve("--no-index", "--find-links", str(wheelhouse), *wanted)
    if chosen is None:
        raise WheelhouseError(
            "pip cannot install the wheelhouse on this Python:\n  " + "\n  ".join(errors)
        )
    to_install = {canonicalize_name(item["metadata"]["name"]) for item in chosen}
    lines = (wheelhouse / REQUIREMENTS).read_text().splitlines()
    pinned = [line for line in lines if canonicalize_name(line.split("==")[0]) in to_install]
    if pinned:
        with tempfile.TemporaryDirectory(prefix="gpu-wheelhouse-pins-") as tmp:
            requirements = Path(tmp) / REQUIREMENTS
            requirements.write_text("\n".join(pinned) + "\n")
            _pip(
                "install", "--quiet", "--no-index", "--find-links", str(wheelhouse),
                "--no-deps", "--require-hashes", "--no-compile", "--upgrade",
                "--target", str(target), "-r", str(requirements),
            )  # fmt: skip
    kept = [
        f"kept {entry['name']} {_installed_version(entry['name'])} (this machine's)"
        for entry in manifest["wheels"]
        if entry["name"] not in to_install
    ]
    installed = [
        f"installed {entry['file']} into {target}"
        for entry in manifest["wheels"]
        if entry["name"] in to_install
    ]
    return kept + installed


# ---------------------------------------------------------------------------------- check ----
def unmet_here(wheelhouse: Path | None) -> list[str]:
    """What det-scaling, or a distribution of the wheelhouse, requires that this environment
    lacks or has at a refused version: pip's errors when it resolves them with no index."""
    wanted = project_requirements()
    if wheelhouse is not None and (wheelhouse / MANIFEST).is_file():
        wanted += [
            entry["name"] for entry in json.loads((wheelhouse / MANIFEST).read_text())["wheels"]
        ]
    return pip_resolve("--no-index", *wanted)[1]


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
        default=None,
        help="package index for every download (default: pip's own: $PIP_INDEX_URL, pip.conf "
        "or PyPI)",
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

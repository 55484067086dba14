#!/usr/bin/env python3
"""Install detectron2 into the running Python environment, the way this machine allows.

detectron2 is not published on the package registry under its own name. In order of preference:

1. an importable detectron2 is kept as it is (a GPU cluster usually has a source build);
2. ``--source PATH`` (or ``$DETECTRON2_SOURCE``): an upstream checkout, or a source archive
   (``.tar.gz``, such as a snapshot of upstream main), is built with ``pip install
   --no-build-isolation``, which compiles its C++ (and, with CUDA, GPU) ops against the torch
   already installed here;
3. otherwise upstream main at the pinned commit :data:`UPSTREAM_COMMIT`, which pip downloads
   from its public repository and builds the same way, when that repository answers within
   :data:`UPSTREAM_TIMEOUT` seconds (a machine without access to it falls through at once);
4. otherwise the registry's ``pb1-detectron2==0.6`` sdist, a re-upload of upstream v0.6 whose
   Python files are identical to upstream's tag: ``pip download`` fetches it in hash-checking
   mode (a pinned sha256), and it is repacked and installed as the pure-Python distribution
   ``detectron2 0.6``. The sdist lacks the C++ sources
   (``detectron2/layers/csrc``), so its own ``setup.py`` cannot build; Faster R-CNN needs none of
   those ops (nms and ROIAlign come from torchvision). ``det_scaling.compat`` makes this v0.6
   work on today's numpy / Pillow / CPU-only torch.

Each path ends with one line saying what was installed and from where. A failed build says why
and what to do; from ``--source`` it is an error, from the pinned commit (not reachable, or
not built) it falls through to 4.

Uses only the standard library and pip, so it runs before det_scaling's dependencies exist.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST_NAME = "pb1-detectron2"
SDIST_VERSION = "0.6"
SDIST_FILE = f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
# pip's hash-checking mode refuses any other file under this name.
SDIST_REQUIREMENT = f"{SDIST_NAME}=={SDIST_VERSION} --hash=sha256:{SDIST_SHA256}"
# Upstream main as tested with this project (2026-06-06); GitHub serves any commit as an archive.
UPSTREAM_REPOSITORY = "https://github.com/facebookresearch/detectron2"
UPSTREAM_COMMIT = "02b5c4e295e990042a714712c21dc79b731e8833"
UPSTREAM_ARCHIVE_URL = f"{UPSTREAM_REPOSITORY}/archive/{UPSTREAM_COMMIT}.tar.gz"
# Seconds to wait for the repository before falling through to the registry's v0.6.
UPSTREAM_TIMEOUT = 10.0

# A minimal build description for the extracted Python package: no extension modules, and the
# model-zoo YAML files kept as package data (detectron2.model_zoo.get_config_file reads them).
_PYPROJECT = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "detectron2"
version = "0.6"
description = "detectron2 v0.6, Python files only (from the pb1-detectron2==0.6 sdist)"
requires-python = ">=3.7"

[tool.setuptools.packages.find]
include = ["detectron2*"]

[tool.setuptools.package-data]
"detectron2.model_zoo" = ["configs/**/*.yaml", "configs/**/*.py"]
"""


class InstallError(RuntimeError):
    """An install path failed; the message says why and what to do."""


def _log(msg: str) -> None:
    print(f"[install_detectron2] {msg}", flush=True)


def _pip(*args: str, env: dict[str, str] | None = None) -> None:
    """Runs this Python's pip, raising CalledProcessError when it fails; logs the command."""
    cmd = [sys.executable, "-m", "pip", *args]
    _log(" ".join(cmd))
    subprocess.run(cmd, check=True, env=env)


def sha256_of(*paths: Path) -> list[str]:
    """The sha256 of each file, as ``pip hash`` computes it for hash-checking mode."""
    cmd = [sys.executable, "-m", "pip", "hash", "--algorithm", "sha256", *map(str, paths)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return [line.split(":", 1)[1] for line in out.splitlines() if line.startswith("--hash=")]


def fetch_sdist(dest: Path, index_url: str | None = None) -> Path:
    """Downloads the pinned sdist into ``dest`` with pip, which refuses a file whose sha256 is
    not :data:`SDIST_SHA256`; returns its path. ``index_url`` replaces pip's configured index."""
    if importlib.util.find_spec("torch") is None:
        raise InstallError(
            f"downloading {SDIST_NAME} needs torch in this environment first (pip runs the "
            "sdist's setup.py, which imports torch, to read its version): pip install torch "
            "torchvision, then rerun"
        )
    dest.mkdir(parents=True, exist_ok=True)
    index = ["--index-url", index_url] if index_url else []
    with tempfile.TemporaryDirectory(prefix="detectron2-pin-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(SDIST_REQUIREMENT + "\n")
        try:
            # --no-build-isolation: the setup.py finds this environment's torch.
            _pip(
                "download", "--quiet", "--no-deps", "--no-binary=:all:", "--no-build-isolation",
                "--require-hashes", "--dest", str(dest), *index, "-r", str(requirements),
            )  # fmt: skip
        except subprocess.CalledProcessError as error:
            raise InstallError(
                f"downloading {SDIST_NAME}=={SDIST_VERSION} (sha256 {SDIST_SHA256[:16]}...) "
                f"failed (pip exit {error.returncode}; its output is above): check the network "
                "and the index (--index-url, or pip's own configuration), or build a detectron2 "
                "checkout with --source PATH"
            ) from error
    return dest / SDIST_FILE


def _python_package(sdist: Path, tmp: Path) -> Path:
    """The sdist's ``detectron2`` package extracted under ``tmp`` beside the build description
    above; returns the folder to build."""
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp, filter="data")
    source = tmp / f"{SDIST_NAME}-{SDIST_VERSION}" / "detectron2"
    build = tmp / "build"
    shutil.copytree(source, build / "detectron2")
    (build / "pyproject.toml").write_text(_PYPROJECT)
    return build


def _packaging_failed(sdist: Path, what: str, error: subprocess.CalledProcessError) -> InstallError:
    return InstallError(
        f"{what} detectron2 v0.6 from {sdist} failed (pip exit {error.returncode}; its output is "
        "above). It is packaged by this environment's setuptools (--no-build-isolation), which "
        "needs version 70.1 or later (or the wheel package): pip install 'setuptools>=70.1,<81', "
        "then rerun"
    )


def install_from_sdist(sdist: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="detectron2-py-") as tmp:
        build = _python_package(sdist, Path(tmp))
        try:
            _pip("install", "--quiet", "--no-deps", "--no-build-isolation", str(build))
        except subprocess.CalledProcessError as error:
            raise _packaging_failed(sdist, "installing", error) from error


def build_wheel_from_sdist(sdist: Path, dest: Path) -> Path:
    """What :func:`install_from_sdist` installs, as a pure-Python wheel written to ``dest``
    (``detectron2-0.6-py3-none-any.whl``), for a machine that cannot reach the registry; returns
    its path."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="detectron2-py-") as tmp:
        build = _python_package(sdist, Path(tmp))
        with tempfile.TemporaryDirectory(prefix="detectron2-wheel-") as out:
            try:
                _pip("wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", out, str(build))
            except subprocess.CalledProcessError as error:
                raise _packaging_failed(sdist, "building a wheel of", error) from error
            (wheel,) = Path(out).glob("detectron2-*.whl")
            target = dest / wheel.name
            shutil.move(str(wheel), target)
    return target


def _holds_checkout(archive: Path) -> bool:
    """Whether a source archive has a setup.py at its top or in its one top-level folder, the
    two layouts pip builds from."""
    with tarfile.open(archive) as tar:
        names = [name.strip("/") for name in tar.getnames()]
    return "setup.py" in names or any(n.count("/") == 1 and n.endswith("/setup.py") for n in names)


def build_from_source(source: Path | str, origin: str, pip_options: tuple[str, ...] = ()) -> str:
    """Builds and installs with pip the detectron2 checkout, source archive or archive URL
    ``source`` (``pip_options`` added to pip's); returns the description of ``origin`` for the
    summary line. Raises InstallError when it cannot."""
    if importlib.util.find_spec("torch") is None:
        raise InstallError(
            f"building {origin} needs torch in this environment first (the build compiles "
            "against it, with --no-build-isolation): pip install torch torchvision, then rerun"
        )
    if isinstance(source, str):  # a URL: pip downloads it
        _build(source, origin, pip_options)
        return origin
    if source.is_dir():
        if not (source / "setup.py").is_file():
            raise InstallError(
                f"{source}: no setup.py there; pass a detectron2 source checkout or its .tar.gz"
            )
        _build(str(source), origin, pip_options)
        return origin
    if not tarfile.is_tarfile(source):
        raise InstallError(
            f"{source}: neither a folder nor a .tar.gz archive; pass a detectron2 source "
            "checkout or its .tar.gz"
        )
    if not _holds_checkout(source):
        raise InstallError(
            "the archive holds no detectron2 checkout (no setup.py at its top or in its one "
            "top-level folder); pass a detectron2 source checkout or its .tar.gz"
        )
    _build(str(source), origin, pip_options)
    return f"{origin} (sha256 {sha256_of(source)[0]})"


def _build(source: str, origin: str, pip_options: tuple[str, ...]) -> None:
    _log(f"building detectron2 from {origin} (compiles its C++ ops: minutes)")
    # Without debug information, unless CFLAGS asks otherwise: the same ops in about 40% less
    # time (vision.cpp on these 2 cores: 373 s with Python's default -g, 221 s with -g0).
    env = {**os.environ, "CFLAGS": os.environ.get("CFLAGS", "-g0")}
    try:
        _pip("install", "--quiet", "--no-build-isolation", *pip_options, source, env=env)
    except subprocess.CalledProcessError as error:
        failed = f"pip exit {error.returncode}; its output is above"
        if "://" in source:
            raise InstallError(
                f"downloading or building detectron2 from {origin} failed ({failed}): the "
                "repository did not answer, or the build (a C++ compiler and torch) failed"
            ) from error
        raise InstallError(
            f"building detectron2 from {origin} failed ({failed}). The build needs a C++ "
            "compiler (g++ or clang; with CUDA, nvcc matching torch's CUDA) and torch in this "
            "environment. Fix that and rerun with --force, or install the registry's v0.6 "
            "instead: rerun without --source and $DETECTRON2_SOURCE"
        ) from error


def describe_installed() -> str:
    """What ``import detectron2`` finds: version, kind, compiled ops or not, and place. Read from
    its files, not imported, so it works before detectron2's own dependencies are installed."""
    importlib.invalidate_caches()
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        raise InstallError(
            "pip reported success but detectron2 is not importable from this Python "
            f"({sys.executable}); check that pip and this Python are the same environment"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    try:
        version = importlib.metadata.version("detectron2")
    except importlib.metadata.PackageNotFoundError:
        version = "(no version metadata)"
    # Upstream main still says 0.6: tell it by a config key v0.6 lacks.
    defaults = package / "config" / "defaults.py"
    upstream = defaults.is_file() and "RESCALE_INTERVAL" in defaults.read_text(encoding="utf-8")
    kind = "upstream main" if upstream else "v0.6"
    ops = "with its compiled ops" if any(package.glob("_C.*")) else "pure Python, no compiled ops"
    return f"detectron2 {version} ({kind}, {ops}) at {package}"


def _install(args: argparse.Namespace) -> str:
    """Runs the first install path that applies; returns where detectron2 came from."""
    if args.source:
        source = Path(args.source).expanduser().resolve()
        if not source.exists():
            raise InstallError(f"--source {source}: no such file or folder")
        kind = "checkout" if source.is_dir() else "source archive"
        return build_from_source(source, f"the {kind} {source}")
    if args.upstream:
        origin = f"upstream main at {UPSTREAM_COMMIT[:12]} ({args.upstream_url})"
        # One try: a repository that does not answer within the timeout is skipped at once.
        timeout = ("--timeout", f"{args.upstream_timeout:g}", "--retries", "0")
        try:
            return build_from_source(args.upstream_url, origin, timeout)
        except InstallError as error:
            _log(f"{error}; falling back to the registry's v0.6")
    with tempfile.TemporaryDirectory(prefix="detectron2-sdist-") as tmp:
        install_from_sdist(fetch_sdist(Path(tmp), args.index_url))
    index = args.index_url or "pip's configured index"
    return (
        f"{SDIST_FILE} on {index} (sha256 {SDIST_SHA256[:16]}... verified by pip; "
        "det_scaling.compat adapts it)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source",
        default=os.environ.get("DETECTRON2_SOURCE") or None,
        help="an upstream detectron2 source checkout or .tar.gz to build and install "
        "(default: $DETECTRON2_SOURCE)",
    )
    parser.add_argument(
        "--no-upstream",
        dest="upstream",
        action="store_false",
        help=f"do not try upstream main at {UPSTREAM_COMMIT[:12]} from {UPSTREAM_REPOSITORY}",
    )
    parser.add_argument(
        "--upstream-url",
        default=UPSTREAM_ARCHIVE_URL,
        help="where to download upstream main at the pinned commit (default: its repository)",
    )
    parser.add_argument(
        "--upstream-timeout",
        type=float,
        default=UPSTREAM_TIMEOUT,
        help=f"seconds to wait for {UPSTREAM_REPOSITORY} (default: {UPSTREAM_TIMEOUT:g})",
    )
    parser.add_argument(
        "--index-url",
        default=None,
        help=f"package index to download {SDIST_FILE} from (default: pip's own: $PIP_INDEX_URL, "
        "pip.conf or PyPI)",
    )
    parser.add_argument(
        "--force", action="store_true", help="reinstall even if detectron2 is importable"
    )
    args = parser.parse_args(argv)

    try:
        if importlib.util.find_spec("detectron2") is not None and not args.force:
            _log(f"kept {describe_installed()}: already installed (--force replaces it)")
            return 0
        origin = _install(args)
        _log(f"installed {describe_installed()} from {origin}")
    except InstallError as error:
        _log(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

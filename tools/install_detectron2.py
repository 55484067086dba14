#!/usr/bin/env python3
"""Install detectron2 into the running Python environment, the way this machine allows.

detectron2 is not published on the package registry under its own name. In order of preference:

1. an importable detectron2 is kept as it is (a GPU cluster usually has a source build);
2. ``--source PATH`` (or ``$DETECTRON2_SOURCE``): an upstream checkout, or a source archive
   (``.tar.gz``, such as a snapshot of upstream main), is built with ``pip install
   --no-build-isolation``, which compiles its C++ (and, with CUDA, GPU) ops against the torch
   already installed here;
3. otherwise upstream main at the pinned commit :data:`UPSTREAM_COMMIT`, downloaded from its
   public repository and built the same way, when that repository answers within
   :data:`UPSTREAM_TIMEOUT` seconds (a machine without access to it falls through at once);
4. otherwise the registry's ``pb1-detectron2==0.6`` sdist, a re-upload of upstream v0.6 whose
   Python files are identical to upstream's tag, checked against a pinned sha256 and installed
   as the pure-Python distribution ``detectron2 0.6``. The sdist lacks the C++ sources
   (``detectron2/layers/csrc``), so its own ``setup.py`` cannot build; Faster R-CNN needs none of
   those ops (nms and ROIAlign come from torchvision). ``det_scaling.compat`` makes this v0.6
   work on today's numpy / Pillow / CPU-only torch.

Each path ends with one line saying what was installed and from where. A failed build says why
and what to do; from ``--source`` it is an error, from the pinned commit it falls through to 4.

Uses only the standard library and pip, so it runs before det_scaling's dependencies exist.
"""

from __future__ import annotations

import argparse
import hashlib
import html.parser
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

SDIST_NAME = "pb1-detectron2"
SDIST_VERSION = "0.6"
SDIST_FILE = f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
DEFAULT_INDEX = "https://pypi.org/simple"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "det-scaling"
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


class _LinkParser(html.parser.HTMLParser):
    """Collects the href of every <a> in a PEP 503 'simple' project page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.links.append(href)


def _log(msg: str) -> None:
    print(f"[install_detectron2] {msg}", flush=True)


def _pip(*args: str, env: dict[str, str] | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    _log(" ".join(cmd))
    subprocess.run(cmd, check=True, env=env)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sdist_url(index_url: str) -> str:
    page_url = f"{index_url.rstrip('/')}/{SDIST_NAME}/"
    with urllib.request.urlopen(page_url, timeout=60) as response:
        parser = _LinkParser()
        parser.feed(response.read().decode("utf-8"))
    for href in parser.links:
        url = urllib.parse.urljoin(page_url, href)
        if urllib.parse.urlparse(url).path.endswith("/" + SDIST_FILE):
            return url.split("#", 1)[0]
    raise RuntimeError(f"{SDIST_FILE} is not listed on {page_url}")


def fetch_sdist(index_url: str) -> Path:
    """Returns the path of the verified sdist, downloading it into the cache if needed."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    target = CACHE_DIR / SDIST_FILE
    if target.exists() and _sha256(target) == SDIST_SHA256:
        _log(f"using cached {target}")
        return target
    url = _sdist_url(index_url)
    _log(f"downloading {url}")
    partial = target.with_suffix(".part")
    with urllib.request.urlopen(url, timeout=300) as response, partial.open("wb") as f:
        shutil.copyfileobj(response, f)
    actual = _sha256(partial)
    if actual != SDIST_SHA256:
        partial.unlink()
        raise RuntimeError(
            f"{SDIST_FILE}: sha256 {actual} does not match the pinned {SDIST_SHA256}; refusing "
            "to install it"
        )
    partial.replace(target)
    return target


class InstallError(RuntimeError):
    """An install path failed; the message says why and what to do."""


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


def _checkout_in(root: Path) -> Path:
    """The detectron2 checkout in an extracted archive: ``root`` or its one top-level folder."""
    if (root / "setup.py").is_file():
        return root
    folders = [p for p in root.iterdir() if p.is_dir()]
    if len(folders) == 1 and (folders[0] / "setup.py").is_file():
        return folders[0]
    raise InstallError(
        "the archive holds no detectron2 checkout (no setup.py at its top or in its one "
        "top-level folder); pass a detectron2 source checkout or its .tar.gz"
    )


def build_from_source(source: Path, origin: str) -> str:
    """Builds and installs the detectron2 checkout or source archive ``source``; returns the
    description of ``origin`` for the summary line. Raises InstallError when it cannot."""
    if importlib.util.find_spec("torch") is None:
        raise InstallError(
            f"building {origin} needs torch in this environment first (the build compiles "
            "against it, with --no-build-isolation): pip install torch torchvision, then rerun"
        )
    if source.is_dir():
        if not (source / "setup.py").is_file():
            raise InstallError(
                f"{source}: no setup.py there; pass a detectron2 source checkout or its .tar.gz"
            )
        _build(source, origin)
        return origin
    if not tarfile.is_tarfile(source):
        raise InstallError(
            f"{source}: neither a folder nor a .tar.gz archive; pass a detectron2 source "
            "checkout or its .tar.gz"
        )
    with tempfile.TemporaryDirectory(prefix="detectron2-src-") as tmp:
        with tarfile.open(source) as tar:
            tar.extractall(tmp, filter="data")
        _build(_checkout_in(Path(tmp)), origin)
    return f"{origin} (sha256 {_sha256(source)})"


def _build(checkout: Path, origin: str) -> None:
    _log(f"building detectron2 from {origin} (compiles its C++ ops: minutes)")
    # Without debug information, unless CFLAGS asks otherwise: the same ops in about 40% less
    # time (vision.cpp on these 2 cores: 373 s with Python's default -g, 221 s with -g0).
    env = {**os.environ, "CFLAGS": os.environ.get("CFLAGS", "-g0")}
    try:
        _pip("install", "--quiet", "--no-build-isolation", str(checkout), env=env)
    except subprocess.CalledProcessError as error:
        raise InstallError(
            f"building detectron2 from {origin} failed (pip exit {error.returncode}; its output "
            "is above). The build needs a C++ compiler (g++ or clang; with CUDA, nvcc matching "
            "torch's CUDA) and torch in this environment. Fix that and rerun with --force, or "
            "install the registry's v0.6 instead: rerun without --source and $DETECTRON2_SOURCE"
        ) from error


def fetch_upstream(url: str = UPSTREAM_ARCHIVE_URL, timeout: float = UPSTREAM_TIMEOUT) -> Path:
    """The archive of upstream main at the pinned commit, from the cache or downloaded from
    ``url``. Raises OSError (URLError, a timeout) when the repository does not answer."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    target = CACHE_DIR / f"detectron2-{UPSTREAM_COMMIT}.tar.gz"
    if target.exists() and tarfile.is_tarfile(target):
        _log(f"using cached {target}")
        return target
    partial = target.with_suffix(".part")
    with urllib.request.urlopen(url, timeout=timeout) as response, partial.open("wb") as f:
        shutil.copyfileobj(response, f)
    partial.replace(target)
    return target


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
        try:
            archive = fetch_upstream(args.upstream_url, args.upstream_timeout)
        except OSError as error:
            reason = getattr(error, "reason", error)
            _log(
                f"upstream detectron2 {UPSTREAM_COMMIT[:12]} not reachable at "
                f"{args.upstream_url} ({reason}); falling back to the registry's v0.6"
            )
        else:
            origin = f"upstream main at {UPSTREAM_COMMIT[:12]} ({args.upstream_url})"
            try:
                return build_from_source(archive, origin)
            except InstallError as error:
                _log(f"{error}; falling back to the registry's v0.6")
    try:
        sdist = fetch_sdist(args.index_url)
    except OSError as error:
        raise InstallError(
            f"cannot download {SDIST_FILE} from {args.index_url} "
            f"({getattr(error, 'reason', error)}): check the network or pass --index-url "
            "(or $PIP_INDEX_URL), or build a detectron2 checkout with --source PATH"
        ) from error
    install_from_sdist(sdist)
    return (
        f"{SDIST_FILE} on {args.index_url} (sha256 {SDIST_SHA256[:16]}... verified; "
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
        default=os.environ.get("PIP_INDEX_URL", DEFAULT_INDEX),
        help=f"PEP 503 index to fetch {SDIST_FILE} from (default: $PIP_INDEX_URL or "
        f"{DEFAULT_INDEX})",
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
    except RuntimeError as error:  # InstallError, or fetch_sdist's refusals
        _log(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Install detectron2 into the running Python environment, the way this machine allows.

detectron2 is not published on the package registry under its own name. In order of preference:

1. an importable detectron2 is kept as it is (a GPU cluster usually has a source build);
2. ``--source PATH`` (or ``$DETECTRON2_SOURCE``) installs an upstream source checkout with
   ``pip install --no-build-isolation PATH``, which compiles its C++/CUDA ops;
3. otherwise the registry's ``pb1-detectron2==0.6`` sdist, a re-upload of upstream v0.6 whose
   Python files are identical to upstream's tag, is downloaded, checked against a pinned sha256
   and installed as the pure-Python distribution ``detectron2 0.6``. The sdist lacks the C++
   sources (``detectron2/layers/csrc``), so its own ``setup.py`` cannot build; Faster R-CNN needs
   none of those ops (nms and ROIAlign come from torchvision). ``det_scaling.compat`` makes this
   v0.6 work on today's numpy / Pillow / CPU-only torch.

Uses only the standard library and pip, so it runs before det_scaling's dependencies exist.
"""

from __future__ import annotations

import argparse
import hashlib
import html.parser
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


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    _log(" ".join(cmd))
    subprocess.run(cmd, check=True)


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


def install_from_sdist(sdist: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="detectron2-py-") as tmp:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        source = Path(tmp) / f"{SDIST_NAME}-{SDIST_VERSION}" / "detectron2"
        build = Path(tmp) / "build"
        shutil.copytree(source, build / "detectron2")
        (build / "pyproject.toml").write_text(_PYPROJECT)
        _pip("install", "--no-deps", "--no-build-isolation", str(build))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source",
        default=os.environ.get("DETECTRON2_SOURCE"),
        help="an upstream detectron2 source checkout to build and install "
        "(default: $DETECTRON2_SOURCE)",
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

    spec = importlib.util.find_spec("detectron2")
    if spec is not None and not args.force:
        _log(f"detectron2 already installed at {Path(spec.origin).parent}; keeping it")
        return 0
    if args.source:
        source = Path(args.source).expanduser().resolve()
        if not (source / "setup.py").is_file():
            parser.error(f"--source {source}: no setup.py there (expected a detectron2 checkout)")
        _pip("install", "--no-build-isolation", str(source))
    else:
        install_from_sdist(fetch_sdist(args.index_url))
    _log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())

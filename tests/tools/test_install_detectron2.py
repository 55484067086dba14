"""tools/install_detectron2.py: the order of its paths (kept install, --source, the pinned
upstream commit, the registry's v0.6), pip's hash check of the pinned sdist, the repacking of
that sdist, and what each failure says. pip runs for real, on a local folder in place of the
registry; nothing is installed: every install path is driven to a refusal or a failed build."""

from __future__ import annotations

import importlib.util
import io
import socket
import tarfile
import time
import zipfile

import pytest
from helpers import REPO


@pytest.fixture
def installer(monkeypatch):
    # `make test-upstream` runs the suite with DETECTRON2_SOURCE set; here it would build that.
    monkeypatch.delenv("DETECTRON2_SOURCE", raising=False)
    spec = importlib.util.spec_from_file_location(
        "install_detectron2", REPO / "tools" / "install_detectron2.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sdist_bytes(files: dict[str, str], top: str = "pb1-detectron2-0.6") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# A project that pip can describe without torch (the real sdist's setup.py imports it).
TINY_SDIST = {
    "setup.py": "from setuptools import setup\nsetup(name='pb1-detectron2', version='0.6', "
    "packages=['detectron2'])\n",
    "detectron2/__init__.py": "__version__ = '0.6'\n",
}


def test_pip_downloads_the_pinned_sdist_and_refuses_any_other(
    installer, tmp_path, local_index, monkeypatch, capfd
):
    (local_index / installer.SDIST_FILE).write_bytes(sdist_bytes(TINY_SDIST))
    # The pinned hash refuses this stand-in ...
    with pytest.raises(installer.InstallError, match=r"downloading pb1-detectron2==0\.6 .* failed"):
        installer.fetch_sdist(tmp_path / "refused")
    assert "DO NOT MATCH THE HASHES" in capfd.readouterr().err
    assert not (tmp_path / "refused" / installer.SDIST_FILE).exists()
    # ... and the same line with its own hash takes it.
    (sha256,) = installer.sha256_of(local_index / installer.SDIST_FILE)
    pin = f"{installer.SDIST_NAME}=={installer.SDIST_VERSION} --hash=sha256:{sha256}"
    monkeypatch.setattr(installer, "SDIST_REQUIREMENT", pin)
    sdist = installer.fetch_sdist(tmp_path / "taken")
    assert sdist.read_bytes() == (local_index / installer.SDIST_FILE).read_bytes()


def test_no_upstream_goes_straight_to_the_registry(installer, local_index, capfd):
    (local_index / installer.SDIST_FILE).write_bytes(sdist_bytes(TINY_SDIST))
    assert installer.main(["--force", "--no-upstream"]) == 1
    out, err = capfd.readouterr()
    assert installer.UPSTREAM_REPOSITORY not in out and "DO NOT MATCH THE HASHES" in err
    assert "error: downloading pb1-detectron2==0.6" in out and "--source PATH" in out


def test_a_missing_sdist_says_what_to_do(installer, tmp_path, local_index, capfd):
    with pytest.raises(installer.InstallError, match="check the network and the index"):
        installer.fetch_sdist(tmp_path / "none")
    assert "No matching distribution found for pb1-detectron2==0.6" in capfd.readouterr().err


def test_keeps_an_installed_detectron2(installer, capsys):
    assert installer.main([]) == 0
    out = capsys.readouterr().out
    assert "kept detectron2" in out and "already installed" in out


def test_source_must_be_a_detectron2_checkout(installer, tmp_path, capsys):
    assert installer.main(["--force", "--source", str(tmp_path)]) == 1
    assert "no setup.py there" in capsys.readouterr().out


def test_source_defaults_to_the_environment(installer, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DETECTRON2_SOURCE", str(tmp_path))
    assert installer.main(["--force"]) == 1
    assert f"{tmp_path}: no setup.py there" in capsys.readouterr().out


def test_a_source_archive_must_hold_a_checkout(installer, tmp_path, capsys):
    archive = tmp_path / "not-detectron2.tar.gz"
    archive.write_bytes(sdist_bytes({"README.md": ""}))
    assert installer.main(["--force", "--source", str(archive)]) == 1
    assert "holds no detectron2 checkout" in capsys.readouterr().out


def test_a_failed_build_says_why_and_what_to_do(installer, tmp_path, capfd):
    # The layout of upstream's archives: the checkout in one top-level folder.
    archive = tmp_path / "detectron2-broken.tar.gz"
    archive.write_bytes(
        sdist_bytes({"setup.py": "raise SystemExit('no compiler here')\n"}, "detectron2-broken")
    )
    assert installer.main(["--force", "--source", str(archive)]) == 1
    out, err = capfd.readouterr()
    assert "no compiler here" in err  # pip ran the archive's setup.py
    assert f"building detectron2 from the source archive {archive} failed (pip exit" in out
    assert "needs a C++ compiler" in out and "rerun without --source" in out


@pytest.fixture
def silent_port():
    """A port that accepts connections and never answers (a firewalled host, as seen by a
    client with a timeout)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


def test_an_unreachable_upstream_falls_through_to_the_registry_within_the_timeout(
    installer, local_index, silent_port, capfd
):
    # The registry then holds a bad sdist, so the fall-through is seen without installing.
    (local_index / installer.SDIST_FILE).write_bytes(sdist_bytes(TINY_SDIST))
    url = f"http://127.0.0.1:{silent_port}/detectron2.tar.gz"
    begin = time.monotonic()
    code = installer.main(["--force", "--upstream-url", url, "--upstream-timeout", "1"])
    assert time.monotonic() - begin < 20  # pip started twice, one try of 1 s
    assert code == 1
    out, err = capfd.readouterr()
    assert f"downloading or building detectron2 from upstream main at 02b5c4e295e9 ({url})" in out
    assert "falling back to the registry's v0.6" in out
    assert "Read timed out" in err or "timed out" in err
    assert out.index("falling back") < out.index("error: downloading pb1-detectron2")


def test_the_sdist_becomes_the_pure_python_wheel_it_would_install(installer, tmp_path):
    sdist = tmp_path / installer.SDIST_FILE
    sdist.write_bytes(
        sdist_bytes(
            {
                "detectron2/__init__.py": "__version__ = '0.6'\n",
                "detectron2/model_zoo/__init__.py": "",
                "detectron2/model_zoo/configs/Base-RCNN-FPN.yaml": "MODEL: {}\n",
            }
        )
    )
    wheel = installer.build_wheel_from_sdist(sdist, tmp_path / "wheels")
    assert wheel == tmp_path / "wheels" / "detectron2-0.6-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "detectron2/__init__.py" in names
    assert "detectron2/model_zoo/configs/Base-RCNN-FPN.yaml" in names  # package data kept

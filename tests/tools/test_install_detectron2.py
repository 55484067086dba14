"""tools/install_detectron2.py: the order of its paths (kept install, --source, the pinned
upstream commit, the registry's v0.6), index parsing, checksum refusal, and what each failure
says. Nothing here installs: every path is driven to a refusal or a failed build."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import io
import socket
import tarfile
import threading
import time
import zipfile

import pytest
from helpers import REPO


@pytest.fixture
def installer(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "install_detectron2", REPO / "tools" / "install_detectron2.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "CACHE_DIR", tmp_path / "cache")
    # `make test-upstream` runs the suite with DETECTRON2_SOURCE set; here it would build that.
    monkeypatch.delenv("DETECTRON2_SOURCE", raising=False)
    return module


@pytest.fixture
def serve(tmp_path):
    """Serves tmp_path over HTTP on the loopback interface; yields the base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def make_index(root, payload: bytes, name: str, base_url: str):
    """A PEP 503 index under root, served at base_url, listing one file."""
    files = root / "files"
    files.mkdir(parents=True)
    (files / name).write_bytes(payload)
    project = root / "simple" / "pb1-detectron2"
    project.mkdir(parents=True)
    (project / "index.html").write_text(
        f'<html><body><a href="../../files/{name}#sha256=0">{name}</a></body></html>'
    )
    return f"{base_url}/simple"


def tarball() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("pb1-detectron2-0.6/README.md")
        info.size = 0
        tar.addfile(info, io.BytesIO())
    return buffer.getvalue()


def test_finds_the_sdist_on_a_simple_index(installer, tmp_path, serve):
    index = make_index(tmp_path, b"x", installer.SDIST_FILE, serve)
    url = installer._sdist_url(index)
    assert url.endswith("/files/" + installer.SDIST_FILE)


def test_refuses_an_sdist_whose_checksum_differs(installer, tmp_path, serve):
    index = make_index(tmp_path, tarball(), installer.SDIST_FILE, serve)
    with pytest.raises(RuntimeError, match="does not match the pinned"):
        installer.fetch_sdist(index)
    assert not any((tmp_path / "cache").iterdir())  # nothing unverified is kept


def test_reports_a_missing_sdist(installer, tmp_path, serve):
    index = make_index(tmp_path, b"x", "something-else-1.0.tar.gz", serve)
    with pytest.raises(RuntimeError, match="is not listed"):
        installer.fetch_sdist(index)


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
    archive.write_bytes(tarball())
    assert installer.main(["--force", "--source", str(archive)]) == 1
    assert "holds no detectron2 checkout" in capsys.readouterr().out


def test_a_failed_build_says_why_and_what_to_do(installer, tmp_path, capsys):
    checkout = tmp_path / "detectron2-broken"
    checkout.mkdir()
    (checkout / "setup.py").write_text("raise SystemExit('no compiler here')\n")
    archive = tmp_path / "detectron2-broken.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(checkout, arcname=checkout.name)
    assert installer.main(["--force", "--source", str(archive)]) == 1
    out = capsys.readouterr().out
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
    installer, tmp_path, serve, silent_port, capsys
):
    # The registry then serves a bad sdist, so the fall-through is seen without installing.
    index = make_index(tmp_path, tarball(), installer.SDIST_FILE, serve)
    url = f"http://127.0.0.1:{silent_port}/detectron2.tar.gz"
    begin = time.monotonic()
    code = installer.main(
        ["--force", "--upstream-url", url, "--upstream-timeout", "1", "--index-url", index]
    )
    assert time.monotonic() - begin < 10
    assert code == 1
    out = capsys.readouterr().out
    assert f"not reachable at {url}" in out
    assert "falling back to the registry's v0.6" in out
    assert out.index("not reachable") < out.index("does not match the pinned")
    assert not (tmp_path / "cache" / f"detectron2-{installer.UPSTREAM_COMMIT}.tar.gz").exists()


def test_no_upstream_goes_straight_to_the_registry(installer, tmp_path, serve, capsys):
    index = make_index(tmp_path, tarball(), installer.SDIST_FILE, serve)
    assert installer.main(["--force", "--no-upstream", "--index-url", index]) == 1
    out = capsys.readouterr().out
    assert "not reachable" not in out and "does not match the pinned" in out


def test_the_pinned_upstream_archive_is_downloaded_once(installer, tmp_path, serve):
    (tmp_path / "upstream.tar.gz").write_bytes(tarball())
    archive = installer.fetch_upstream(f"{serve}/upstream.tar.gz", timeout=5)
    assert archive.read_bytes() == tarball()
    (tmp_path / "upstream.tar.gz").unlink()  # the second call must not need the server
    assert installer.fetch_upstream(f"{serve}/upstream.tar.gz", timeout=5) == archive


def test_the_sdist_becomes_the_pure_python_wheel_it_would_install(installer, tmp_path):
    sdist = tmp_path / installer.SDIST_FILE
    with tarfile.open(sdist, "w:gz") as tar:
        for name, text in (
            ("detectron2/__init__.py", "__version__ = '0.6'\n"),
            ("detectron2/model_zoo/__init__.py", ""),
            ("detectron2/model_zoo/configs/Base-RCNN-FPN.yaml", "MODEL: {}\n"),
        ):
            data = text.encode()
            info = tarfile.TarInfo(f"pb1-detectron2-0.6/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    wheel = installer.build_wheel_from_sdist(sdist, tmp_path / "wheels")
    assert wheel == tmp_path / "wheels" / "detectron2-0.6-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "detectron2/__init__.py" in names
    assert "detectron2/model_zoo/configs/Base-RCNN-FPN.yaml" in names  # package data kept

"""tools/install_detectron2.py: index parsing, checksum refusal, keeping an existing install."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import io
import tarfile
import threading

import pytest
from conftest import REPO


@pytest.fixture
def installer(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "install_detectron2", REPO / "tools" / "install_detectron2.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "CACHE_DIR", tmp_path / "cache")
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
    assert "already installed" in capsys.readouterr().out


def test_source_must_be_a_detectron2_checkout(installer, tmp_path):
    with pytest.raises(SystemExit):
        installer.main(["--force", "--source", str(tmp_path)])

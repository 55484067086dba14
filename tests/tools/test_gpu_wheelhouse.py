"""tools/gpu_wheelhouse.py on wheels made here: which tags install on the GPU machine's Python,
which requirements the wheelhouse leaves unmet, what an offline install keeps and installs (a
real pip, --no-index), and a manifest that no longer matches its files."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import sys
import zipfile
from pathlib import Path

import packaging
import pytest
from helpers import REPO


@pytest.fixture(scope="module")
def wheelhouse():
    spec = importlib.util.spec_from_file_location(
        "gpu_wheelhouse", REPO / "tools" / "gpu_wheelhouse.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_wheel(
    folder: Path, name: str, version: str, requires: tuple[str, ...] = (), tag: str = "py3-none-any"
) -> Path:
    """A real, installable wheel of a one-module distribution."""
    stem = name.replace("-", "_")
    dist_info = f"{stem}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {line}\n" for line in requires)
    wheel_file = f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n"
    files = {
        f"{stem}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist_info}/METADATA": metadata,
        f"{dist_info}/WHEEL": wheel_file,
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    files[f"{dist_info}/RECORD"] = "\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n"
    wheel = folder / f"{stem}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def test_only_wheels_for_cpython_312_manylinux_x86_64_are_taken(wheelhouse, tmp_path):
    takes = wheelhouse.installs_on_target
    assert takes(tmp_path / "a-1.0-py3-none-any.whl")
    assert takes(tmp_path / "pycocotools-2.0.11-cp312-abi3-manylinux2014_x86_64.whl")
    assert takes(tmp_path / "b-1.0-cp312-cp312-manylinux_2_28_x86_64.whl")
    assert not takes(tmp_path / "b-1.0-cp311-cp311-manylinux_2_28_x86_64.whl")
    assert not takes(tmp_path / "b-1.0-cp312-cp312-manylinux_2_28_aarch64.whl")
    assert not takes(tmp_path / "b-1.0-cp312-cp312-win_amd64.whl")


def test_unmet_requirements_name_what_is_missing_and_what_is_too_old(wheelhouse, tmp_path):
    wheels = [
        make_wheel(
            tmp_path,
            "alpha",
            "1.0",
            (
                "beta>=2",
                "numpy",  # the GPU machine has it
                "gamma",  # nobody has it
                'dataclasses; python_version < "3.7"',  # not for Python 3.12
                'delta; extra == "docs"',  # an extra nobody asks for
            ),
        ),
        make_wheel(tmp_path, "beta", "1.5"),
    ]
    problems = wheelhouse.unmet_in_wheelhouse(wheels, ["alpha>=1"], frozenset({"numpy"}))
    assert problems == [
        "alpha-1.0-py3-none-any.whl needs beta>=2, the wheelhouse has beta-1.5-py3-none-any.whl",
        "alpha-1.0-py3-none-any.whl needs gamma: neither in the wheelhouse nor there",
    ]
    assert wheelhouse.unmet_in_wheelhouse(wheels[1:], ["beta<2"], frozenset()) == []


def test_the_project_requirements_are_det_scalings(wheelhouse):
    requirements = wheelhouse.project_requirements()
    assert "setuptools<81" in requirements
    assert any(line.startswith("fvcore") for line in requirements)


def write_wheelhouse(wheelhouse, folder: Path, wheels: list[Path]) -> None:
    manifest = wheelhouse.manifest_of(wheels, {})
    (folder / wheelhouse.MANIFEST).write_text(json.dumps(manifest))


def test_install_keeps_what_this_python_has_and_installs_the_rest_offline(wheelhouse, tmp_path):
    house, target = tmp_path / "house", tmp_path / "site"
    house.mkdir()
    wheels = [
        # This environment has packaging at a version nothing here refuses: kept.
        make_wheel(house, "packaging", "0.1"),
        # Not installed anywhere: installed into the target.
        make_wheel(house, "det-scaling-wheelhouse-probe", "1.0", ("packaging",)),
    ]
    write_wheelhouse(wheelhouse, house, wheels)
    done = wheelhouse.install(house, target)
    assert done == [
        f"kept packaging {packaging.__version__} (this machine's)",
        f"installed {wheels[1].name} into {target}",
    ]
    assert (target / "det_scaling_wheelhouse_probe" / "__init__.py").is_file()
    assert not (target / "packaging").exists()
    sys.path.insert(0, str(target))
    try:
        import det_scaling_wheelhouse_probe

        assert det_scaling_wheelhouse_probe.VERSION == "1.0"
    finally:
        sys.path.remove(str(target))
        sys.modules.pop("det_scaling_wheelhouse_probe", None)


def test_install_replaces_a_version_a_requirement_refuses(wheelhouse, tmp_path):
    house = tmp_path / "house"
    house.mkdir()
    # A wheel of the wheelhouse asks for a packaging newer than this environment's.
    wheels = [make_wheel(house, "det-scaling-probe-dep", "2.0", ("packaging>=999",))]
    wheels.append(make_wheel(house, "packaging", "999.0"))
    write_wheelhouse(wheelhouse, house, wheels)
    chosen, kept = wheelhouse.plan_install(house, json.loads((house / "MANIFEST.json").read_text()))
    assert [w.name for w in chosen] == [w.name for w in wheels]
    assert kept == []


def test_a_wheelhouse_whose_files_changed_is_refused(wheelhouse, tmp_path):
    wheel = make_wheel(tmp_path, "alpha", "1.0")
    write_wheelhouse(wheelhouse, tmp_path, [wheel])
    wheelhouse.read_manifest(tmp_path)
    wheel.write_bytes(wheel.read_bytes()[:-10])
    with pytest.raises(wheelhouse.WheelhouseError, match="not the file the manifest lists"):
        wheelhouse.read_manifest(tmp_path)
    with pytest.raises(wheelhouse.WheelhouseError, match="make gpu-wheelhouse"):
        wheelhouse.read_manifest(tmp_path / "elsewhere")


def test_check_passes_here_and_reports_every_module(wheelhouse):
    report = wheelhouse.environment_report(None)
    assert report["unmet_requirements"] == []
    assert set(report["modules"]) == set(wheelhouse.IMPORTS)
    failed = {name: m["error"] for name, m in report["modules"].items() if "error" in m}
    assert failed == {}
    assert report["modules"]["yacs"]["version"]  # from its distribution: no __version__

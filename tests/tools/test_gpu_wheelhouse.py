"""tools/gpu_wheelhouse.py on wheels made here, with a real pip and a local folder in place of
the registry: which wheels pip fetches for the GPU machine's Python, which requirements pip
cannot meet there, what an offline install keeps and installs, a wheel whose hash changed, and
the check of this environment."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
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


def write_wheelhouse(wheelhouse, folder: Path) -> None:
    """The requirements and manifest of the wheels in ``folder``, as ``build`` writes them."""
    manifest = wheelhouse.manifest_of(folder, wheelhouse.write_requirements(folder), {})
    (folder / wheelhouse.MANIFEST).write_text(json.dumps(manifest))


def test_pip_fetches_only_wheels_for_cpython_312_manylinux_x86_64(
    wheelhouse, tmp_path, local_index, make_wheel
):
    for tag in (
        "cp311-cp311-manylinux_2_28_x86_64",
        "cp312-cp312-manylinux_2_28_aarch64",
        "cp312-cp312-win_amd64",
        "cp312-cp312-manylinux_2_28_x86_64",
    ):
        make_wheel(local_index, "beta", "1.0", tag=tag)
    make_wheel(local_index, "gamma", "2.0", tag="cp312-abi3-manylinux2014_x86_64")
    make_wheel(local_index, "alpha", "1.0")
    make_wheel(local_index, "alpha", "1.1")
    dest = tmp_path / "house"
    wheelhouse.download_wheels(["alpha==1.0", "beta==1.0", "gamma==2.0"], dest, [])
    assert sorted(p.name for p in dest.iterdir()) == [
        "alpha-1.0-py3-none-any.whl",
        "beta-1.0-cp312-cp312-manylinux_2_28_x86_64.whl",
        "gamma-2.0-cp312-abi3-manylinux2014_x86_64.whl",
    ]


def test_what_pip_needs_besides_the_wheelhouse_must_be_on_the_gpu_machine(
    wheelhouse, tmp_path, local_index, make_wheel
):
    house = tmp_path / "house"
    make_wheel(
        house,
        "alpha",
        "1.0",
        (
            "beta>=1",
            "numpy",  # from the index, standing in for the GPU machine's
            'dataclasses; python_version < "3.7"',  # not for Python 3.12
            'delta; extra == "docs"',  # an extra nobody asks for
        ),
    )
    make_wheel(house, "beta", "1.5")
    make_wheel(local_index, "numpy", "1.0")
    write_wheelhouse(wheelhouse, house)
    # det-scaling's requirement on a package of the machine's (torch) is left to the machine.
    needs = ["alpha>=1", "torch>=2"]
    assert wheelhouse.unmet_on_target(house, [], needs, frozenset({"numpy", "torch"})) == []
    assert wheelhouse.unmet_on_target(house, [], ["alpha"], frozenset()) == [
        "numpy 1.0 is needed there but is neither in the wheelhouse nor among the GPU machine's "
        "packages"
    ]
    # A version the wheelhouse does not have: pip's own words.
    problems = wheelhouse.unmet_on_target(house, [], ["beta>=2"], frozenset({"numpy"}))
    assert any("beta" in line for line in problems), problems


def test_the_project_requirements_are_det_scalings(wheelhouse):
    requirements = wheelhouse.project_requirements()
    assert "setuptools<81" in requirements
    assert any(line.startswith("fvcore") for line in requirements)


def test_install_keeps_what_this_python_has_and_installs_the_rest_offline(
    wheelhouse, tmp_path, local_index, make_wheel
):
    house, target = tmp_path / "house", tmp_path / "site"
    # This environment has packaging at a version nothing here refuses: kept.
    make_wheel(house, "packaging", "0.1")
    # Not installed anywhere: installed into the target.
    probe = make_wheel(house, "det-scaling-wheelhouse-probe", "1.0", ("packaging",))
    write_wheelhouse(wheelhouse, house)
    done = wheelhouse.install(house, target)
    assert done == [
        f"kept packaging {packaging.__version__} (this machine's)",
        f"installed {probe.name} into {target}",
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


def test_install_replaces_a_version_a_requirement_refuses(
    wheelhouse, tmp_path, local_index, make_wheel
):
    house, target = tmp_path / "house", tmp_path / "site"
    # A wheel of the wheelhouse asks for a packaging newer than this environment's.
    make_wheel(house, "det-scaling-probe-dep", "2.0", ("packaging>=999",))
    make_wheel(house, "packaging", "999.0")
    write_wheelhouse(wheelhouse, house)
    done = wheelhouse.install(house, target)
    assert [line.split()[0] for line in done] == ["installed", "installed"]
    assert (target / "packaging" / "__init__.py").read_text().startswith("VERSION = '999.0'")


def test_a_wheel_whose_hash_changed_is_refused(
    wheelhouse, tmp_path, local_index, make_wheel, capfd
):
    house = tmp_path / "house"
    make_wheel(house, "det-scaling-wheelhouse-probe", "1.0")
    write_wheelhouse(wheelhouse, house)
    make_wheel(house, "det-scaling-wheelhouse-probe", "1.0", body="CHANGED = True\n")
    with pytest.raises(subprocess.CalledProcessError):
        wheelhouse.install(house, tmp_path / "site")
    assert "DO NOT MATCH THE HASHES" in capfd.readouterr().err
    assert not (tmp_path / "site" / "det_scaling_wheelhouse_probe").exists()
    with pytest.raises(wheelhouse.WheelhouseError, match="make gpu-wheelhouse"):
        wheelhouse.read_manifest(tmp_path / "elsewhere")


def test_check_names_what_this_environment_lacks(wheelhouse, tmp_path, local_index, make_wheel):
    house = tmp_path / "house"
    make_wheel(house, "det-scaling-absent-probe", "1.0")
    write_wheelhouse(wheelhouse, house)  # listed, never installed
    problems = wheelhouse.unmet_here(house)
    assert any("det-scaling-absent-probe" in line for line in problems), problems


def test_check_passes_here_and_reports_every_module(wheelhouse, local_index):
    report = wheelhouse.environment_report(None)
    assert report["unmet_requirements"] == []
    assert set(report["modules"]) == set(wheelhouse.IMPORTS)
    failed = {name: m["error"] for name, m in report["modules"].items() if "error" in m}
    assert failed == {}
    assert report["modules"]["yacs"]["version"]  # from its distribution: no __version__

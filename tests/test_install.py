"""det-scaling as users install it: the sdist and wheel `python -m build` makes, the wheel
installed in a fresh environment (reusing this one's torch and detectron2: no downloads), and its
commands run from a folder outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = "VOC07-Detection/faster_rcnn_synthetic_tiny.yaml"
# Two steps on a small generated set: the command, not the training, is under test.
SHORT_RUN = [
    "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "0",
    "TEST.EVAL_PERIOD", "0",
    "DATASETS.SYNTHETIC_VOC.NUM_TRAINVAL", "8", "DATASETS.SYNTHETIC_VOC.NUM_TEST", "2",
]  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder holding the sdist and the wheel of the checkout."""
    dist = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(REPO)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return dist


@pytest.fixture(scope="module")
def installed(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin folder of a fresh environment with the wheel installed; this environment's
    packages (torch, detectron2) visible behind it, its det-scaling not."""
    env = tmp_path_factory.mktemp("env")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # A plain path line: this environment's packages, without running its .pth files (the
    # editable det-scaling's finder among them).
    Path(site, "base_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (wheel,) = built.glob("*.whl")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
    subprocess.run([*install, "--no-index", str(wheel)], check=True, capture_output=True)
    return env / "bin"


def _run(command: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["DETECTRON2_DATASETS"] = str(cwd / "datasets")
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_the_wheel_holds_the_package_its_configs_and_its_type_marker(built):
    (wheel,) = built.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "det_scaling/py.typed" in names
    assert f"det_scaling/configs/{TINY}" in names
    assert "det_scaling/configs/common/voc_data.py" in names
    assert not any(name.startswith(("tests/", "benchmarks/", "tools/")) for name in names)
    (sdist,) = built.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = [name.split("/", 1)[-1] for name in archive.getnames()]
    assert f"det_scaling/configs/{TINY}" in names
    assert not any(name.startswith("tests/") for name in names)


@pytest.mark.slow
def test_the_installed_commands_run_outside_the_checkout(installed, tmp_path):
    command = str(installed / "det-scaling")
    python = str(installed / "python")
    where = _run([python, "-c", "import det_scaling; print(det_scaling.__file__)"], tmp_path)
    assert not where.stdout.strip().startswith(str(REPO))
    assert _run([command, "--version"], tmp_path).stdout.startswith("det-scaling ")
    zoo = _run([command, "plan", "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", "--num-gpus", "8"],
               tmp_path)  # fmt: skip
    assert "| 8 | 16 (2/GPU)" in " ".join(zoo.stdout.split()).replace("|  ", "| ")
    lazy = ["plan", "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py", "--num-gpus", "1", "8"]
    assert (
        "train.max_iter" in _run([command, *lazy, "train.reference_world_size=8"], tmp_path).stdout
    )
    train = [command, "train", "--config-file", TINY, "--num-gpus", "2", "OUTPUT_DIR", "out"]
    _run([*train, *SHORT_RUN], tmp_path, timeout=400)
    assert (tmp_path / "out" / "model_final.pth").is_file()
    assert (tmp_path / "out" / "summary.json").is_file()


@pytest.mark.slow
def test_the_config_diff_fixture_in_a_users_repository(installed, tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "my_rcnn.yaml").write_text(
        "SOLVER:\n  IMS_PER_BATCH: 16\n  BASE_LR: 0.02\n  REFERENCE_WORLD_SIZE: 8\n"
    )
    (tmp_path / "test_configs.py").write_text(textwrap.dedent("""\
        def test_my_rcnn_scales(config_diff):
            config_diff.check("my_rcnn.yaml", num_gpus=[1, 8])
    """))  # fmt: skip
    python = str(installed / "python")
    _run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--det-scaling-update"], tmp_path)
    golden = tmp_path / "config_diff" / "test_configs.test_my_rcnn_scales.txt"
    assert "BASE_LR" in golden.read_text()
    assert (
        "1 passed"
        in _run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider"], tmp_path).stdout
    )

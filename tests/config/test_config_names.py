"""Configs by name: a file first, then det-scaling's own configs, then detectron2's model zoo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.cli import run_cli

from det_scaling.config import find_config_file, load_cfg
from det_scaling.config.names import PACKAGED_CONFIGS

REPO = Path(__file__).resolve().parents[2]
TINY = "VOC07-Detection/faster_rcnn_synthetic_tiny.yaml"
ZOO_YAML = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
ZOO_LAZY = "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py"


def test_the_packaged_configs_are_the_repositorys():
    packaged = Path(find_config_file(TINY))
    assert packaged.parent.parent == Path(PACKAGED_CONFIGS)
    assert packaged.read_bytes() == (REPO / "configs" / TINY).read_bytes()


@pytest.mark.filterwarnings("ignore:pkg_resources is deprecated")
def test_a_model_zoo_name_is_detectron2s_file():
    from detectron2 import model_zoo

    assert find_config_file(ZOO_YAML) == model_zoo.get_config_file(ZOO_YAML)
    assert load_cfg(ZOO_YAML).SOLVER.MAX_ITER == 90000


def test_a_file_takes_precedence_over_a_name(tmp_path, monkeypatch):
    mine = tmp_path / ZOO_YAML
    mine.parent.mkdir(parents=True)
    mine.write_text("SOLVER:\n  MAX_ITER: 123\n")
    monkeypatch.chdir(tmp_path)
    assert find_config_file(ZOO_YAML) == ZOO_YAML
    assert load_cfg(ZOO_YAML).SOLVER.MAX_ITER == 123


def test_an_unknown_name_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_config_file("COCO-Detection/nothere.yaml") == "COCO-Detection/nothere.yaml"
    with pytest.raises(ValueError, match=r"nothere.yaml: no such config file \(.*model zoo\)"):
        load_cfg("COCO-Detection/nothere.yaml")


@pytest.mark.parametrize("name", [ZOO_YAML, ZOO_LAZY])
def test_plan_takes_model_zoo_names(capsys, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    reference = (
        "SOLVER.REFERENCE_WORLD_SIZE 8"
        if name.endswith(".yaml")
        else "train.reference_world_size=8"
    )
    code, out, err = run_cli(capsys, "plan", name, "--num-gpus", "1", "8", *reference.split())
    assert (code, err) == (0, "")
    assert "reference: 8 GPUs" in out
    assert os.listdir(tmp_path) == []

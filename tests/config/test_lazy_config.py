"""Loading a LazyConfig: the toolkit's keys, key=value overrides, one-line errors, flattening."""

from __future__ import annotations

import re

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.modeling import build_model
from detectron2.solver.build import get_default_optimizer_params
from detectron2.utils.env import seed_all_rng
from helpers import REPO
from omegaconf import OmegaConf

from det_scaling import LARS, build_optimizer, get_cfg, load_cfg
from det_scaling.config.lazy import flatten_lazy_cfg
from det_scaling.engine import LazyScalingTrainer
from det_scaling.solver import lars_param_groups, lars_params

TINY = REPO / "configs" / "VOC07-Detection" / "faster_rcnn_synthetic_tiny"

CONFIG = """\
from detectron2 import model_zoo
optimizer = model_zoo.get_config("common/optim.py").SGD
train = model_zoo.get_config("common/train.py").train
train.reference_world_size = 4
dataloader = dict(train=dict(total_batch_size=8))
"""


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "config.py"
    path.write_text(CONFIG)
    return str(path)


def test_toolkit_keys_mirror_the_yacs_scaling_keys_with_their_defaults(config):
    cfg = load_cfg(config)
    assert cfg.train.reference_world_size == 4
    scaling = OmegaConf.to_container(cfg.train.scaling)
    yacs = get_cfg().SCALING
    assert scaling["rule"] == yacs.RULE and scaling["grad_accum_steps"] == yacs.GRAD_ACCUM_STEPS
    assert scaling["epochs"]["max"] == yacs.EPOCHS.MAX
    assert scaling["adabatch"]["lr_factor"] == yacs.ADABATCH.LR_FACTOR
    assert {k.upper() for k in scaling} == set(yacs)


def test_overrides_are_detectron2s_key_value_form(config):
    cfg = load_cfg(
        config,
        ["train.max_iter=500", "train.scaling.rule=sqrt", "optimizer.nesterov=True", "+x.y=3"],
    )
    assert cfg.train.max_iter == 500
    assert cfg.train.scaling.rule == "sqrt"
    assert cfg.optimizer.nesterov is True  # an argument of torch.optim.SGD, not written before
    assert cfg.x.y == 3  # "+" adds a key


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["train.max_iterr=5"],
            "train.max_iterr: no such config key; did you mean train.max_iter?",
        ),
        (["optimizer.momentun=0.8"], "optimizer.momentun: no such config key; did you mean"),
        (["train.scaling.rul=sqrt"], "did you mean train.scaling.rule?"),
        (["train.max_iter"], "a LazyConfig takes key=value overrides"),
        (["SOLVER.BASE_LR", "0.1"], "a LazyConfig takes key=value overrides"),
        (["=5"], "=5: a LazyConfig override is key=value"),
        (["a.b[0].c=1"], "a.b[0].c=1: detectron2's key=value overrides cannot name a list item"),
    ],
)
def test_a_bad_override_is_one_line_naming_the_key(config, overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        load_cfg(config, overrides)
    assert "\n" not in str(error.value)


def test_a_misspelt_toolkit_key_in_the_file_is_named(tmp_path):
    path = tmp_path / "bad_key.py"
    path.write_text(CONFIG + "train.scaling = dict(keep_refrence_batch=True)\n")
    with pytest.raises(ValueError, match=re.escape("did you mean train.scaling.keep_reference")):
        load_cfg(str(path))


def test_a_missing_or_broken_file_is_one_line(tmp_path):
    with pytest.raises(ValueError, match=re.escape("nothere.py: no such config file")):
        load_cfg(str(tmp_path / "nothere.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("train = dict(max_iter=\n")
    with pytest.raises(ValueError, match=r"broken\.py: cannot load the LazyConfig \(SyntaxError"):
        load_cfg(str(broken))


def test_a_yaml_config_refuses_key_value_overrides(voc07_cfg):
    with pytest.raises(ValueError, match=re.escape("key=value overrides are for LazyConfig")):
        load_cfg(str(REPO / "configs" / "VOC07-Detection" / "faster_rcnn_R_50_FPN.yaml"), ["a=1"])


def test_flatten_names_every_leaf_with_callables_by_import_path(config):
    flat = flatten_lazy_cfg(load_cfg(config))
    assert flat["optimizer.lr"] == 0.02
    assert flat["optimizer._target_"] == "torch.optim.sgd.SGD"
    assert flat["train.scaling.epochs.steps"] == ()


def test_lazy_twin_builds_the_yacs_network_layer_for_layer():
    """configs/VOC07-Detection/faster_rcnn_synthetic_tiny.{yaml,py}: same modules, same
    parameter names and shapes, and the same initial weights from the same seed."""
    seed_all_rng(0)
    yacs = build_model(load_cfg(f"{TINY}.yaml"))
    seed_all_rng(0)
    lazy = LazyScalingTrainer.build_model(load_cfg(f"{TINY}.py"))
    assert str(lazy) == str(yacs)
    expected = yacs.state_dict()
    assert lazy.state_dict().keys() == expected.keys()
    for name, tensor in lazy.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_lars_from_a_lazyconfig_has_the_yacs_param_groups():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4))
    cfg = OmegaConf.create(flags={"allow_objects": True})
    cfg.optimizer = L(LARS)(
        params=L(lars_params)(weight_decay_norm=0.0, base_lr=0.1),
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        clip=True,
    )
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, LARS)
    assert "model" not in cfg.optimizer.params  # the config is not changed
    yacs = get_cfg()
    yacs.SOLVER.BASE_LR, yacs.SOLVER.WEIGHT_DECAY_NORM = 0.1, 0.0
    expected = lars_param_groups(yacs, model)
    assert len(optimizer.param_groups) == len(expected) == 2
    for group, want in zip(optimizer.param_groups, expected, strict=True):
        assert [id(p) for p in group["params"]] == [id(p) for p in want["params"]]
        assert {k: group[k] for k in want if k != "params"} == {
            k: v for k, v in want.items() if k != "params"
        }
    assert optimizer.param_groups[1]["lars_exclude"] is True  # the conv bias and the norm
    assert lars_params(model, exclude_bias_and_norm=False) == get_default_optimizer_params(model)

"""Weights that never run code: the pre-flight check of MODEL.WEIGHTS and the trainer's
checkpointer read a .pkl file only from detectron2's model-zoo cache or with the opt-in, and a
.pth file only with torch.load(weights_only=True). Real files whose unpickling creates a marker
file, the tests' tiny model, real configs."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest
import torch
from helpers import REPO
from helpers.tiny import LazyBoxRegressor, build_trainer, lazy_resume_cfg, parameters

from det_scaling.cli import parse_args
from det_scaling.cli.train import config_overrides
from det_scaling.config import adapter_of, load_cfg
from det_scaling.engine import Run, SafeCheckpointer, build_step
from det_scaling.engine.checkpoint import model_zoo_cache
from det_scaling.errors import ConfigError
from det_scaling.tasks import check_weights, trainer_class
from det_scaling.testing.tiny import register_images, tiny_cfg

LAZY_CONFIG = REPO / "configs" / "VOC07-Detection" / "faster_rcnn_R_50_FPN.py"


class CreatesFile:
    """Unpickling it creates ``path``: code hidden in a weights file, made visible."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture(autouse=True)
def model_zoo_cache_in(tmp_path, monkeypatch) -> Path:
    """iopath's cache directory (``$FVCORE_CACHE``) in the test's folder, not the user's."""
    cache = tmp_path / "iopath_cache"
    monkeypatch.setenv("FVCORE_CACHE", str(cache))
    return cache


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "code_ran"


@pytest.fixture
def weights() -> dict[str, torch.Tensor]:
    """Weights of the tiny model, with values of their own (not what a fresh model starts at)."""
    model = LazyBoxRegressor()
    return {name: torch.full_like(value, 0.25) for name, value in model.state_dict().items()}


def model_zoo_pickle(path: Path, weights: dict[str, torch.Tensor], marker: Path) -> Path:
    """``weights`` in detectron2's model-zoo .pkl format (numpy arrays), with an object whose
    unpickling creates ``marker``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "model": {name: value.numpy() for name, value in weights.items()},
        "__author__": "det_scaling tests",
        "hook": CreatesFile(marker),
    }
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path


def yacs_run(tmp_path: Path, weights: Path, **model_keys) -> Run:
    cfg = tiny_cfg(tmp_path / "out", ims_per_batch=2)
    cfg.MODEL.WEIGHTS = str(weights)
    for key, value in model_keys.items():
        cfg.MODEL[key] = value
    return Run.of_scaled(cfg, 1)


def assert_one_line(error: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message


def test_a_pickle_outside_the_model_zoo_cache_is_refused_unread(tmp_path, marker, weights):
    pkl = model_zoo_pickle(tmp_path / "downloaded" / "model.pkl", weights, marker)
    with pytest.raises(ConfigError) as error:
        check_weights(yacs_run(tmp_path, pkl))
    assert_one_line(
        error,
        f"MODEL.WEIGHTS {pkl}: not read",
        "outside detectron2's model-zoo cache",
        "MODEL.ALLOW_PICKLED_WEIGHTS True",
        "--allow-pickled-weights",
    )
    assert not marker.exists()


def test_a_lazy_config_names_its_own_key(tmp_path, marker, weights):
    pkl = model_zoo_pickle(tmp_path / "model.pkl", weights, marker)
    cfg = lazy_resume_cfg(tmp_path / "out", 1)
    cfg.train.init_checkpoint = str(pkl)
    with pytest.raises(ConfigError) as error:
        check_weights(Run.of_scaled(cfg, 1))
    assert_one_line(error, f"train.init_checkpoint {pkl}: not read", "train.allow_pickled_weights")
    assert not marker.exists()


def test_the_trainers_checkpointer_refuses_it_too(tmp_path, data, marker, weights):
    pkl = model_zoo_pickle(tmp_path / "model.pkl", weights, marker)
    cfg = tiny_cfg(tmp_path / "out", ims_per_batch=2)
    cfg.MODEL.WEIGHTS = str(pkl)
    with pytest.raises(ConfigError) as error:
        build_trainer(cfg, data)
    assert_one_line(error, f"{pkl}: not read", "MODEL.ALLOW_PICKLED_WEIGHTS")
    assert not marker.exists()


def test_the_step_of_lr_find_and_noise_scale_refuses_it_too(tmp_path, data, marker, weights):
    register_images(data)
    pkl = model_zoo_pickle(tmp_path / "model.pkl", weights, marker)
    run = yacs_run(tmp_path, pkl)
    with pytest.raises(ConfigError, match="not read"):
        build_step(run, trainer_class(run.adapter), weights=run.settings.weights)
    assert not marker.exists()


def test_with_the_config_key_the_pickle_is_read(tmp_path, data, marker, weights):
    pkl = model_zoo_pickle(tmp_path / "model.pkl", weights, marker)
    check_weights(yacs_run(tmp_path, pkl, ALLOW_PICKLED_WEIGHTS=True))
    assert marker.exists()
    marker.unlink()
    cfg = tiny_cfg(tmp_path / "out", ims_per_batch=2)
    cfg.MODEL.WEIGHTS = str(pkl)
    cfg.MODEL.ALLOW_PICKLED_WEIGHTS = True
    loaded = parameters(build_trainer(cfg, data))
    assert marker.exists()
    for name, value in weights.items():
        torch.testing.assert_close(loaded[name], value, msg=name)


def test_with_the_train_flag_the_pickle_is_read(tmp_path, marker, weights):
    pkl = model_zoo_pickle(tmp_path / "model.pkl", weights, marker)
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_cfg(tmp_path / "out", ims_per_batch=2).dump())
    argv = ["train", "--config-file", str(config), "MODEL.WEIGHTS", str(pkl)]
    for flag, allowed in (([], False), (["--allow-pickled-weights"], True)):
        args = config_overrides(parse_args([*argv, *flag]))
        assert not hasattr(args, "allow_pickled_weights")  # launch_training's arguments
        run = Run.of_scaled(load_cfg(args.config_file, args.opts), 1)
        assert run.settings.allow_pickled_weights is allowed
    check_weights(run)
    assert marker.exists()


def test_the_train_flag_sets_a_lazy_configs_key():
    argv = ["train", "--config-file", str(LAZY_CONFIG), "--allow-pickled-weights"]
    args = config_overrides(parse_args(argv))
    assert args.opts == ["train.allow_pickled_weights=True"]
    assert adapter_of(load_cfg(args.config_file, args.opts)).run_settings().allow_pickled_weights
    default = load_cfg(str(LAZY_CONFIG))
    assert default.train.allow_pickled_weights is False
    assert adapter_of(default).run_settings().allow_pickled_weights is False


def test_a_pickle_in_the_model_zoo_cache_is_read_without_the_opt_in(
    tmp_path, model_zoo_cache_in, marker, weights
):
    cache = model_zoo_cache_in / "detectron2"
    assert model_zoo_cache() == str(cache)
    pkl = model_zoo_pickle(cache / "ImageNetPretrained" / "MSRA" / "R-50.pkl", weights, marker)
    check_weights(yacs_run(tmp_path, pkl))
    assert marker.exists()


@pytest.mark.parametrize("where", ["beside the detectron2 folder", "linked from it"])
def test_a_pickle_elsewhere_in_iopaths_cache_is_refused(
    tmp_path, model_zoo_cache_in, marker, weights, where
):
    if where == "beside the detectron2 folder":
        pkl = model_zoo_pickle(model_zoo_cache_in / "other" / "model.pkl", weights, marker)
    else:
        outside = model_zoo_pickle(tmp_path / "outside.pkl", weights, marker)
        pkl = model_zoo_cache_in / "detectron2" / "model.pkl"
        pkl.parent.mkdir(parents=True)
        pkl.symlink_to(outside)
    with pytest.raises(ConfigError, match="not read"):
        check_weights(yacs_run(tmp_path, pkl))
    assert not marker.exists()


def code_running_pth(path: Path, weights: dict[str, torch.Tensor], marker: Path) -> Path:
    torch.save({"model": weights, "hook": CreatesFile(marker)}, path)
    return path


def test_a_pth_that_would_run_code_is_refused_even_with_the_opt_in(tmp_path, marker, weights):
    pth = code_running_pth(tmp_path / "model.pth", weights, marker)
    with pytest.raises(ConfigError) as error:
        check_weights(yacs_run(tmp_path, pth, ALLOW_PICKLED_WEIGHTS=True))
    assert_one_line(error, f"MODEL.WEIGHTS {pth}: not read", "weights_only=True", "getattr")
    assert not marker.exists()


def test_resume_skips_a_checkpoint_that_would_run_code(tmp_path, marker, weights, caplog):
    out = tmp_path / "out"
    out.mkdir()
    torch.save({"model": weights, "iteration": 3}, out / "model_0000003.pth")
    code_running_pth(out / "model_final.pth", weights, marker)
    (out / "last_checkpoint").write_text("model_final.pth")
    model = LazyBoxRegressor()
    with caplog.at_level(logging.WARNING, logger="fvcore.common.checkpoint"):
        extra = SafeCheckpointer(model, str(out), allow_pickled=True).resume_or_load("")
    assert extra["iteration"] == 3
    assert not marker.exists()
    assert "Skipping unreadable checkpoint" in caplog.text and "weights_only=True" in caplog.text


def test_a_checkpoint_of_tensors_still_loads(tmp_path, data, weights):
    pth = tmp_path / "model.pth"
    torch.save({"model": weights, "iteration": 7, "__author__": "det_scaling tests"}, pth)
    check_weights(yacs_run(tmp_path, pth))
    cfg = tiny_cfg(tmp_path / "out", ims_per_batch=2)
    cfg.MODEL.WEIGHTS = str(pth)
    loaded = parameters(build_trainer(cfg, data))
    for name, value in weights.items():
        torch.testing.assert_close(loaded[name], value, msg=name)

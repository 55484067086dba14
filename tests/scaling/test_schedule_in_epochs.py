"""A config's schedule read in epochs: as written in epochs, or its iterations at its own total
batch; a config that does not say its data set's size cannot be read so."""

from __future__ import annotations

import pytest

from det_scaling import get_cfg
from det_scaling.config import read_recipe
from det_scaling.errors import ConfigError
from det_scaling.scaling.batch_schedule import schedule_in_epochs


def iterations_cfg():
    cfg = get_cfg()
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.SOLVER.MAX_ITER = 300
    cfg.SOLVER.STEPS = (200, 250)
    cfg.SOLVER.WARMUP_ITERS = 50
    cfg.SCALING.DATASET_SIZE = 100
    return cfg


def test_iterations_are_read_at_the_configs_own_batch():
    assert schedule_in_epochs(read_recipe(iterations_cfg())) == (12.0, (8.0, 10.0), 2.0)


def test_a_schedule_written_in_epochs_is_read_as_written():
    cfg = iterations_cfg()
    cfg.SCALING.EPOCHS.MAX = 6.0
    cfg.SCALING.EPOCHS.STEPS = (4.0, 5.5)
    cfg.SCALING.EPOCHS.WARMUP = 0.5
    assert schedule_in_epochs(read_recipe(cfg)) == (6.0, (4.0, 5.5), 0.5)


def test_an_unknown_data_set_size_names_its_key():
    cfg = iterations_cfg()
    cfg.SCALING.DATASET_SIZE = 0
    with pytest.raises(ConfigError, match=r"SCALING\.DATASET_SIZE is 0"):
        schedule_in_epochs(read_recipe(cfg))

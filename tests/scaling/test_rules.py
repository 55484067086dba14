"""The scaling rules as objects: each value of SCALING.RULE looked up once and asked its LR
factor, whether it is AdaScale, whether ADAM_SDE belongs to it, and its NaN advice; ``auto``
resolved for the optimizer."""

from __future__ import annotations

import math

import pytest

from det_scaling import get_cfg
from det_scaling.config import read_recipe
from det_scaling.errors import ConfigError
from det_scaling.scaling.rules import (
    ADASCALE,
    AUTO,
    LINEAR,
    NONE,
    RULES,
    SQRT,
    applied_rule,
    rule_of,
)


def recipe(rule: str, optimizer: str = "SGD"):
    cfg = get_cfg()
    cfg.SCALING.RULE = rule
    cfg.SOLVER.OPTIMIZER = optimizer
    return read_recipe(cfg)


def test_the_config_strings_name_the_rules():
    assert sorted(RULES) == ["adascale", "auto", "linear", "none", "sqrt"]
    assert [rule_of(name) for name in ("linear", "sqrt", "none", "auto", "adascale")] == [
        LINEAR,
        SQRT,
        NONE,
        AUTO,
        ADASCALE,
    ]


@pytest.mark.parametrize("name", ["Linear", "", "adam", None, ["linear"]])
def test_an_unknown_rule_is_a_config_error_naming_the_key(name):
    with pytest.raises(ConfigError, match=r"^train\.scaling\.rule: unknown scaling rule"):
        rule_of(name, "train.scaling.rule")


def test_each_rule_plans_its_lr_factor():
    assert LINEAR.lr_factor(8.0) == 8.0
    assert SQRT.lr_factor(8.0) == math.sqrt(8.0)
    assert NONE.lr_factor(8.0) == 1.0
    assert ADASCALE.lr_factor(8.0) == 1.0  # measured in training, not planned
    with pytest.raises(TypeError, match="applied_to"):
        AUTO.lr_factor(8.0)


def test_what_each_rule_implies():
    assert [r.name for r in RULES.values() if r.adascale] == ["adascale"]
    assert {r.name for r in RULES.values() if r.adam_sde} == {"sqrt", "auto"}
    keys = recipe("linear").keys
    advice = {name: rule.nan_advice(keys) for name, rule in RULES.items()}
    linear = "; for a large batch, SCALING.RULE sqrt or a longer SOLVER.WARMUP_ITERS"
    assert advice.pop("linear") == linear
    assert set(advice.values()) == {""}


@pytest.mark.parametrize(
    "name, optimizer, applied",
    [
        ("auto", "SGD", LINEAR),
        ("auto", "LARC", LINEAR),
        ("auto", "AdamW", SQRT),
        ("linear", "AdamW", LINEAR),
        ("sqrt", "SGD", SQRT),
        ("adascale", "SGD", ADASCALE),
    ],
)
def test_the_applied_rule_resolves_auto_for_the_optimizer(name, optimizer, applied):
    rule, why = applied_rule(recipe(name, optimizer))
    assert rule is applied
    assert bool(why) == (name == "auto")
    if why:
        assert why.startswith(f"SOLVER.OPTIMIZER {optimizer} is ")

"""SCALING.RULE auto (linear for SGD, LARS, LARC; square root for Adam-like optimizers) and
SCALING.ADAM_SDE (Malladi et al. 2022's betas and eps), in both config formats."""

from __future__ import annotations

import math
import re

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import OmegaConf

from det_scaling import get_cfg, plan_scaling, scale_cfg
from det_scaling.commands.plan import format_plan_table
from det_scaling.config.lazy import add_lazy_scaling_keys
from det_scaling.solver import build_optimizer


def yacs_cfg(optimizer="AdamW", rule="auto", adam_sde=False, reference=1, batch=4):
    cfg = get_cfg()
    cfg.SOLVER.REFERENCE_WORLD_SIZE = reference
    cfg.SOLVER.IMS_PER_BATCH = batch
    cfg.SOLVER.MAX_ITER = 1000
    cfg.SOLVER.STEPS = (600, 800)
    cfg.SOLVER.BASE_LR = 0.001
    cfg.SOLVER.OPTIMIZER = optimizer
    cfg.SCALING.RULE = rule
    cfg.SCALING.ADAM_SDE = adam_sde
    return cfg


def lazy_cfg(target=torch.optim.AdamW, rule="auto", adam_sde=False, reference=1, **optimizer):
    """detectron2's LazyConfig shape, its optimizer a LazyCall of ``target``."""
    cfg = OmegaConf.create(
        {
            "train": {
                "max_iter": 1000,
                "eval_period": 100,
                "checkpointer": {"period": 200},
                "reference_world_size": reference,
                "scaling": {"rule": rule, "adam_sde": adam_sde},
            },
            "dataloader": {"train": {"total_batch_size": 4}},
        },
        flags={"allow_objects": True},
    )
    cfg.optimizer = L(target)(params=None, lr=0.001, **optimizer)
    cfg.lr_multiplier = L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[600, 800], num_updates=1000
    )
    add_lazy_scaling_keys(cfg)
    return cfg


@pytest.mark.parametrize(
    ("optimizer", "rule"),
    [("SGD", "linear"), ("LARS", "linear"), ("LARC", "linear"), ("AdamW", "sqrt")],
)
def test_auto_rule_is_linear_for_sgd_and_lars_and_sqrt_for_adamw(optimizer, rule):
    plan = plan_scaling(yacs_cfg(optimizer), 8)
    assert plan.rule == rule
    assert plan.cfg.SOLVER.BASE_LR == pytest.approx(
        0.001 * (8 if rule == "linear" else math.sqrt(8))
    )
    assert plan.cfg.SCALING.RULE == "auto"  # scaling again chooses again
    (note,) = [n for n in plan.notes if n.startswith("SCALING.RULE auto")]
    assert f"the {rule} rule; SOLVER.OPTIMIZER {optimizer} is " in note
    assert ("not Adam-like" in note) == (rule == "linear")


@pytest.mark.parametrize(
    ("target", "rule"),
    [
        (torch.optim.SGD, "linear"),
        (torch.optim.Adam, "sqrt"),
        (torch.optim.AdamW, "sqrt"),
        (torch.optim.NAdam, "sqrt"),
    ],
)
def test_auto_rule_reads_a_lazyconfig_optimizer(target, rule):
    plan = plan_scaling(lazy_cfg(target), 4)
    assert plan.rule == rule
    assert plan.cfg.optimizer.lr == pytest.approx(0.001 * (4 if rule == "linear" else 2))
    assert any(f"optimizer._target_ {target.__name__} is" in note for note in plan.notes)


def test_adam_sde_adjusts_betas_and_eps_by_malladi_et_al():
    cfg = yacs_cfg(adam_sde=True)
    cfg.SOLVER.ADAMW.BETAS = (0.9, 0.999)
    cfg.SOLVER.ADAMW.EPS = 1e-6
    plan = plan_scaling(cfg, 4)  # batch x4
    solver = plan.cfg.SOLVER
    assert solver.BASE_LR == pytest.approx(0.002)
    assert tuple(solver.ADAMW.BETAS) == pytest.approx((1 - 4 * 0.1, 1 - 4 * 0.001))
    assert solver.ADAMW.EPS == pytest.approx(1e-6 / 2)
    changes = {c.key: c for c in plan.changes}
    assert "ADAM_SDE (Malladi et al. 2022): batch x4" in changes["SOLVER.ADAMW.BETAS"].reason
    assert "eps / sqrt(4)" in changes["SOLVER.ADAMW.EPS"].reason
    # The optimizer the trainer builds takes them.
    optimizer = build_optimizer(plan.cfg, torch.nn.Linear(2, 2))
    assert optimizer.param_groups[0]["betas"] == pytest.approx((0.6, 0.996))
    assert optimizer.param_groups[0]["eps"] == pytest.approx(5e-7)
    # Scaling back to the reference GPU count gives the written values again.
    back = scale_cfg(plan.cfg, 1).SOLVER
    assert tuple(back.ADAMW.BETAS) == pytest.approx((0.9, 0.999))
    assert back.ADAMW.EPS == pytest.approx(1e-6)
    assert back.BASE_LR == pytest.approx(0.001)


def test_adam_sde_is_the_same_in_both_formats_with_torch_defaults_in_a_lazyconfig():
    """A LazyConfig's AdamW without betas or eps uses torch's defaults: they are what is scaled
    (and then written into the config)."""
    yacs = plan_scaling(yacs_cfg(adam_sde=True, reference=8, batch=16), 2)  # batch x1/4
    lazy_written = lazy_cfg(adam_sde=True, reference=8)
    lazy_written.dataloader.train.total_batch_size = 16
    lazy = plan_scaling(lazy_written, 2)
    assert lazy.cfg.optimizer.lr == pytest.approx(yacs.cfg.SOLVER.BASE_LR)
    assert tuple(lazy.cfg.optimizer.betas) == pytest.approx(tuple(yacs.cfg.SOLVER.ADAMW.BETAS))
    assert lazy.cfg.optimizer.eps == pytest.approx(yacs.cfg.SOLVER.ADAMW.EPS)
    assert tuple(lazy.cfg.optimizer.betas) == pytest.approx((1 - 0.025, 1 - 0.00025))
    changes = {c.key: c for c in lazy.changes}
    assert tuple(changes["optimizer.betas"].old) == (0.9, 0.999)
    assert changes["optimizer.eps"].old == 1e-8
    assert "adam_sde (Malladi et al. 2022)" in changes["optimizer.eps"].reason


def test_adam_sde_takes_betas_written_in_a_lazyconfig():
    written = lazy_cfg(adam_sde=True, betas=[0.8, 0.99], eps=1e-4)
    written.optimizer.params = L(get_default_optimizer_params)()
    plan = plan_scaling(written, 2)
    assert tuple(plan.cfg.optimizer.betas) == pytest.approx((0.6, 0.98))
    assert plan.cfg.optimizer.eps == pytest.approx(1e-4 / math.sqrt(2))
    # The optimizer the trainer instantiates takes them.
    group = build_optimizer(plan.cfg, torch.nn.Linear(2, 2)).param_groups[0]
    assert tuple(group["betas"]) == pytest.approx((0.6, 0.98))
    assert group["eps"] == pytest.approx(1e-4 / math.sqrt(2))
    assert group["lr"] == pytest.approx(0.001 * math.sqrt(2))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: yacs_cfg("SGD", adam_sde=True), "SCALING.ADAM_SDE: adjusts the betas and eps"),
        (lambda: yacs_cfg(rule="linear", adam_sde=True), "SCALING.ADAM_SDE: is the square-root"),
        (lambda: lazy_cfg(torch.optim.SGD, adam_sde=True), "train.scaling.adam_sde: adjusts"),
        (lambda: yacs_cfg(adam_sde=True, reference=1), "SOLVER.ADAMW.BETAS: beta 0.9 cannot"),
    ],
)
def test_adam_sde_where_it_has_no_meaning_is_refused_naming_the_key(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        plan_scaling(make(), 16)  # batch x16: beta1 0.9 would become -0.6


def test_plan_table_says_which_rule_auto_chose_and_why():
    table = format_plan_table(yacs_cfg(adam_sde=True), [1, 2]).splitlines()
    header = table[0]
    assert "rule: auto, the sqrt rule (SOLVER.OPTIMIZER AdamW is Adam-like" in header
    assert header.endswith("; SCALING.ADAM_SDE")
    # Each changed beta and eps, with its reason, under the table.
    assert table[-2].startswith("2 GPUs: SOLVER.ADAMW.BETAS: (0.9, 0.999) -> (0.8, 0.998)  (")
    assert table[-1].startswith("2 GPUs: SOLVER.ADAMW.EPS: 1e-08 -> 7.07107e-09  (ADAM_SDE")
    header = format_plan_table(yacs_cfg("LARC"), [1, 2]).splitlines()[0]
    assert "rule: auto, the linear rule (SOLVER.OPTIMIZER LARC is not Adam-like" in header


def test_linear_stays_the_default_rule():
    assert get_cfg().SCALING.RULE == "linear"
    assert plan_scaling(yacs_cfg(rule="linear"), 8).cfg.SOLVER.BASE_LR == pytest.approx(0.008)

"""A user's repository in miniature: a config written for 8 GPUs whose LR is set in a file it
builds on (a YAML ``_BASE_``, or a file a LazyConfig imports), and a test using ``config_diff``."""

from __future__ import annotations

from pathlib import Path

YAML_CONFIG = "configs/my_rcnn.yaml"
YAML_BASE = "configs/Base-RCNN.yaml"
LAZY_CONFIG = "configs/my_rcnn.py"
LAZY_BASE = "configs/common/optim.py"  # where the LazyConfig's optimizer.lr is written
LR_WRITTEN = "0.02"  # the LR in both base files

TEST_MODULE = "tests/test_configs.py"
# The golden file config_diff keeps for TEST_MODULE's test (the fixture's documented name).
GOLDEN = "tests/config_diff/test_configs.test_my_rcnn_scales.txt"

FILES = {
    YAML_BASE: """\
SOLVER:
  IMS_PER_BATCH: 16
  BASE_LR: 0.02
  STEPS: (60000, 80000)
  MAX_ITER: 90000
  WARMUP_ITERS: 1000
""",
    YAML_CONFIG: """\
_BASE_: "Base-RCNN.yaml"
SOLVER:
  REFERENCE_WORLD_SIZE: 8
  CHECKPOINT_PERIOD: 10000
""",
    LAZY_BASE: """\
import torch
from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params

SGD = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
    lr=0.02,
    momentum=0.9,
    weight_decay=1e-4,
)
""",
    "configs/common/train.py": """\
train = dict(
    max_iter=90000,
    eval_period=5000,
    checkpointer=dict(period=5000, max_to_keep=100),
    device="cuda",
    output_dir="./output",
    init_checkpoint="",
)
""",
    LAZY_CONFIG: """\
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from .common.optim import SGD as optimizer
from .common.train import train

dataloader = dict(train=dict(total_batch_size=16))
train.reference_world_size = 8
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[60000, 80000], num_updates=train.max_iter
    ),
    warmup_length=1000 / train.max_iter,
    warmup_factor=0.001,
)
""",
    "pytest.ini": "[pytest]\n",  # the rootdir: config paths in tests are relative to it
}

TEST = """\
def test_my_rcnn_scales(config_diff):
    config_diff.check("{config}", num_gpus=[1, 2, 4, 8])
"""


def write_user_repo(root: Path, config: str = YAML_CONFIG) -> Path:
    """The configs of both formats, and a test module checking ``config`` with the fixture."""
    for name, text in {**FILES, TEST_MODULE: TEST.format(config=config)}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def change_lr(root: Path, base: str, lr: str) -> None:
    """Writes ``lr`` for the LR of the base file ``base``."""
    path = root / base
    text = path.read_text()
    old = f"BASE_LR: {LR_WRITTEN}" if base.endswith(".yaml") else f"lr={LR_WRITTEN},"
    new = f"BASE_LR: {lr}" if base.endswith(".yaml") else f"lr={lr},"
    assert old in text
    path.write_text(text.replace(old, new))

"""What the tests share: the repository's paths, the tiny model, processes, the command line."""

from pathlib import Path

from helpers.stacks import register_stack_dump

REPO = Path(__file__).resolve().parents[2]
VOC07_CONFIG = REPO / "configs" / "VOC07-Detection" / "faster_rcnn_R_50_FPN.yaml"

# Any process of a test (spawned workers, tests/helpers/tiny_run.py) can show its stack when the
# test times out (see helpers.stacks).
register_stack_dump()

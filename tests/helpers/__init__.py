"""What the tests share: the repository's paths, the tiny model, processes, the command line."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VOC07_CONFIG = REPO / "configs" / "VOC07-Detection" / "faster_rcnn_R_50_FPN.yaml"

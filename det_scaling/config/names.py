"""Config names: a config is named by its path or, where no file has that path, by its name among
det-scaling's own configs (``VOC07-Detection/faster_rcnn_synthetic_tiny.yaml``) or detectron2's
model zoo (``COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml``,
``new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py``)."""

from __future__ import annotations

import os
import warnings

__all__ = ["NO_SUCH_CONFIG", "PACKAGED_CONFIGS", "find_config_file"]

NO_SUCH_CONFIG = (
    "no such config file (nor a config name of det-scaling's or detectron2's model zoo)"
)
# det-scaling's own configs, installed with the package.
PACKAGED_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")


def find_config_file(name: str) -> str:
    """The file a config name means: ``name`` itself where that file exists, else det-scaling's
    config of that name, else the model zoo's (detectron2's ``model_zoo.get_config_file``). A
    name found nowhere is returned as it is, for the loader to refuse."""
    if os.path.exists(name) or os.path.isabs(name):
        return name
    packaged = os.path.join(PACKAGED_CONFIGS, name)
    if os.path.isfile(packaged):
        return packaged
    with warnings.catch_warnings():
        # detectron2.model_zoo uses pkg_resources (setuptools<81 keeps it); its deprecation
        # warning is about detectron2's code, not the user's.
        warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
        from detectron2 import model_zoo

        try:
            return model_zoo.get_config_file(name)
        except RuntimeError:  # "... not available in Model Zoo!"
            return name

"""Detection data: the synthetic VOC-layout set and the registration of VOC-layout data sets.

Nothing here registers or writes anything at import; call :func:`register_voc2007`,
:func:`register_synthetic_voc` or :func:`generate_synthetic_voc`. Each parameter set of the
synthetic set has a folder of its own (:func:`synthetic_voc_dir`), never rewritten once complete.
"""

from det_scaling.data.synthetic_voc import CLASS_NAMES as SYNTHETIC_CLASS_NAMES
from det_scaling.data.synthetic_voc import generate_synthetic_voc, synthetic_voc_dir
from det_scaling.data.voc import (
    VOC_CLASS_NAMES,
    count_images,
    datasets_root,
    register_synthetic_voc,
    register_voc2007,
)

__all__ = [
    "SYNTHETIC_CLASS_NAMES",
    "VOC_CLASS_NAMES",
    "count_images",
    "datasets_root",
    "generate_synthetic_voc",
    "register_synthetic_voc",
    "register_voc2007",
    "synthetic_voc_dir",
]

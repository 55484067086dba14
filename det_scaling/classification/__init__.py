"""Image classification (ResNet on ImageNet-style folders) on the detection engine and scaling.

* :func:`export_digits`: the embedded data set, scikit-learn's digits as class folders, in a
  folder of each parameter set's own (:func:`digits_dir`);
* :func:`register_image_folder`, :func:`register_classification_datasets`: folders as detectron2
  data sets; :func:`build_classification_train_loader` / :func:`build_classification_test_loader`;
* ``ImageClassifier``: a torchvision ResNet as a detectron2 meta-architecture (registered in
  ``META_ARCH_REGISTRY`` when this package is imported, as detectron2 does);
* :class:`ClassificationEvaluator`: top-1 / top-5 accuracy;
* :class:`ClassificationTrainer`: ``ScalingTrainer`` with the three above.

The config keys are in :func:`det_scaling.add_scaling_config` (its classification section);
configs are under ``configs/ImageNet-Classification/``.
"""

from det_scaling.classification.data import (
    ClassificationDatasetMapper,
    build_classification_test_loader,
    build_classification_train_loader,
    load_image_folder,
    register_classification_datasets,
    register_digits,
    register_image_folder,
    register_imagenet,
)
from det_scaling.classification.digits import digits_dir, export_digits
from det_scaling.classification.evaluation import ClassificationEvaluator, topk_correct
from det_scaling.classification.model import ImageClassifier, build_resnet
from det_scaling.classification.trainer import ClassificationTrainer, check_num_classes

__all__ = [
    "ClassificationDatasetMapper",
    "ClassificationEvaluator",
    "ClassificationTrainer",
    "ImageClassifier",
    "build_classification_test_loader",
    "build_classification_train_loader",
    "build_resnet",
    "check_num_classes",
    "digits_dir",
    "export_digits",
    "load_image_folder",
    "register_classification_datasets",
    "register_digits",
    "register_image_folder",
    "register_imagenet",
    "topk_correct",
]

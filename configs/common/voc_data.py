# Data loaders and evaluator for a VOC-layout data set (VOC2007, or the synthetic VOC set that
# det_scaling generates), as the YAML configs' DATASETS / INPUT / DATALOADER keys make them:
# detectron2's training loader (TrainingSampler, aspect-ratio grouping), DatasetMapper with
# ResizeShortestEdge and a horizontal flip, and the VOC07 11-point evaluator.
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.evaluation import PascalVOCDetectionEvaluator
from omegaconf import OmegaConf


def voc_dataloader(
    train,
    test,
    *,
    min_size_train,
    max_size_train,
    min_size_test,
    max_size_test,
    total_batch_size,
    num_workers=4,
):
    """dataloader.train / .test / .evaluator for the data sets named ``train`` and ``test``."""
    dataloader = OmegaConf.create()
    dataloader.train = L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names=train),
        mapper=L(DatasetMapper)(
            is_train=True,
            augmentations=[
                L(T.ResizeShortestEdge)(
                    short_edge_length=min_size_train, max_size=max_size_train, sample_style="choice"
                ),
                L(T.RandomFlip)(horizontal=True),
            ],
            image_format="BGR",
        ),
        total_batch_size=total_batch_size,
        num_workers=num_workers,
    )
    dataloader.test = L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names=test, filter_empty=False),
        mapper=L(DatasetMapper)(
            is_train=False,
            augmentations=[
                L(T.ResizeShortestEdge)(short_edge_length=min_size_test, max_size=max_size_test)
            ],
            image_format="${...train.mapper.image_format}",
        ),
        num_workers=num_workers,
    )
    dataloader.evaluator = L(PascalVOCDetectionEvaluator)(dataset_name="${..test.dataset.names}")
    return dataloader

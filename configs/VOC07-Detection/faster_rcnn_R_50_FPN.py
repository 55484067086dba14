# The LazyConfig twin of faster_rcnn_R_50_FPN.yaml: Faster R-CNN R-50-FPN on PASCAL VOC 2007,
# written for the Detectron tutorial's reference setup (1 GPU with 2 images, LR 0.0025, 60000
# iterations, about 24 epochs of VOC07 trainval). `python -m det_scaling plan <this>` gives the
# same batch, LR, schedule and warmup as the YAML file at every GPU count (tested).
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ..common.faster_rcnn_fpn import model
from ..common.voc_data import voc_dataloader

model.backbone.bottom_up.freeze_at = 2
model.roi_heads.num_classes = 20

dataloader = voc_dataloader(
    "voc_2007_trainval",
    "voc_2007_test",
    min_size_train=(480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800),
    max_size_train=1333,
    min_size_test=800,
    max_size_test=1333,
    total_batch_size=2,
)

optimizer = model_zoo.get_config("common/optim.py").SGD
optimizer.lr = 0.0025

train = model_zoo.get_config("common/train.py").train
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.reference_world_size = 1  # the GPU count it is written for
train.max_iter = 60000
train.checkpointer.period = 10000
train.eval_period = 20000
train.scaling = dict(rule="linear", dataset_size=5011)

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[30000, 40000],
        num_updates=train.max_iter,
    ),
    warmup_length=800 / train.max_iter,
    warmup_factor=0.001,
)

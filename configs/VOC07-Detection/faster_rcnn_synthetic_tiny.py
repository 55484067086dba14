# The LazyConfig twin of faster_rcnn_synthetic_tiny.yaml (the `make demo-lazy` config): a tiny
# Faster R-CNN R-18-FPN with GroupNorm trained from scratch on the CPU, on the synthetic
# VOC-layout set det_scaling generates (500 trainval + 100 test images of 128x128, 5 classes).
# The network is the YAML file's, layer for layer (tested). Written for 2 processes with 1 image
# each; `tools/train.py --config-file <this> --num-gpus 2` runs it as written, other counts
# rescale it by the linear rule.
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import ResNet
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ..common.faster_rcnn_fpn import model
from ..common.voc_data import voc_dataloader

# Inputs scaled to unit variance: the default std of 1 suits only the Caffe-trained MSRA weights.
model.pixel_std = [57.375, 57.120, 58.395]
# Random weights: every stage trains, with GroupNorm (FrozenBN with random weights overflows to
# NaN; a process holds 1 image, too few for BatchNorm). (Full paths, not aliases: LazyConfig
# would keep a module-level alias as a key of the config.)
model.backbone.bottom_up.freeze_at = 0
model.backbone.bottom_up.stem.norm = "GN"
model.backbone.bottom_up.stages = L(ResNet.make_default_stages)(depth=18, norm="GN")
model.backbone.norm = "GN"
model.backbone.out_channels = 64
# Objects are 19 to 51 pixels: anchors half the default size, one per FPN level p2-p6.
model.proposal_generator.head.in_channels = 64
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.batch_size_per_image = 64
model.proposal_generator.pre_nms_topk = (600, 300)  # (training, test)
model.proposal_generator.post_nms_topk = (256, 100)
model.roi_heads.num_classes = 5
model.roi_heads.batch_size_per_image = 64
model.roi_heads.positive_fraction = 0.5
model.roi_heads.box_head.input_shape = ShapeSpec(channels=64, height=7, width=7)
model.roi_heads.box_head.fc_dims = [256, 256]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)
model.roi_heads.box_predictor.cls_agnostic_bbox_reg = True

dataloader = voc_dataloader(
    "synthetic_voc_trainval",
    "synthetic_voc_test",
    min_size_train=(128,),
    max_size_train=256,
    min_size_test=128,
    max_size_test=256,
    total_batch_size=2,
    num_workers=0,  # a 128-pixel JPEG decodes in about a millisecond
)
# The set the trainer generates on first use, in the folder of these parameters under
# $DETECTRON2_DATASETS/synthetic_voc/ (datasets/README.md).
dataloader.synthetic_voc = dict(
    num_trainval=500,
    num_test=100,
    image_size=128,
    seed=0,
    objects_per_image=(3, 6),
    object_size=(0.15, 0.4),
)

optimizer = model_zoo.get_config("common/optim.py").SGD
optimizer.lr = 0.01

train = model_zoo.get_config("common/train.py").train
train.device = "cpu"
train.init_checkpoint = ""  # no pretrained weights can be downloaded
train.reference_world_size = 2  # written for 2 processes x 1 image
train.max_iter = 1500  # 3000 images = 6 epochs
train.checkpointer.period = 750
train.eval_period = 750
train.seed = 0  # the same result on every run (same machine and versions)
train.scaling = dict(rule="linear", dataset_size=500)

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[1125, 1350],
        num_updates=train.max_iter,
    ),
    warmup_length=100 / train.max_iter,
    warmup_factor=0.001,
)

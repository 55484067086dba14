# Faster R-CNN R-50-FPN as a LazyConfig model: detectron2's model zoo Mask R-CNN FPN
# (common/models/mask_rcnn_fpn.py) without its mask head, the network of Base-RCNN-FPN.yaml.
# Configs that import it set the rest (classes, backbone freezing, norms).
from detectron2 import model_zoo

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
for name in ("mask_in_features", "mask_pooler", "mask_head"):
    del model.roi_heads[name]

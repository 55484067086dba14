"""``ImageClassifier``: a ResNet (torchvision's, or detectron2's) as a detectron2 meta-architecture.

It takes what detectron2 models take (a list of mapped dicts) and returns what they return
(a dict of losses in training, one result per input in evaluation), so detectron2's
``SimpleTrainer`` / ``AMPTrainer``, hooks, ``DetectionCheckpointer`` and ``inference_on_dataset``
work on it unchanged. Registered in ``META_ARCH_REGISTRY`` when this module is imported, as
detectron2 registers its own meta-architectures.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, build_resnet_backbone
from torch import nn

from det_scaling.errors import ConfigError

__all__ = [
    "BACKBONES",
    "RESNET_DEPTHS",
    "BackboneClassifier",
    "ImageClassifier",
    "build_classifier_net",
    "build_resnet",
]

RESNET_DEPTHS = (18, 34, 50, 101, 152)
# MODEL.CLASSIFIER.BACKBONE: whose ResNet the classifier is.
BACKBONES = ("torchvision", "detectron2")


def build_resnet(depth: int, num_classes: int, *, zero_init_residual: bool, small_input_stem: bool):
    """A randomly initialised torchvision ResNet of ``depth`` layers with ``num_classes``
    outputs; ``small_input_stem``: a 3x3 stride-1 first convolution and no max-pool."""
    if depth not in RESNET_DEPTHS:
        raise ConfigError(f"MODEL.CLASSIFIER.DEPTH must be one of {RESNET_DEPTHS}, got {depth}")
    if num_classes < 2:
        raise ConfigError(f"MODEL.CLASSIFIER.NUM_CLASSES must be >= 2, got {num_classes}")
    net = getattr(torchvision.models, f"resnet{depth}")(
        weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual
    )
    if small_input_stem:
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        # torchvision's initialisation of its convolutions.
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    return net


class BackboneClassifier(nn.Module):
    """A detectron2 backbone's last feature map, averaged over space and normalised, then a
    linear layer.

    Its ``backbone`` has the module names of the same backbone inside a detectron2 detector
    (``stem.conv1``, ``res2.0.conv1`` ...), so its weights can initialise one."""

    def __init__(self, backbone: nn.Module, feature: str, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature = feature
        channels = backbone.output_shape()[feature].channels
        # detectron2's ResNet ends without a normalisation, and its pooled features are large
        # enough for the first steps to diverge: normalised before the linear layer.
        self.norm = nn.LayerNorm(channels)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.backbone(images)[self.feature].mean(dim=(2, 3))))


def build_classifier_net(cfg: CfgNode) -> nn.Module:
    """The network ``MODEL.CLASSIFIER.BACKBONE`` names: torchvision's ResNet of
    ``MODEL.CLASSIFIER.DEPTH``, or detectron2's ResNet of ``MODEL.RESNETS`` (its last stage,
    ``res5``) with a linear layer."""
    classifier = cfg.MODEL.CLASSIFIER
    if classifier.BACKBONE == "torchvision":
        return build_resnet(
            classifier.DEPTH,
            classifier.NUM_CLASSES,
            zero_init_residual=classifier.ZERO_INIT_RESIDUAL,
            small_input_stem=classifier.SMALL_INPUT_STEM,
        )
    if classifier.BACKBONE != "detectron2":
        raise ConfigError(
            f"MODEL.CLASSIFIER.BACKBONE must be one of {BACKBONES}, got {classifier.BACKBONE!r}"
        )
    if classifier.NUM_CLASSES < 2:
        raise ConfigError(
            f"MODEL.CLASSIFIER.NUM_CLASSES must be >= 2, got {classifier.NUM_CLASSES}"
        )
    resnet_cfg = cfg.clone()
    resnet_cfg.defrost()
    resnet_cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    backbone = build_resnet_backbone(resnet_cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
    return BackboneClassifier(backbone, "res5", classifier.NUM_CLASSES)


@META_ARCH_REGISTRY.register()
class ImageClassifier(nn.Module):
    """A ResNet classifier on detectron2's inputs.

    Input: ``list[dict]`` with ``"image"`` (CHW tensor, 0-255, in ``INPUT.FORMAT``, all the same
    size) and, in training, ``"label"`` (int). Training returns ``{"loss_cls": cross-entropy
    with label smoothing}``; evaluation returns ``[{"logits": tensor of NUM_CLASSES}]``, one per
    input. The images are normalised here with ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``, on the
    model's device.
    """

    @configurable
    def __init__(
        self,
        *,
        net: nn.Module,
        pixel_mean: tuple[float, ...],
        pixel_std: tuple[float, ...],
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.net = net
        self.label_smoothing = label_smoothing
        # Buffers, not parameters: they follow .to(device) and are saved, but are not trained.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        return {
            "net": build_classifier_net(cfg),
            "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": tuple(cfg.MODEL.PIXEL_STD),
            "label_smoothing": cfg.MODEL.CLASSIFIER.LABEL_SMOOTHING,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(
        self, batched_inputs: list[dict[str, Any]]
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        images = torch.stack([x["image"] for x in batched_inputs]).to(
            self.device, non_blocking=True
        )
        logits = self.net((images.float() - self.pixel_mean) / self.pixel_std)
        if not self.training:
            return [{"logits": row} for row in logits]
        labels = torch.as_tensor([x["label"] for x in batched_inputs], device=self.device)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return {"loss_cls": loss}

"""The classifier: a ResNet/ResNeXt trunk up to layer3, ROI-align features of every box from
layer2 and layer3, and a small head that names each box (or calls it ``seg_fp``)."""

from __future__ import annotations


import timm
import torch
from torch import nn
from torchvision.ops import roi_align

from kzlib import weights
from kzlib.classify.config import ClassifyConfig
from kzlib.config import resnet_size_args
from kzlib.errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FROZEN_MODULES = ("conv1", "bn1", "layer1")


def build_trunk(cfg: ClassifyConfig, load_pretrained: bool = True) -> nn.Module:
    """timm ``features_only`` trunk returning layer2 and layer3 (layer4 is never built). Weights
    come from the file ``cfg.pretrained`` names (``kzlib.weights``); nothing is ever downloaded."""
    if cfg.backbone not in timm.list_models():
        raise UsageError(f"unknown backbone {cfg.backbone!r}: use a timm ResNet/ResNeXt name such as resnet152 "
                         "or resnext101_32x8d")
    kwargs = dict(features_only=True, out_indices=(2, 3), **resnet_size_args(cfg.trunk_channels, cfg.trunk_blocks))
    trunk = timm.create_model(cfg.backbone, pretrained=False, **kwargs)
    if cfg.pretrained and load_pretrained:
        weights.load_into(trunk, weights.require(cfg.pretrained, cfg.backbone, what=f"classifier {cfg.backbone}"))
    return trunk


class Classifier(nn.Module):
    def __init__(self, cfg: ClassifyConfig, n_classes: int, load_pretrained: bool = True):
        super().__init__()
        self.trunk = build_trunk(cfg, load_pretrained)
        self.reductions = tuple(self.trunk.feature_info.reduction())
        channels = sum(self.trunk.feature_info.channels())
        self.roi_size = cfg.roi_size
        self.roi_sampling_ratio, self.roi_aligned = cfg.roi_sampling_ratio, cfg.roi_aligned
        self.channels_last = cfg.channels_last
        self.frozen_start = cfg.frozen_start
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.head = nn.Sequential(
            nn.Dropout(cfg.dropout),
            nn.Linear(channels * cfg.roi_size ** 2, cfg.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(cfg.dropout),
            nn.BatchNorm1d(cfg.hidden),
            nn.Linear(cfg.hidden, n_classes),
        )
        if self.frozen_start:
            for name in FROZEN_MODULES:
                for p in getattr(self.trunk, name).parameters():
                    p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_start:  # frozen BatchNorm statistics stay as they are
            for name in FROZEN_MODULES:
                getattr(self.trunk, name).eval()
        return self

    def roi_features(self, images: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """[sum of boxes, C2*r*r + C3*r*r] features; ``boxes`` are xyxy in image pixels, one tensor
        per image."""
        x = (images - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.trunk(x)
        pooled = [roi_align(f.float(), [b.float() for b in boxes], output_size=self.roi_size,
                            spatial_scale=1.0 / r, sampling_ratio=self.roi_sampling_ratio,
                            aligned=self.roi_aligned).flatten(1)
                  for f, r in zip(features, self.reductions)]
        return torch.cat(pooled, dim=1)

    def forward(self, images: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        return self.head(self.roi_features(images, boxes))

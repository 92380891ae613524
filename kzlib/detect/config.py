"""The detector's typed configuration (saved as config.json in every run folder)."""

from __future__ import annotations

from dataclasses import dataclass

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


@dataclass
class DetectConfig:
    # model
    backbone: str = "resnet152"
    fpn_channels: int = 256
    pretrained: str | None = None  # local file of ImageNet backbone weights; None: from scratch
    trainable_layers: int = 3  # with pretrained weights (frozen BatchNorm); from scratch all train
    init_from: str | None = None  # a detector checkpoint (another run's best.pth) to start from
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)  # one per FPN level, px at page_height
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    box_batch_per_image: int = 512  # proposals sampled per image for the box head while training
    # data
    page_height: int = 1500  # pages are rescaled to this height, for training and inference
    crop_width: int = 512
    crop_height: int = 384
    crops_per_page: int = 8  # an epoch = pages x crops_per_page random crops
    scale_aug: float = 0.2  # random rescale of the page by 1 +- scale_aug
    hsv_aug: tuple[int, int, int] = (7, 30, 30)  # hue, saturation, value shift limits
    min_visibility: float = 0.5  # boxes cut by the crop keep this fraction of their area or go
    # training (the original solution's settings)
    epochs: int = 45
    batch_size: int = 4
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"  # step or cosine
    lr_steps: tuple[int, ...] = (35,)
    lr_gamma: float = 0.1
    warmup_epochs: float = 1.0
    amp: bool = True  # fp16 autocast + GradScaler on CUDA; ignored on CPU
    # inference
    score_threshold: float = 0.5
    nms_iou: float = 0.25
    max_detections: int = 1200
    # runtime
    device: str = "auto"
    workers: int = 2
    seed: int = 0
    n_folds: int = 5

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone {self.backbone!r} is not one of {', '.join(BACKBONES)}")
        if len(self.anchor_sizes) != 5:
            raise ValueError("anchor_sizes needs one size per FPN level (5)")
        if self.schedule not in ("step", "cosine"):
            raise ValueError(f"schedule {self.schedule!r} is not step or cosine")
        for name in ("page_height", "crop_width", "crop_height", "crops_per_page", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")

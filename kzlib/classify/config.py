"""Typed configuration of a classifier run. Defaults are the original solution's ResNet-152 run;
``configs/classify_*.json`` hold the other presets."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ClassifyConfig:
    # model
    base: str = "resnet152"              # any timm ResNet/ResNeXt name, e.g. resnext101_32x8d
    pretrained: str = ""                 # local weight file for the trunk ("" = from scratch)
    init_from: str = ""                  # checkpoint of a classifier run to fine-tune from
    roi_size: int = 3
    hidden: int = 1024
    dropout: float = 0.5
    frozen_start: bool = False           # conv1/bn1/layer1 frozen and kept in eval mode
    # data
    page_height: int = 2528              # training pages are rescaled to this height
    test_height: int = 2528              # inference height (TTA scales go up from it)
    crop_width: int = 512
    crop_height: int = 768
    crops_per_page: int = 2              # the train set is repeated this many times per epoch
    scale_aug: float = 0.3
    hsv_aug: tuple[int, int, int] = (7, 30, 30)
    brightness_contrast: float = 0.2
    gamma_aug: tuple[int, int] = (80, 120)
    min_visibility: float = 0.5          # boxes less visible than this in a crop are dropped
    max_targets: int = 0                 # cap on boxes per batch, a multiple of 32 (0 = no cap)
    pseudo_oversample: int = 1           # pseudolabelled pages are repeated this many times
    add_missed_truth: bool = True        # also train on true boxes that no detector box matched
    # optimisation
    epochs: int = 50
    batch_size: int = 10
    accumulation_steps: int = 1
    lr: float = 14e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    lr_steps: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    warmup_epochs: float = 0.0
    amp: bool = True                     # fp16 autocast + GradScaler on CUDA; ignored on CPU
    validate_every: int = 1
    # inference
    n_tta: int = 1                       # scales used while validating during training
    top_k: int = 5
    # runtime
    device: str = "auto"
    workers: int = 2
    seed: int = 0
    n_folds: int = 5

    def __post_init__(self):
        if self.max_targets < 0 or self.max_targets % 32:
            raise ValueError(f"max_targets must be 0 or a positive multiple of 32, not {self.max_targets}")
        if self.accumulation_steps < 1 or self.batch_size < 1:
            raise ValueError("batch_size and accumulation_steps must be >= 1")
        if self.top_k < 1:
            raise ValueError("top_k must be >= 1")

"""Typed configuration of a classifier run. Defaults are the original solution's ResNet-152 run
(lopuhin/kaggle-kuzushiji-2019, ``kuzushiji/classify/main.py``) except ``amp``: upstream trained that
run in fp32 on a 16 GB P100, the kit's default is fp16 on CUDA so that it fits an 11 GB card.
UPSTREAM.md lists every setting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kzlib.config import ConfigError, check_choices, check_positive, check_resnet_size, check_zoom_range


@dataclass
class ClassifyConfig:
    ALIASES: ClassVar[dict] = {"base": "backbone", "n_tta": "validate_n_tta"}  # old names, read for one release
    # fields added after work folders existed, with the value that does what was done before them:
    # a stage's fingerprint leaves them out while they hold it (kzlib.stages)
    ADDED: ClassVar[dict] = {"amp_dtype": "fp16", "amp_cpu_dtype": "bf16", "time_budget_s": 0.0,
                             "trunk_channels": (), "trunk_blocks": (), "cache_pages": False}
    # model
    backbone: str = "resnet152"          # any timm ResNet/ResNeXt name, e.g. resnext101_32x8d
    pretrained: str = "auto"             # trunk weights: "auto" (the kit's ImageNet file for the base, see
    #                                      kzlib.weights), a file name or path, or "" for random init
    trunk_channels: tuple[int, ...] = () # a ResNet trunk resized: its 4 stages' widths (e.g. [32, 64, 128, 256]:
    #                                      half a resnet18's; the stem unchanged); () as the backbone names it
    trunk_blocks: tuple[int, ...] = ()   # and blocks per stage (e.g. [1, 1, 1, 1]); both need pretrained ""
    init_from: str = ""                  # checkpoint of a classifier run to fine-tune from
    roi_size: int = 3
    roi_sampling_ratio: int = -1         # torchvision roi_align: -1 adaptive (upstream), or fixed points
    roi_aligned: bool = False            # half-pixel aligned roi_align (upstream: False)
    hidden: int = 1024
    dropout: float = 0.5
    frozen_start: bool = False           # conv1/bn1/layer1 frozen and kept in eval mode (needs pretrained)
    # data
    page_size: int = 2528                # training crops are cut at this page size (along page_side)
    test_size: int = 2528                # inference page size (TTA scales go up from it)
    page_side: str = "longest"           # "longest" (LongestMaxSize, as upstream) or "height"
    crop_width: int = 512
    crop_height: int = 768
    crops_per_page: int = 6              # the train set is repeated this many times per epoch (--repeat-train)
    scale_aug: float = 0.3               # crop region height uniform in crop_height*(1 +- scale_aug)
    zoom_range: tuple[float, ...] = ()   # (lo, hi): magnification log-uniform in [lo, hi] instead of scale_aug
    glyph_height: float = 0.0            # > 0: every page (train and test) scaled so that its boxes' median
    #                                      height is this many pixels, instead of page_size/test_size (0: off)
    hsv_aug: tuple[int, int, int] = (7, 30, 30)
    brightness_contrast: float = 0.2
    gamma_aug: tuple[int, int] = (80, 120)
    min_visibility: float = 0.99         # boxes less visible than this in a crop are dropped
    resample_empty: bool = True          # a crop without boxes is replaced by another
    max_targets: int = 0                 # cap on boxes per batch, a multiple of 32 (0 = no cap)
    pseudo_oversample: int = 1           # pseudolabelled pages are repeated this many times
    add_missed_truth: bool = False       # also train on true boxes that no detector box matched
    cache_pages: bool = False            # keep the decoded pages in memory between crops (small datasets)
    # optimisation
    epochs: int = 50
    batch_size: int = 10
    accumulation_steps: int = 1
    lr: float = 14e-3
    optimizer: str = "sgd"  # sgd (momentum), or adamw (faster from scratch on short budgets)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    lr_steps: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0          # cross-entropy label smoothing (0: none, as upstream)
    amp: bool = True                     # fp16 autocast + GradScaler on CUDA (upstream's ResNet-152: fp32)
    amp_cpu: bool = False  # bf16 autocast on the CPU (about 2x faster convolutions with AVX512-BF16/AMX)
    amp_dtype: str = "fp16"  # autocast dtype on CUDA: fp16 (with GradScaler) or bf16 (Ampere and newer)
    amp_cpu_dtype: str = "bf16"  # on the CPU: bf16 (used only where the CPU has it natively) or fp16
    channels_last: bool = False  # NHWC memory format (faster convolutions on recent CPUs and GPUs)
    validate_every: int = 1
    # inference
    validate_n_tta: int = 1              # TTA scales while validating during training
    top_k: int = 50                      # classes and logits written per box in the detailed files
    time_budget_s: float = 0.0  # > 0: the epochs are cut to what fits in this many seconds, from the speed of
    #                             a few steps measured at the start (the run's config.json records the epochs chosen)
    # runtime
    device: str = "auto"
    workers: int = 2
    seed: int = 0
    n_folds: int = 5

    def __post_init__(self):
        if self.max_targets < 0 or self.max_targets % 32:
            raise ConfigError(f"max_targets: must be 0 or a positive multiple of 32, not {self.max_targets}")
        check_positive(self, "batch_size", "accumulation_steps", "top_k", "epochs", "crops_per_page", "page_size",
                       "test_size", "crop_width", "crop_height", "hidden", "roi_size", "validate_n_tta",
                       "pseudo_oversample", "lr", "n_folds")
        check_positive(self, "weight_decay", "warmup_epochs", "workers", "momentum", "time_budget_s", "validate_every",
                       allow_zero=True)
        check_choices(self, optimizer=("sgd", "adamw"), schedule=("step", "cosine"), page_side=("height", "longest"),
                      amp_dtype=("fp16", "bf16"), amp_cpu_dtype=("bf16", "fp16"))
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.scale_aug < 1 or not 0 <= self.dropout < 1 or not 0 <= self.min_visibility <= 1:
            raise ConfigError("scale_aug and dropout must lie in [0, 1), min_visibility in [0, 1]")
        check_zoom_range(self.zoom_range)
        check_resnet_size(self, "trunk_channels", "trunk_blocks")
        if self.frozen_start and not self.pretrained and not self.init_from:
            raise ConfigError("frozen_start: freezes conv1/bn1/layer1 at their pretrained values, but no pretrained "
                              "weights are given (pretrained is empty); set pretrained, or frozen_start false")

"""The detector's typed configuration (saved as config.json in every run folder).

Defaults are the original solution's (lopuhin/kaggle-kuzushiji-2019, ``kuzushiji/segment``);
UPSTREAM.md lists every setting with its upstream file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kzlib.config import ConfigError, check_choices, check_positive, check_resnet_size, check_zoom_range

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


@dataclass
class DetectConfig:
    # fields added after work folders existed, with the value that does what was done before them:
    # a stage's fingerprint leaves them out while they hold it (kzlib.stages)
    ADDED: ClassVar[dict] = {"amp_dtype": "fp16", "amp_cpu_dtype": "bf16", "time_budget_s": 0.0, "validate_every": 1,
                             "rpn_pre_nms_train": 2000, "rpn_post_nms_train": 2000, "backbone_channels": (),
                             "backbone_blocks": (), "cache_pages": False, "glyph_height": 0.0,
                             "roi_sampling_ratio": 2}
    # model
    backbone: str = "resnet152"
    fpn_channels: int = 256
    pretrained: str = "auto"  # ImageNet backbone weights: "auto" (the kit's file for the backbone,
    #                           see kzlib.weights), a file name or path, or "" to train from scratch
    backbone_channels: tuple[int, ...] = ()  # the ResNet resized: its 4 stages' widths (e.g. [32, 64, 128, 256]:
    #                                          half a resnet18's; the stem unchanged); () as the backbone names it
    backbone_blocks: tuple[int, ...] = ()  # and blocks per stage (e.g. [1, 1, 1, 1]); both need pretrained ""
    trainable_layers: int = 3  # with pretrained weights (frozen BatchNorm): layer2-4 train
    init_from: str = ""  # a detector checkpoint (another run's best.pth) to start from
    anchor_sizes: tuple[int, ...] = (12, 24, 32, 64, 96)  # one per FPN level, px at page_size
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    box_batch_per_image: int = 512  # proposals sampled per image for the box head while training
    rpn_pre_nms_train: int = 2000  # training: the RPN's best anchors per level before NMS (torchvision's default)
    rpn_post_nms_train: int = 2000  # training: proposals kept after NMS (torchvision's default); fewer: cheaper steps
    roi_sampling_ratio: int = 2  # the box head's roi_align: sampling points per bin side (torchvision's default 2;
    #                              1: a quarter of the points, for glyph-sized boxes a bin is about a feature pixel;
    #                              0: torchvision's adaptive count, ceil(box side / 7) a bin side)
    # data
    page_size: int = 1685  # pages are read with this many pixels along page_side (train and test)
    page_side: str = "longest"  # "longest" (LongestMaxSize, as upstream) or "height"
    crop_width: int = 512
    crop_height: int = 384
    crops_per_page: int = 2  # an epoch = pages x crops_per_page random crops (upstream: 2 passes)
    scale_aug: float = 0.1425  # crop region height uniform in crop_height*(1 +- scale_aug) at page_size
    zoom_range: tuple[float, ...] = ()  # (lo, hi): magnification log-uniform in [lo, hi] instead of scale_aug
    hsv_aug: tuple[int, int, int] = (7, 10, 10)  # hue, saturation, value shift limits
    brightness_contrast: float = 0.2
    gamma_aug: tuple[int, int] = (80, 120)
    min_visibility: float = 0.5  # boxes cut by the crop keep this fraction of their area or go
    glyph_height: float = 0.0  # > 0: pages scaled so that their boxes' median height is this many pixels
    #                            instead of page_size: in training from the true boxes, on a page to predict
    #                            from a first pass at page_size (two passes; 0: off, one pass, as upstream)
    cache_pages: bool = False  # keep the decoded pages in memory between crops (small datasets, e.g. the demo)
    # training
    epochs: int = 45
    batch_size: int = 16
    lr: float = 0.01
    optimizer: str = "sgd"  # sgd (momentum), or adamw (faster from scratch on short budgets)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"  # step or cosine
    lr_steps: tuple[int, ...] = (35,)
    lr_gamma: float = 0.1
    warmup_epochs: float = 0.5
    amp: bool = False  # fp16 autocast + GradScaler on CUDA (upstream trained in fp32); ignored on CPU
    amp_cpu: bool = False  # bf16 autocast on the CPU (about 2x faster convolutions with AVX512-BF16/AMX)
    amp_dtype: str = "fp16"  # autocast dtype on CUDA: fp16 (with GradScaler) or bf16 (Ampere and newer)
    amp_cpu_dtype: str = "bf16"  # on the CPU: bf16 (used only where the CPU has it natively) or fp16
    channels_last: bool = False  # NHWC memory format (faster convolutions on recent CPUs and GPUs)
    # inference
    score_threshold: float = 0.5
    nms_iou: float = 0.25
    max_detections: int = 1000
    rpn_pre_nms_test: int = 1000
    rpn_post_nms_test: int = 1000
    validate_every: int = 1  # validate on the held-out pages every this many epochs, and after the last
    time_budget_s: float = 0.0  # > 0: the epochs are cut to what fits in this many seconds, from the speed of
    #                             a few steps measured at the start (the run's config.json records the epochs chosen)
    # runtime
    device: str = "auto"
    workers: int = 2
    seed: int = 0
    n_folds: int = 5

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone: {self.backbone!r} is not one of {', '.join(BACKBONES)}")
        if len(self.anchor_sizes) != 5:
            raise ConfigError("anchor_sizes: needs one size per FPN level (5)")
        check_choices(self, optimizer=("sgd", "adamw"), schedule=("step", "cosine"), page_side=("height", "longest"),
                      amp_dtype=("fp16", "bf16"), amp_cpu_dtype=("bf16", "fp16"))
        check_positive(self, "page_size", "crop_width", "crop_height", "crops_per_page", "epochs", "batch_size",
                       "lr", "fpn_channels", "max_detections", "rpn_pre_nms_test", "rpn_post_nms_test",
                       "n_folds", "box_batch_per_image", "rpn_pre_nms_train",
                       "rpn_post_nms_train")
        check_positive(self, "weight_decay", "warmup_epochs", "workers", "momentum", "time_budget_s", "glyph_height",
                       "validate_every", "roi_sampling_ratio", allow_zero=True)
        if not 0 <= self.scale_aug < 1:
            raise ConfigError(f"scale_aug: must be in [0, 1), got {self.scale_aug}")
        check_zoom_range(self.zoom_range)
        check_resnet_size(self, "backbone_channels", "backbone_blocks")
        if not 0 <= self.min_visibility <= 1 or not 0 <= self.score_threshold <= 1 or not 0 < self.nms_iou <= 1:
            raise ConfigError("min_visibility, score_threshold and nms_iou must lie in [0, 1]")
        if not 0 <= self.trainable_layers <= 5:
            raise ConfigError(f"trainable_layers: must be within 0..5, got {self.trainable_layers}")


TEST_BOX_RULES = ("fold0", "vote")
TEST_MATCHES = ("centre", "iou")


@dataclass(frozen=True)
class TestBoxRule:
    """Which detectors' boxes every classifier reads on the test pages: ``fold0``, the fold-0
    detector's (the original solution), or ``vote``, the folds' boxes voted (a box is kept when
    ``votes`` folds agree on it, a majority when 0; ``kzlib.detect.predict.vote_boxes``). The vote
    takes two folds' boxes for one glyph when ``match`` says so: ``iou``, IoU >= 0.5 (the first
    rule, and still the default), or ``centre``, the centre of either lies inside the other (edges
    included; the metric's test of a hit). One rule for the runner, its bundles and ``kzlib read``."""
    __test__: ClassVar[bool] = False  # not a test class, whatever its name
    rule: str = "fold0"
    votes: int = 0
    n_folds: int = 1
    match: str = "iou"

    def __post_init__(self) -> None:
        if self.rule not in TEST_BOX_RULES:
            raise ConfigError(f"test_box_rule: {self.rule!r} is not fold0 or vote")
        if not 0 <= self.votes <= len(self.folds):
            raise ConfigError(f"test_votes: must be within 0..{len(self.folds)}, got {self.votes}")
        if self.match not in TEST_MATCHES:
            raise ConfigError(f"test_match: {self.match!r} is not centre or iou")

    @property
    def folds(self) -> list[int]:
        """The folds whose detectors find the test boxes."""
        return list(range(self.n_folds)) if self.rule == "vote" else [0]

    @property
    def min_votes(self) -> int:
        """Detectors that must find a box for it to be kept."""
        return self.votes or len(self.folds) // 2 + 1

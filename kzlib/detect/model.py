"""Faster R-CNN with a ResNet FPN backbone and one foreground class ("a character")."""

from __future__ import annotations


import timm
import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign, box_area, box_iou, misc as misc_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from kzlib import weights
from kzlib.config import resnet_size_args
from kzlib.detect.config import DetectConfig


class SeededSampler(BalancedPositiveNegativeSampler):
    """torchvision's anchor / proposal sampler, seeded per image: ``seeds`` (one per image, set
    before a training forward) make the same crop draw the same samples in any batch, any number of
    processes and after a resume."""

    seeds: list[int] | None = None

    def __call__(self, matched_idxs):
        if self.seeds is None or len(self.seeds) != len(matched_idxs):
            return super().__call__(matched_idxs)
        pos, neg = [], []
        for seed, matched in zip(self.seeds, matched_idxs):
            with torch.random.fork_rng(devices=[matched.device] if matched.is_cuda else []):
                torch.manual_seed(seed)
                p, n = super().__call__([matched])
            pos += p
            neg += n
        return pos, neg


def seed_samplers(model: FasterRCNN, seeds: list[int] | None) -> None:
    """The per-image seeds of the next training forward (None: torch's global generator)."""
    sampler_seeds = [None, None] if seeds is None else [[s * 2 + 1 for s in seeds], [s * 2 + 2 for s in seeds]]
    model.rpn.fg_bg_sampler.seeds, model.roi_heads.fg_bg_sampler.seeds = sampler_seeds


class FrozenBatchNorm2d(misc_ops.FrozenBatchNorm2d):
    """torchvision's frozen BatchNorm, returning its input's dtype: torchvision's computes in the
    fp32 of its statistics, so under fp16 autocast every frozen BatchNorm turned the activations back
    to fp32 and the next convolution kept both copies (more memory than fp32 training)."""

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        bias = self.bias - self.running_mean * scale
        return x * scale.to(x.dtype).reshape(1, -1, 1, 1) + bias.to(x.dtype).reshape(1, -1, 1, 1)


class Fp32Anchors(AnchorGenerator):
    """Anchors in fp32 whatever the feature maps' dtype (fp16 has whole-pixel steps above 1024 px)."""

    def forward(self, image_list, feature_maps):
        shapes = [f.new_empty((0, 0, *f.shape[-2:]), dtype=torch.float32) for f in feature_maps]
        return super().forward(image_list, shapes)


def _fp32_outputs(module, inputs, output):
    """A head's outputs in fp32: torchvision decodes boxes in its deltas' dtype, and fp16 would snap
    every coordinate above 1024 px to a whole pixel (above 2048 px to an even one)."""
    return tuple([o.float() for o in x] if isinstance(x, list) else x.float() for x in output)


def overlap_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """``torchvision.ops.box_iou`` (x1 y1 x2 y2 boxes; the same [N, M] matrix, bit for bit), working
    only on the pairs whose x ranges can overlap: every other pair's IoU is 0. The RPN's matcher
    compares each crop's characters with all its anchors (16,368 for the demo's 512x384 crops), and
    torchvision forms every pair; leaving out the others made the demo detector's training step
    0-19% faster on a 2-core CPU (four calls of ``benchmarks/anchor_iou_speed.py``). The anchors are sorted by left
    edge within bands of similar width, and each character reads the anchors whose left edge lies
    within a band's widest anchor (+1 px) of its own.
    torchvision's ``box_iou`` does the rest: boxes on a GPU (where the full matrix is cheap and this
    would wait on the device), boxes that are not finite or have no width or height, and dtypes
    other than one of float32 / float64."""
    n1, n2 = len(boxes1), len(boxes2)
    dtype = boxes1.dtype
    if boxes1.device.type != "cpu" or boxes2.dtype != dtype or dtype not in (torch.float32, torch.float64):
        return box_iou(boxes1, boxes2)
    out = boxes1.new_zeros((n1, n2))
    if n1 == 0 or n2 == 0:
        return out
    sides1, sides2 = boxes1[:, 2:] - boxes1[:, :2], boxes2[:, 2:] - boxes2[:, :2]
    if not (torch.isfinite(boxes1).all() and torch.isfinite(boxes2).all() and (sides1 > 0).all()
            and (sides2 > 0).all()):
        return box_iou(boxes1, boxes2)
    w2 = sides2[:, 0]
    band = torch.floor(torch.log2(w2.clamp(min=1)))  # widths within a factor of 2
    left1, right1 = boxes1[:, 0].contiguous(), boxes1[:, 2].contiguous()
    firsts, seconds = [], []
    for b in torch.unique(band):
        members = torch.nonzero(band == b).squeeze(1)
        lefts, order = torch.sort(boxes2[:, 0].index_select(0, members))
        # boxes2[j] can overlap boxes1[i] only if left2 < right1 and left2 > left1 - width2
        lo = torch.searchsorted(lefts, left1 - (w2.index_select(0, members).max() + 1))
        counts = (torch.searchsorted(lefts, right1) - lo).clamp(min=0)
        total = int(counts.sum())
        if total:
            starts = torch.repeat_interleave(lo - (counts.cumsum(0) - counts), counts)
            firsts.append(torch.repeat_interleave(torch.arange(n1), counts))
            seconds.append(members[order[starts + torch.arange(total)]])
    if not firsts:
        return out
    i1, i2 = torch.cat(firsts), torch.cat(seconds)
    b1, b2 = boxes1.index_select(0, i1), boxes2.index_select(0, i2)
    # torchvision's arithmetic, pair by pair
    wh = (torch.min(b1[:, 2:], b2[:, 2:]) - torch.max(b1[:, :2], b2[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = box_area(boxes1).index_select(0, i1) + box_area(boxes2).index_select(0, i2) - inter
    out.view(-1).index_put_((i1 * n2 + i2,), inter / union)
    return out


class PageTransform(GeneralizedRCNNTransform):
    """Normalise and batch, but never resize: the kit scales pages itself (config.page_size)."""

    def resize(self, image, target=None):
        return image, target


def build_model(cfg: DetectConfig, load_pretrained: bool = True) -> FasterRCNN:
    """The detector of ``cfg``. ``load_pretrained=False`` builds the same architecture without
    reading the pretrained file (inference: the weights come from the run's checkpoint). With
    pretrained weights the backbone has frozen BatchNorm and trains its last ``trainable_layers``
    stages (layer2-4 by default), as torchvision's ``resnet_fpn_backbone``."""
    scratch = not cfg.pretrained
    # From scratch, frozen BatchNorm would do nothing: train ordinary BatchNorm instead.
    norm = nn.BatchNorm2d if scratch else FrozenBatchNorm2d
    resized = resnet_size_args(cfg.backbone_channels, cfg.backbone_blocks)
    if resized:  # timm's ResNet takes other widths and depths; its layers have torchvision's names
        resnet = timm.create_model(cfg.backbone, pretrained=False, norm_layer=norm, **resized)
        stages = [info["num_chs"] for info in resnet.feature_info[1:]]
    else:
        resnet = torchvision.models.get_model(cfg.backbone, weights=None, norm_layer=norm)
        c = resnet.inplanes // 8  # channels of layer1 (64 for basic blocks, 256 for bottlenecks)
        stages = [c, c * 2, c * 4, c * 8]
    if not scratch and load_pretrained:
        weights.load_into(resnet, weights.require(cfg.pretrained, cfg.backbone, what="detector"))
    trainable = 5 if scratch else cfg.trainable_layers
    train_prefixes = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable]
    if trainable == 5:
        train_prefixes.append("bn1")
    for name, p in resnet.named_parameters():
        p.requires_grad_(any(name.startswith(t) for t in train_prefixes))
    backbone = BackboneWithFPN(
        resnet,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=stages,
        out_channels=cfg.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
    anchors = Fp32Anchors(
        sizes=tuple((s,) for s in cfg.anchor_sizes),
        aspect_ratios=(tuple(cfg.aspect_ratios),) * len(cfg.anchor_sizes),
    )
    model = FasterRCNN(
        backbone,
        num_classes=2,
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], 7, cfg.roi_sampling_ratio),
        box_score_thresh=cfg.score_threshold,
        box_nms_thresh=cfg.nms_iou,
        box_detections_per_img=cfg.max_detections,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_test,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_train,
        box_batch_size_per_image=cfg.box_batch_per_image,
    )
    t = model.transform
    model.transform = PageTransform(t.min_size, t.max_size, t.image_mean, t.image_std)
    for head in (model.rpn, model.roi_heads):
        old = head.fg_bg_sampler
        head.fg_bg_sampler = SeededSampler(old.batch_size_per_image, old.positive_fraction)
    model.rpn.box_similarity = overlap_box_iou  # the anchor matcher's IoU, the same figures, fewer pairs
    model.rpn.head.register_forward_hook(_fp32_outputs)  # hooks: the checkpoints' keys stay as they are
    model.roi_heads.box_predictor.register_forward_hook(_fp32_outputs)
    return model

"""Training crops and inference pages for the detector.

Boxes are handed to albumentations in normalised page coordinates, so the page can be decoded at
any size (OpenCV's reduced decode) and every geometric step (pad, crop, resize) moves image and
boxes together inside albumentations.
"""

from __future__ import annotations

import numpy as np
import torch

from kzlib.detect.config import DetectConfig
from kzlib.pages import CropSpec, Page, PageCrops, colour_transforms, to_tensor
from kzlib.training import sample_seed


def crop_spec(cfg: DetectConfig) -> CropSpec:
    return CropSpec(cfg.page_size, cfg.page_side, cfg.crop_height, cfg.crop_width, cfg.scale_aug, cfg.min_visibility,
                    tuple(colour_transforms(cfg.hsv_aug, cfg.brightness_contrast, cfg.gamma_aug)),
                    zoom_range=tuple(cfg.zoom_range), glyph_height=cfg.glyph_height, cache_pages=cfg.cache_pages)


class CropDataset(PageCrops):
    """Random crops of the pages with their boxes as the detector's targets (one class); crops
    without characters are kept, so the detector learns to find nothing."""

    def __init__(self, pages: list[Page], cfg: DetectConfig):
        super().__init__(pages, [np.ones(len(p.boxes), dtype=np.int64) for p in pages], crop_spec(cfg),
                         cfg.crops_per_page, cfg.seed)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        crop, boxes, labels = self.crop(i)
        seed = sample_seed(self.seed, self.epoch, i, 99)  # the crop's proposal sampling (SeededSampler)
        return to_tensor(crop), {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
                                 "seed": torch.tensor(seed)}


def collate(batch):
    images, targets = zip(*batch)
    return list(images), list(targets)

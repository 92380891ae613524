"""Training crops and inference pages for the detector.

Boxes are handed to albumentations in normalised page coordinates, so the page can be decoded at
any size (OpenCV's reduced decode) and every geometric step (scale, pad, crop) moves image and
boxes together inside albumentations.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch

from kzlib.detect.config import DetectConfig
from kzlib.pages import Page, PageCrops, to_tensor


def crop_transform(cfg: DetectConfig) -> A.Compose:
    h, w = cfg.crop_height, cfg.crop_width
    hue, sat, val = cfg.hsv_aug
    return A.Compose(
        [
            A.RandomScale(scale_limit=cfg.scale_aug, interpolation=cv2.INTER_AREA, p=1.0),
            A.PadIfNeeded(min_height=h, min_width=w, border_mode=cv2.BORDER_CONSTANT, fill=255, position="random"),
            A.RandomCrop(height=h, width=w),
            A.HueSaturationValue(hue_shift_limit=hue, sat_shift_limit=sat, val_shift_limit=val, p=0.8),
        ],
        bbox_params=A.BboxParams(format="albumentations", label_fields=["labels"],
                                 min_visibility=cfg.min_visibility, clip=True),
    )


class CropDataset(PageCrops):
    """Random crops of the pages with their boxes as the detector's targets (one class)."""

    def __init__(self, pages: list[Page], cfg: DetectConfig):
        super().__init__(pages, [np.ones(len(p.boxes), dtype=np.int64) for p in pages], crop_transform(cfg),
                         cfg.page_height, cfg.crops_per_page, cfg.seed)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        crop, boxes, labels = self.crop(i)
        return to_tensor(crop), {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels)}


def collate(batch):
    images, targets = zip(*batch)
    return list(images), list(targets)

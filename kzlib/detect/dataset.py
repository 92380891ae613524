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
from torch.utils.data import Dataset

from kzlib.data import image_size, read_image
from kzlib.detect.config import DetectConfig
from kzlib.pages import Page, normalised_xyxy, to_tensor
from kzlib.training import sample_seed


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


class CropDataset(Dataset):
    """``len(pages) * crops_per_page`` random crops per epoch, pages with no characters included
    (they teach the model to find nothing). Sample i of epoch e always gets the same randomness."""

    def __init__(self, pages: list[Page], cfg: DetectConfig):
        self.pages = pages
        self.cfg = cfg
        self.epoch = 0
        self.transform = crop_transform(cfg)
        self.norm_boxes = []
        for p in pages:
            w, h = image_size(p.path)
            self.norm_boxes.append(normalised_xyxy(p.boxes, w, h))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pages) * self.cfg.crops_per_page

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        k = i % len(self.pages)
        image = read_image(self.pages[k].path, height=self.cfg.page_height)
        boxes = self.norm_boxes[k]
        self.transform.set_random_seed(sample_seed(self.cfg.seed, self.epoch, i))
        out = self.transform(image=image, bboxes=boxes, labels=np.zeros(len(boxes), dtype=np.int64))
        crop = out["image"]
        ch, cw = crop.shape[:2]
        b = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4) * [cw, ch, cw, ch]
        b = b[((b[:, 2] - b[:, 0]) >= 1) & ((b[:, 3] - b[:, 1]) >= 1)]
        target = {"boxes": torch.from_numpy(b.astype(np.float32)), "labels": torch.ones(len(b), dtype=torch.int64)}
        return to_tensor(crop), target


def collate(batch):
    images, targets = zip(*batch)
    return list(images), list(targets)

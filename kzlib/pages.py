"""Pages as the training stages see them (image path, boxes, classes), the fold split shared by
the detector and the classifier, and the small array conversions both use."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.ops import box_convert, box_iou

from kzlib.data import DataDir, DataError, image_size, make_folds, parse_labels, read_image, read_labels_csv
from kzlib.training import sample_seed


@dataclass
class Page:
    image_id: str
    path: Path
    boxes: np.ndarray  # [N, 4] x y w h in original pixels
    codes: list[str] = field(default_factory=list)  # class of each box, when known


def normalised_xyxy(boxes_xywh: np.ndarray, width: int, height: int) -> np.ndarray:
    b = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    xyxy = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1) / [width, height, width, height]
    return np.clip(xyxy, 0.0, 1.0)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


class PageCrops(Dataset):
    """``len(pages) * crops_per_page`` random crops per epoch of pages rescaled to ``page_height``,
    pages without characters included. ``transform`` is an albumentations pipeline with bbox params
    in the ``albumentations`` (normalised xyxy) format and a ``labels`` field. Sample i of epoch e
    always gets the same randomness, so a resumed run repeats an uninterrupted one."""

    def __init__(self, pages: Sequence[Page], labels: Sequence[np.ndarray], transform, page_height: int,
                 crops_per_page: int, seed: int):
        self.pages, self.labels, self.transform = list(pages), list(labels), transform
        self.page_height, self.crops_per_page, self.seed = page_height, crops_per_page, seed
        self.epoch = 0
        self.norm_boxes = [normalised_xyxy(p.boxes, *image_size(p.path)) for p in self.pages]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pages) * self.crops_per_page

    def crop(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(crop image, its boxes as xyxy pixels, their labels); boxes under a pixel are dropped."""
        k = i % len(self.pages)
        image = read_image(self.pages[k].path, height=self.page_height)
        self.transform.set_random_seed(sample_seed(self.seed, self.epoch, i))
        out = self.transform(image=image, bboxes=self.norm_boxes[k], labels=self.labels[k])
        crop = out["image"]
        ch, cw = crop.shape[:2]
        b = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4) * [cw, ch, cw, ch]
        y = np.asarray(out["labels"], dtype=np.int64)
        keep = ((b[:, 2] - b[:, 0]) >= 1) & ((b[:, 3] - b[:, 1]) >= 1)
        return crop, b[keep].astype(np.float32), y[keep]


def xyxy_tensor(boxes_xywh) -> torch.Tensor:
    return box_convert(torch.tensor(np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)), "xywh", "xyxy")


def best_iou(a_xywh, b_xywh) -> tuple[np.ndarray, np.ndarray]:
    """For each box of ``a``, the highest IoU with a box of ``b`` and that box's index
    (0 and -1 when ``b`` is empty)."""
    a, b = xyxy_tensor(a_xywh), xyxy_tensor(b_xywh)
    if len(b) == 0 or len(a) == 0:
        return np.zeros(len(a)), np.full(len(a), -1)
    best, idx = box_iou(a, b).max(dim=1)
    return best.numpy(), idx.numpy()


def held_out_ids(ids: Sequence[str], fold: int, n_folds: int, source: Path) -> set[str]:
    if not 0 <= fold < n_folds:
        raise DataError(f"fold {fold} is outside 0..{n_folds - 1}")
    folds = make_folds(list(ids), n_folds)
    held = set(folds.loc[folds["fold"] == fold, "image_id"])
    if not held:
        raise DataError(f"{source}: fold {fold} has no pages ({folds['book_id'].nunique()} books in "
                        f"{n_folds} folds); pass --val-images to choose held-out pages")
    return held


def split_pages(data_dir: Path, fold: int, n_folds: int, val_images: Sequence[str] | None = None):
    """(train pages, held-out pages) with their true boxes and classes: the fold's books are held
    out, or ``val_images`` when given (data with fewer books than folds, like a single-book sample)."""
    d = DataDir(data_dir)
    d.require("train_csv", "train_images")
    df = read_labels_csv(d.train_csv)
    ids = df["image_id"].tolist()
    if val_images:
        unknown = [i for i in val_images if i not in set(ids)]
        if unknown:
            raise DataError(f"{d.train_csv}: --val-images not in train.csv: {', '.join(unknown)}")
        held = set(val_images)
    else:
        held = held_out_ids(ids, fold, n_folds, d.train_csv)
    train, val = [], []
    for image_id, labels in zip(ids, df["labels"]):
        codes, boxes = parse_labels(labels, image_id=image_id, source=d.train_csv)
        (val if image_id in held else train).append(Page(image_id, d.image_path(image_id, "train"), boxes, list(codes)))
    if not train:
        raise DataError(f"{d.train_csv}: no training pages left once fold {fold} is held out")
    return train, val

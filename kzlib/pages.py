"""Pages as the training stages see them (image path, boxes, classes), the fold split shared by
the detector and the classifier, and the small array conversions both use."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torchvision.ops import box_convert, box_iou

from kzlib.data import DataDir, DataError, make_folds, parse_labels, read_labels_csv


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

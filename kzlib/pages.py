"""Pages as the training stages see them (image path, boxes, classes), the fold split shared by
the detector and the classifier, and the small array conversions both use."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.ops import box_convert, box_iou

from kzlib.data import DataDir, DataError, parse_labels, read_labels_csv
from kzlib.images import image_size, jpeg_reduction, read_image
from kzlib.folds import held_out
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


PAGE_SIDES = ("height", "longest")


def page_scale(width: int, height: int, size: float, side: str = "height") -> float:
    """The factor that brings a page of ``width`` x ``height`` to ``size`` along ``side``
    (``height``, or ``longest`` as the original solution's ``LongestMaxSize``)."""
    if side not in PAGE_SIDES:
        raise ValueError(f"page side {side!r} is not one of {', '.join(PAGE_SIDES)}")
    return size / (height if side == "height" else max(width, height))


GLYPH_ZOOM_LIMITS = (0.4, 2.5)  # how far glyph-height normalisation may move a page from its preset size


def glyph_zoom(boxes: np.ndarray, base: float, glyph_height: float) -> float:
    """A page's scale factor. ``base`` brings it to the preset's page size; with ``glyph_height`` > 0
    the factor instead brings the median height of its boxes (xywh, page pixels) to ``glyph_height``
    pixels, within ``GLYPH_ZOOM_LIMITS`` times ``base``, so books with larger or smaller glyphs are
    seen at the size the network learned. Pages without boxes keep ``base``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if glyph_height <= 0 or len(boxes) == 0:
        return base
    lo, hi = GLYPH_ZOOM_LIMITS
    return float(np.clip(glyph_height / max(np.median(boxes[:, 3]), 1.0), base * lo, base * hi))


def scaled_height(path: Path, size: float, side: str = "height") -> int:
    """The height a page is read at so that its ``side`` is ``size`` pixels."""
    w0, h0 = image_size(path)
    return max(1, int(round(h0 * page_scale(w0, h0, size, side))))


def colour_transforms(hsv: Sequence[int], brightness_contrast: float, gamma: Sequence[int]) -> list:
    """The colour augmentations of both training stages, with albumentations' default
    probabilities (0.5 each), as in the original solution."""
    hue, sat, val = hsv
    out = []
    if any(hsv):
        out.append(A.HueSaturationValue(hue_shift_limit=hue, sat_shift_limit=sat, val_shift_limit=val, p=0.5))
    if brightness_contrast:
        out.append(A.RandomBrightnessContrast(brightness_limit=brightness_contrast,
                                              contrast_limit=brightness_contrast, p=0.5))
    if tuple(gamma) != (100, 100):
        out.append(A.RandomGamma(gamma_limit=tuple(gamma), p=0.5))
    return out


@dataclass(frozen=True)
class CropSpec:
    """How training crops are cut. A crop is a region of the page at ``size`` (along ``side``)
    whose height is drawn uniformly from ``crop_height * (1 +- scale_aug)`` (width in the crop's
    aspect), resized to ``crop_height`` x ``crop_width`` — the original solution's
    ``RandomSizedCrop`` on pages of a fixed longest side. Only the region is resized: the page is
    decoded at the smallest JPEG reduction that keeps the region's resolution, then cropped.
    Regions larger than the page are padded with white paper.

    ``zoom_range`` (lo, hi), when given, replaces ``scale_aug``: the crop's magnification of the
    page at ``size`` is drawn log-uniformly from [lo, hi] (region height = crop_height / zoom), so
    books with glyphs several times larger or smaller are seen in training without the long tail of
    huge zooms that a wide uniform region height gives."""
    size: int
    side: str
    crop_height: int
    crop_width: int
    scale_aug: float
    min_visibility: float
    colour: tuple = ()
    resample_empty: bool = False   # draw another crop when one holds no box (classifier)
    zoom_range: tuple = ()         # (lo, hi): log-uniform magnification instead of scale_aug
    glyph_height: float = 0.0      # > 0: pages scaled so their median box is this high (glyph_zoom)
    cache_pages: bool = False      # keep every decoded page in memory (small datasets: the demo's 48 pages)


class PageCrops(Dataset):
    """``len(pages) * crops_per_page`` random crops per epoch (``CropSpec``), pages without
    characters included. Sample i of epoch e always gets the same randomness, so a resumed run
    repeats an uninterrupted one."""

    MAX_RESAMPLE = 10

    def __init__(self, pages: Sequence[Page], labels: Sequence[np.ndarray], spec: CropSpec, crops_per_page: int,
                 seed: int):
        self.pages, self.labels, self.spec = list(pages), list(labels), spec
        self.crops_per_page, self.seed = crops_per_page, seed
        self.epoch = 0
        self.sizes = [image_size(p.path) for p in self.pages]
        self.scales = [glyph_zoom(p.boxes, page_scale(w, h, spec.size, spec.side), spec.glyph_height)
                       for p, (w, h) in zip(self.pages, self.sizes)]
        self.norm_boxes = [normalised_xyxy(p.boxes, *wh) for p, wh in zip(self.pages, self.sizes)]
        self.colour = A.Compose(list(spec.colour)) if spec.colour else None
        self.cache: dict[tuple[int, int], np.ndarray] = {}

    def decoded(self, k: int, min_height: int) -> np.ndarray:
        """Page ``k`` decoded with at least ``min_height`` rows (``read_image``); with the spec's
        ``cache_pages``, kept (read-only) per page and JPEG reduction for the epochs that follow."""
        page = self.pages[k]
        if not self.spec.cache_pages:
            return read_image(page.path, min_height=min_height)
        key = (k, jpeg_reduction(self.sizes[k][1], min_height))
        image = self.cache.get(key)
        if image is None:
            image = read_image(page.path, min_height=min_height)
            image.flags.writeable = False  # crops are cut from it: nothing may change it in place
            self.cache[key] = image
        return image

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pages) * self.crops_per_page

    def crop(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(crop image, its boxes as xyxy pixels, their labels); boxes under a pixel are dropped."""
        for attempt in range(self.MAX_RESAMPLE + 1):
            k = (i + attempt * 7919) % len(self.pages)
            out = self._crop(k, sample_seed(self.seed, self.epoch, i, attempt))
            if len(out[1]) or not self.spec.resample_empty:
                return out
        return out

    def _crop(self, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        spec = self.spec
        h0 = self.sizes[k][1]
        rng = np.random.default_rng(seed)
        # region height in pixels of the page at spec.size, then in original pixels
        if spec.zoom_range:
            region_h = spec.crop_height / np.exp(rng.uniform(*np.log(spec.zoom_range)))
        else:
            region_h = spec.crop_height * rng.uniform(1 - spec.scale_aug, 1 + spec.scale_aug)
        region_h0 = region_h / self.scales[k]
        zoom = spec.crop_height / region_h0  # crop pixels per original pixel
        image = self.decoded(k, max(1, int(np.ceil(h0 * zoom))))
        s = image.shape[0] / h0
        rh = max(1, int(round(region_h0 * s)))
        rw = max(1, int(round(region_h0 * s * spec.crop_width / spec.crop_height)))
        geometry = A.Compose(
            [A.PadIfNeeded(min_height=rh, min_width=rw, border_mode=cv2.BORDER_CONSTANT, fill=255, position="random"),
             A.RandomCrop(height=rh, width=rw),
             A.Resize(spec.crop_height, spec.crop_width,
                      interpolation=cv2.INTER_AREA if rh > spec.crop_height else cv2.INTER_LINEAR)],
            bbox_params=A.BboxParams(format="albumentations", label_fields=["labels"],
                                     min_visibility=spec.min_visibility, clip=True))
        geometry.set_random_seed(seed)
        out = geometry(image=image, bboxes=self.norm_boxes[k], labels=self.labels[k])
        crop = out["image"]
        if self.colour is not None:
            self.colour.set_random_seed(seed)
            crop = self.colour(image=crop)["image"]
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


def split_pages(data_dir: Path, fold: int, n_folds: int, val_images: Sequence[str] | None = None):
    """(train pages, held-out pages) with their true boxes and classes: the fold's books are held
    out (by page when there are fewer books than folds, ``kzlib.folds``), or ``val_images`` when
    given."""
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
        held = set(held_out(ids, fold, n_folds, d.train_csv)[0])
    train, val = [], []
    for image_id, labels in zip(ids, df["labels"]):
        codes, boxes = parse_labels(labels, image_id=image_id, source=d.train_csv)
        (val if image_id in held else train).append(Page(image_id, d.image_path(image_id, "train"), boxes, list(codes)))
    if not train:
        raise DataError(f"{d.train_csv}: no training pages left once fold {fold} is held out")
    return train, val

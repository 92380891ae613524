"""Boxes files in, training crops and inference pages out.

A boxes file is the detector's ``oof_boxes.csv`` (with the ``true`` column: the class of the
matched character or ``seg_fp``) or ``test_boxes.csv``. Pseudolabel files are in the train.csv
format. Every crop moves image and boxes together inside albumentations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from kzlib.classify.config import ClassifyConfig
from kzlib.data import DataError, parse_labels, read_labels_csv
from kzlib.images import image_size, read_image
from kzlib.pages import CropSpec, Page, PageCrops, colour_transforms, scaled_height, to_tensor, xyxy_tensor

BOX_COLUMNS = ["image_id", "x", "y", "w", "h"]


def read_boxes(path: Path, known_ids: Sequence[str], need_true: bool, what: str = "train.csv") -> pd.DataFrame:
    """A detector boxes file, checked: its columns, finite numbers with positive sizes, image ids in
    ``known_ids`` and, with ``need_true``, a class on every row. Whether the boxes fit their pages
    is ``check_inside``'s job (it needs the image sizes)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: boxes file not found")
    try:
        df = pd.read_csv(path, dtype={"image_id": str, "true": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable boxes file ({str(e).splitlines()[0]})") from None
    need = BOX_COLUMNS + (["true"] if need_true else [])
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (have {', '.join(map(str, df.columns))})")
    for c in ("x", "y", "w", "h"):
        values = pd.to_numeric(df[c], errors="coerce").astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(values.to_numpy()) | ((values <= 0).to_numpy() if c in "wh" else False))
        if len(bad):
            raise DataError(f"{path}: row {bad[0] + 2}: {c} must be a finite {'positive ' if c in 'wh' else ''}number, "
                            f"got {str(df[c].iloc[bad[0]])!r}")
        df[c] = values
    known = set(known_ids)
    unknown = np.flatnonzero(~df["image_id"].isin(known).to_numpy())
    if len(unknown):
        r = unknown[0]
        raise DataError(f"{path}: row {r + 2}: image {df['image_id'].iloc[r]!r} is not in {what}")
    if need_true:
        blank = np.flatnonzero(df["true"].to_numpy() == "")
        if len(blank):
            raise DataError(f"{path}: row {blank[0] + 2}: empty 'true' class (use seg_fp for boxes matching nothing)")
    return df


def check_inside(df: pd.DataFrame, sizes: dict[str, tuple[int, int]], source: Path) -> None:
    """Fail on a box far outside its page or larger than it (a box of another scan, scaled, or
    garbage like w=1e12), and on a page whose boxes all fall outside it."""
    x0, y0 = df["x"].to_numpy(), df["y"].to_numpy()
    w, h = df["w"].to_numpy(), df["h"].to_numpy()
    x1, y1 = x0 + w, y0 + h
    wh = np.array([sizes[i] for i in df["image_id"]], dtype=np.float64).reshape(-1, 2)
    pw, ph = wh[:, 0], wh[:, 1]
    insane = (w > 1.5 * pw) | (h > 1.5 * ph) | (x0 < -pw) | (y0 < -ph) | (x1 > 2 * pw) | (y1 > 2 * ph)
    if insane.any():
        r = int(np.flatnonzero(insane)[0])
        raise DataError(f"{source}: row {r + 2}: box {x0[r]:g} {y0[r]:g} {w[r]:g} {h[r]:g} of image "
                        f"{df['image_id'].iloc[r]!r} does not fit its {int(pw[r])}x{int(ph[r])} page")
    inside = (x1 > 0) & (y1 > 0) & (x0 < pw) & (y0 < ph)
    per_page = pd.Series(inside).groupby(df["image_id"].to_numpy()).any()
    if not per_page.all():
        image_id = per_page.index[~per_page.to_numpy()][0]
        r = int(np.flatnonzero(df["image_id"].to_numpy() == image_id)[0])
        pw_, ph_ = sizes[image_id]
        raise DataError(f"{source}: row {r + 2}: every box of image {image_id!r} lies outside the page ({pw_}x{ph_})")


def pages_from_boxes(df: pd.DataFrame, ids: Sequence[str], paths: dict[str, Path]) -> list[Page]:
    """One page per id (in ``ids`` order), with the boxes file's rows of that page in file order;
    pages with no boxes get empty arrays."""
    groups = {k: g for k, g in df.groupby("image_id", sort=False)}
    pages = []
    for i in ids:
        g = groups.get(i)
        boxes = g[["x", "y", "w", "h"]].to_numpy(np.float64) if g is not None else np.empty((0, 4))
        codes = g["true"].tolist() if g is not None and "true" in g else []
        pages.append(Page(i, paths[i], boxes, codes))
    return pages


def pseudo_pages(path: Path, test_paths: dict[str, Path]) -> list[Page]:
    """Pages of a pseudolabel file (train.csv format) on test images."""
    df = read_labels_csv(path)
    pages = []
    for r, (image_id, labels) in enumerate(zip(df["image_id"], df["labels"])):
        if image_id not in test_paths:
            raise DataError(f"{path}: row {r + 2}: image {image_id!r} is not a test image (sample_submission.csv)")
        codes, boxes = parse_labels(labels, image_id=image_id, source=path, allow_seg_fp=True)
        pages.append(Page(image_id, test_paths[image_id], boxes.astype(np.float64), list(codes)))
    return pages


def class_index(pages: Sequence[Page], classes: Sequence[str], source: str) -> list[np.ndarray]:
    """Class indices of every page's boxes; a class outside ``classes`` is an error."""
    lookup = {c: k for k, c in enumerate(classes)}
    out = []
    for p in pages:
        idx = [lookup.get(c, -1) for c in p.codes]
        if -1 in idx:
            c = p.codes[idx.index(-1)]
            raise DataError(f"{source}: image {p.image_id!r}: class {c} is not in the model's class list "
                            f"({len(classes)} classes)")
        out.append(np.asarray(idx, dtype=np.int64))
    return out


def crop_spec(cfg: ClassifyConfig) -> CropSpec:
    return CropSpec(cfg.page_size, cfg.page_side, cfg.crop_height, cfg.crop_width, cfg.scale_aug, cfg.min_visibility,
                    tuple(colour_transforms(cfg.hsv_aug, cfg.brightness_contrast, cfg.gamma_aug)), cfg.resample_empty,
                    tuple(cfg.zoom_range), cfg.glyph_height, cfg.cache_pages)


class CropDataset(PageCrops):
    """Random crops; item = (image, boxes xyxy in crop pixels, class indices)."""

    def __init__(self, pages: Sequence[Page], labels: Sequence[np.ndarray], cfg: ClassifyConfig):
        super().__init__(pages, labels, crop_spec(cfg), cfg.crops_per_page, cfg.seed)

    def __getitem__(self, i: int):
        crop, boxes, labels = self.crop(i)
        return to_tensor(crop), torch.from_numpy(boxes), torch.from_numpy(labels)


def cap_targets(boxes: list[torch.Tensor], labels: list[torch.Tensor], max_targets: int,
                generator: torch.Generator | None = None):
    """Keep at most ``max_targets`` boxes in a batch, chosen at random, and round the count down
    to a multiple of 32 (few distinct head shapes: cudnn.benchmark tunes once). 0 = no cap."""
    n = sum(len(b) for b in boxes)
    if not max_targets or n <= 32 and n <= max_targets:
        return boxes, labels
    keep_n = min(n, max_targets)
    keep_n -= keep_n % 32
    if keep_n == n:
        return boxes, labels
    chosen = torch.zeros(n, dtype=torch.bool)
    chosen[torch.randperm(n, generator=generator)[:keep_n]] = True
    parts = torch.split(chosen, [len(b) for b in boxes])
    return [b[m] for b, m in zip(boxes, parts)], [y[m] for y, m in zip(labels, parts)]


def collate(batch):
    images, boxes, labels = zip(*batch)
    return torch.stack(images), list(boxes), list(labels)


def page_input(page: Page, size: int, side: str = "height") -> tuple[torch.Tensor, torch.Tensor]:
    """A whole page at ``size`` (along ``side``) and its boxes as xyxy pixels of that size."""
    w0, h0 = image_size(page.path)
    image = read_image(page.path, height=scaled_height(page.path, size, side))
    sx, sy = image.shape[1] / w0, image.shape[0] / h0
    return to_tensor(image), (xyxy_tensor(page.boxes) * torch.tensor([sx, sy, sx, sy], dtype=torch.float64)).float()

"""Synthetic pages in the competition's format: a stand-in for the real data, and a smoke test
for a Kaggle setup.

Pages are vertical columns read right to left, glyphs rendered from Japanese fonts, each book
with its own style (a mix of typefaces, glyph size, spacing, stroke weight, ink, paper, frame), so
that a held-out book tests generalisation the way the competition's test books do. Typefaces are
fewer than books and are shared; ``--holdout-font`` keeps a whole typeface out of the training
books (it writes the test books only), for the harder "never-seen hand" figure.

Sizes follow the real data (box height median 2.6% of the page height, 10-90% at 1.6-3.8%),
class frequencies are long-tailed (from ``--labels-source`` when given, else a Zipf-Mandelbrot law
fitted to the real head shares), and pages carry paper texture, stains, show-through, ink density
and blur variation, JPEG artefacts, unlabelled small glyphs between columns (like furigana) and
a few pages without characters.

    python -m kzlib.synth OUT_DIR --books 6 --pages-per-book 10 --test-pages 10 --classes 300 \\
        --height 1500 --seed 0 [--labels-source train_labels_777.csv] [--font FILE ...] \\
        [--holdout-font NAME] [--test-books N]

Besides the Kaggle layout it writes ``reading_order.csv`` (every page's characters in reading
order, in CODH's form: image_id,block_id,char_id,unicode,x,y,w,h), ``test_labels.csv`` (the test pages' truth, train.csv format,
for scoring a submission with ``python -m kzlib.metric``) and ``synth_meta.json`` (books, styles,
fonts, split).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from tqdm import tqdm

from kzlib.cli import one_line_errors, parser
from kzlib.data import char_to_code, format_labels, labels_table, parse_labels, read_labels_csv
from kzlib.fonts import Font, FontError, coverage, find_fonts, pil_font
from kzlib.io import write_csv_atomic, write_json_atomic

# Real statistics (train_labels_777.csv, scans ~3000-3900 px high): box height median 91 px,
# i.e. ~2.6% of a ~3500 px page; 10th-90th percentile 57-136 px.
REAL_BOX_HEIGHT_FRACTION = 91 / 3500
EMPTY_PAGE_RATE = 0.07  # 65 of 777 real pages have no characters
ZIPF_Q, ZIPF_S = 13.5, 1.52  # fitted to real shares: top-1 3.8%, top-10 27%, top-100 71%
HIRAGANA = [chr(c) for c in range(0x3041, 0x3097) if chr(c) not in "ぁぃぅぇぉっゃゅょゎゕゖ"]


@dataclass
class SynthConfig:
    out_dir: Path
    books: int = 6
    pages_per_book: int = 10
    test_pages: int = 10
    classes: int = 300
    height: int = 1500
    seed: int = 0
    labels_source: Path | None = None
    fonts: list[Path] = field(default_factory=list)
    holdout_font: str | None = None
    glyph_scale: float = 1.0  # glyphs this many times the real relative size (fewer per page)
    workers: int = 0  # 0: one per CPU core
    overwrite: bool = False
    test_books: int = 0  # books the test pages are dealt over; 0: one per 5 test pages


@dataclass
class BookStyle:
    """Everything that makes one book look like itself."""

    fonts: list[str]  # font file paths
    font_weights: list[float]
    box_height: float  # median glyph box height as a fraction of page height
    size_jitter: float
    aspect: float  # horizontal stretch of glyphs
    char_gap: float  # vertical gap between glyphs, in glyph heights
    col_gap: float  # gap between columns, in glyph heights
    stroke: float  # >0 thicker, <0 thinner, in glyph heights
    rotation: float  # degrees, std of per-glyph rotation
    drift: float  # horizontal wander of glyphs in a column, in glyph heights
    ink: list[int]  # RGB
    ink_density: float
    ink_variation: float
    paper: list[int]  # RGB
    texture: float
    stains: int
    blur: float  # pixels at 1500 px page height
    show_through: float
    frame: int  # 0 none, 1 single, 2 double
    scanner_border: float  # fraction of width, dark margin on the outer side (0: none)
    furigana: float  # rate of small unlabelled glyphs between columns
    aspect_page: float  # page width / height
    jpeg_quality: int


# ----------------------------------------------------------------------------------------------
# classes and layouts


def choose_classes(
    n: int, fonts: Sequence[Font], rng: np.random.Generator, labels_source: Path | None
) -> tuple[list[str], np.ndarray]:
    """``n`` characters every font covers, with long-tailed sampling weights."""
    common = set.intersection(*(set(coverage(f.path)) for f in fonts))
    if labels_source is not None:
        counts = _real_class_counts(labels_source)
        chars, weights = [], []
        for code, count in counts.items():
            ch = chr(int(code[2:], 16))
            if ord(ch) in common:
                chars.append(ch)
                weights.append(count)
            if len(chars) == n:
                break
        w = np.asarray(weights, dtype=np.float64)
    else:
        kana = [c for c in HIRAGANA if ord(c) in common]
        kanji = sorted(chr(c) for c in common if 0x4E00 <= c <= 0x9FFF)
        rng.shuffle(kana)
        n_kana = min(len(kana), max(1, int(n * 0.35)), 70)
        picked = rng.choice(len(kanji), size=min(n - n_kana, len(kanji)), replace=False)
        head = kana[:n_kana]
        tail = [kanji[i] for i in picked]
        # real heads are mostly kana, interleaved with the commonest kanji
        chars = head[: n_kana // 2] + [c for pair in zip(head[n_kana // 2:], tail) for c in pair]
        chars += tail[len(head[n_kana // 2:]):]
        chars = chars[:n]
        r = np.arange(1, len(chars) + 1, dtype=np.float64)
        w = (r + ZIPF_Q) ** -ZIPF_S
    if len(chars) < n:
        raise FontError(f"the fonts share only {len(chars)} usable characters, fewer than --classes {n}")
    return chars, w / w.sum()


@lru_cache(maxsize=4)
def _real_class_counts(path: Path) -> pd.Series:
    table = labels_table(read_labels_csv(path), source=path)
    return table["code"].value_counts()


@lru_cache(maxsize=4)
def real_column_layouts(path: Path) -> list[list[int]]:
    """Characters per column (right to left) of each real page with characters."""
    layouts = []
    for image_id, labels in zip(*read_labels_csv(path)[["image_id", "labels"]].T.values):
        _, boxes = parse_labels(labels, image_id=image_id, source=path)
        if len(boxes) == 0:
            continue
        cx = boxes[:, 0] + boxes[:, 2] / 2
        order = np.argsort(-cx)
        tol = 0.6 * np.median(boxes[:, 2])
        cols, current, centre = [], 0, None
        for x in cx[order]:
            if centre is not None and centre - x > tol:
                cols.append(current)
                current, centre = 0, None
            current += 1
            centre = x if centre is None else (centre * (current - 1) + x) / current
        cols.append(current)
        layouts.append(cols)
    return layouts


def builtin_layout(rng: np.random.Generator, capacity_cols: int, capacity_rows: int) -> list[int]:
    """Column lengths for one page: mostly full columns, a few short ones (paragraph ends)."""
    n_cols = int(rng.integers(max(1, capacity_cols // 2), capacity_cols + 1))
    lengths = []
    for _ in range(n_cols):
        full = rng.random() < 0.6
        lengths.append(capacity_rows if full else int(rng.integers(1, capacity_rows + 1)))
    return lengths


# ----------------------------------------------------------------------------------------------
# styles


def make_style(rng: np.random.Generator, fonts: Sequence[Font]) -> BookStyle:
    by_face: dict[str, list[Font]] = {}
    for f in fonts:
        by_face.setdefault(f.typeface, []).append(f)
    faces = sorted(by_face)
    k = int(rng.integers(1, min(3, len(faces)) + 1))
    chosen_faces = rng.choice(len(faces), size=k, replace=False)
    chosen = [by_face[faces[i]][int(rng.integers(len(by_face[faces[i]])))] for i in chosen_faces]
    weights = rng.dirichlet(np.ones(k) * 0.7) if k > 1 else np.ones(1)
    hue = rng.uniform(18, 42)
    paper = _hsv_to_rgb(hue, rng.uniform(0.15, 0.5), rng.uniform(0.66, 0.93))
    ink = _hsv_to_rgb(rng.uniform(0, 40), rng.uniform(0.0, 0.5), rng.uniform(0.02, 0.16))
    return BookStyle(
        fonts=[str(f.path) for f in chosen],
        font_weights=[float(w) for w in weights],
        box_height=float(REAL_BOX_HEIGHT_FRACTION * math.exp(rng.normal(0, 0.25))),
        size_jitter=float(rng.uniform(0.06, 0.16)),
        aspect=float(rng.uniform(0.75, 1.1)),
        char_gap=float(rng.uniform(-0.02, 0.28)),
        col_gap=float(rng.uniform(0.45, 1.1)),
        stroke=float(rng.choice([-0.015, 0.0, 0.025, 0.04, 0.06])),
        rotation=float(rng.uniform(0, 4)),
        drift=float(rng.uniform(0.01, 0.05)),
        ink=ink,
        ink_density=float(rng.uniform(0.85, 1.0)),
        ink_variation=float(rng.uniform(0.0, 0.25)),
        paper=paper,
        texture=float(rng.uniform(0.015, 0.05)),
        stains=int(rng.integers(0, 5)),
        blur=float(rng.uniform(0.0, 1.3)),
        show_through=float(rng.uniform(0.0, 0.15)),
        frame=int(rng.choice([0, 1, 1, 2])),
        scanner_border=float(rng.choice([0.0, 0.0, rng.uniform(0.01, 0.04)])),
        furigana=float(rng.choice([0.0, rng.uniform(0.01, 0.08)])),
        aspect_page=float(rng.uniform(0.58, 0.74)),
        jpeg_quality=int(rng.integers(60, 96)),
    )


def _hsv_to_rgb(h_deg: float, s: float, v: float) -> list[int]:
    px = np.uint8([[[round(h_deg / 2), round(s * 255), round(v * 255)]]])
    return [int(c) for c in cv2.cvtColor(px, cv2.COLOR_HSV2RGB)[0, 0]]


# ----------------------------------------------------------------------------------------------
# rendering


@lru_cache(maxsize=20000)
def _glyph(font_path: str, size: int, ch: str) -> np.ndarray:
    """Anti-aliased glyph mask (uint8) cropped to its ink."""
    font = pil_font(Path(font_path), size)
    left, top, right, bottom = font.getbbox(ch)
    pad = 2
    im = Image.new("L", (max(1, right - left) + 2 * pad, max(1, bottom - top) + 2 * pad), 0)
    ImageDraw.Draw(im).text((pad - left, pad - top), ch, font=font, fill=255)
    return _crop_ink(np.asarray(im))


def _crop_ink(mask: np.ndarray, threshold: int = 40) -> np.ndarray:
    ys, xs = np.nonzero(mask > threshold)
    if len(ys) == 0:
        return mask[:0, :0]
    return mask[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]


@lru_cache(maxsize=64)
def _font_metrics(font_path: str) -> tuple[float, float]:
    """(median ink height per pixel of font size, median ink fraction of the glyph box) of common
    glyphs: calibrates glyph sizes, and stroke weight so that hairline brush fonts are not faint."""
    font = Path(font_path)
    probe = [c for c in "にのしてとをはりかなる人大日子事" if ord(c) in coverage(font)]
    glyphs = [_glyph(font_path, 100, c) for c in probe]
    glyphs = [g for g in glyphs if g.size]
    if not glyphs:
        return 0.85, 0.2
    return (float(np.median([g.shape[0] for g in glyphs])) / 100,
            float(np.median([(g > 128).mean() for g in glyphs])))


def _thin_font_bonus(font_path: str) -> float:
    """Extra stroke (in glyph heights) for fonts lighter than a typical brush font."""
    return max(0.0, 0.2 - _font_metrics(font_path)[1]) / 0.2 * 0.08


def _transform_glyph(g: np.ndarray, sx: float, sy: float, angle: float, stroke_px: float) -> np.ndarray:
    h, w = g.shape
    if h == 0 or w == 0:
        return g
    pad = max(2, int(abs(stroke_px)) + 2)
    g = cv2.copyMakeBorder(g, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    H, W = g.shape
    m = cv2.getRotationMatrix2D((W / 2, H / 2), angle, 1.0)
    m[0] *= sx
    m[1] *= sy
    out_w, out_h = int(math.ceil(W * sx)) + 2, int(math.ceil(H * sy)) + 2
    m[0, 2] += (out_w - W * sx) / 2
    m[1, 2] += (out_h - H * sy) / 2
    g = cv2.warpAffine(g, m, (out_w, out_h), flags=cv2.INTER_LINEAR, borderValue=0)
    k = int(round(abs(stroke_px)))
    if k >= 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
        g = cv2.dilate(g, kernel) if stroke_px > 0 else cv2.erode(g, kernel)
    return _crop_ink(g)


def _low_freq_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    small = rng.standard_normal((max(2, h // cell), max(2, w // cell))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def render_page(
    style: BookStyle,
    chars: Sequence[str],
    weights: np.ndarray,
    height: int,
    rng: np.random.Generator,
    layout: list[int] | None,
    empty: bool,
    glyph_scale: float = 1.0,
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """One page: (RGB uint8 image, class codes, boxes [N, 4] x y w h)."""
    H = height
    W = int(round(H * style.aspect_page))
    scale = H / 1500
    mask = np.zeros((H, W), dtype=np.uint8)
    codes: list[str] = []
    boxes: list[tuple[int, int, int, int]] = []

    # text area and frame
    top, bottom = int(H * rng.uniform(0.06, 0.14)), int(H * (1 - rng.uniform(0.05, 0.11)))
    left, right = int(W * rng.uniform(0.06, 0.12)), int(W * (1 - rng.uniform(0.06, 0.12)))
    if style.frame:
        t = max(1, int(round(rng.uniform(1.5, 4) * scale)))
        m = int(0.015 * H)
        cv2.rectangle(mask, (left - m, top - m), (right + m, bottom + m), 255, t)
        if style.frame == 2:
            m2 = m + int(0.008 * H)
            cv2.rectangle(mask, (left - m2, top - m2), (right + m2, bottom + m2), 255, max(1, t * 2))

    glyph_h = style.box_height * H * glyph_scale  # target median box height, px
    if layout is not None and not empty:  # a real layout: glyphs small enough for its columns
        fit_h = (bottom - top) / (max(layout) * (1 + style.char_gap) + 0.3)
        fit_w = (right - left) / (len(layout) * style.aspect * (1 + style.col_gap))
        glyph_h = min(glyph_h, fit_h, fit_w)
    fonts = style.fonts
    font_p = np.asarray(style.font_weights)
    pitch_y = glyph_h * (1 + style.char_gap)
    col_w = glyph_h * 1.0 * style.aspect
    pitch_x = col_w * (1 + style.col_gap)
    cap_cols = max(1, int((right - left) // pitch_x))
    cap_rows = max(1, int((bottom - top) // pitch_y))
    if empty:
        layout = []
        if rng.random() < 0.6:  # an illustration: smooth brush strokes that are not characters
            for _ in range(int(rng.integers(8, 40))):
                n = int(rng.integers(20, 80))
                angle = np.cumsum(rng.normal(0, 0.15, n)) + rng.uniform(0, 2 * np.pi)
                steps = 0.006 * H * np.stack([np.cos(angle), np.sin(angle)], axis=1)
                pts = np.cumsum(steps, axis=0) + [rng.uniform(left, right), rng.uniform(top, bottom)]
                pts = np.clip(pts, [left, top], [right, bottom]).astype(np.int32)
                cv2.polylines(mask, [pts], False, 255, max(1, int(rng.uniform(1, 4) * scale)), cv2.LINE_AA)
    elif layout is None:
        layout = builtin_layout(rng, cap_cols, cap_rows)
    layout = list(layout)[:cap_cols]
    n_max = int(sum(layout))
    char_seq = rng.choice(len(chars), size=n_max, p=weights)
    font_seq = rng.choice(len(fonts), size=n_max, p=font_p)
    k = 0

    x_right = right - col_w / 2
    for n_in_col in layout:
        cx_col = x_right + rng.normal(0, 0.05) * col_w
        y = top + rng.uniform(0, 0.3) * glyph_h
        drift = 0.0
        for _ in range(n_in_col):
            ch, fpath = chars[char_seq[k]], fonts[font_seq[k]]
            k += 1
            size_px = glyph_h * math.exp(rng.normal(0, style.size_jitter))
            font_size = max(6, int(round(size_px / _font_metrics(fpath)[0])))
            g = _glyph(fpath, font_size, ch)
            sx = style.aspect * math.exp(rng.normal(0, 0.05))
            stroke = (style.stroke + _thin_font_bonus(fpath)) * glyph_h
            g = _transform_glyph(g, sx, 1.0, rng.normal(0, style.rotation), stroke)
            gh, gw = g.shape
            if gh == 0:
                continue
            if y + gh > bottom:
                break
            drift = 0.7 * drift + rng.normal(0, style.drift * glyph_h)
            x0 = int(round(cx_col + drift - gw / 2))
            y0 = int(round(y))
            if x0 < 0 or x0 + gw > W:
                continue
            region = mask[y0: y0 + gh, x0: x0 + gw]
            np.maximum(region, g, out=region)
            codes.append(char_to_code(ch))
            boxes.append((x0, y0, gw, gh))
            if style.furigana and rng.random() < style.furigana:
                _place_furigana(mask, rng, chars, fonts, glyph_h, x0 + gw, y0, pitch_x - col_w)
            y += gh + style.char_gap * glyph_h * math.exp(rng.normal(0, 0.3))
        x_right -= pitch_x * math.exp(rng.normal(0, 0.04))
        if x_right - col_w / 2 < left:
            break

    image = _compose(mask, style, rng, scale)
    return image, codes, np.asarray(boxes, dtype=np.int64).reshape(-1, 4)


def _place_furigana(mask, rng, chars, fonts, glyph_h, x_left, y0, space) -> None:
    """Small unlabelled glyphs in the gap left of a character's column (reading aids)."""
    size = glyph_h * rng.uniform(0.3, 0.45)
    y = y0
    for _ in range(int(rng.integers(1, 4))):
        kana = [c for c in chars if "\u3041" <= c <= "\u3096"] or list(chars)
        ch = kana[int(rng.integers(len(kana)))]
        fpath = fonts[int(rng.integers(len(fonts)))]
        g = _glyph(fpath, max(5, int(size / _font_metrics(fpath)[0])), ch)
        gh, gw = g.shape
        x = int(x_left + max(1.0, (space - gw) * rng.uniform(0.1, 0.5)))
        yy = int(y)
        if gh == 0 or x + gw > mask.shape[1] or yy + gh > mask.shape[0]:
            return
        region = mask[yy: yy + gh, x: x + gw]
        np.maximum(region, g, out=region)
        y += gh * 1.1


def _compose(mask: np.ndarray, style: BookStyle, rng: np.random.Generator, scale: float) -> np.ndarray:
    H, W = mask.shape
    alpha = mask.astype(np.float32) / 255.0
    if style.ink_variation:
        alpha *= np.clip(1 - style.ink_variation * np.abs(_low_freq_noise(rng, H, W, max(8, int(40 * scale)))), 0.2, 1)
    alpha *= style.ink_density
    sigma = style.blur * scale
    if sigma > 0.3:
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigma)
    paper = np.empty((H, W, 3), dtype=np.float32)
    paper[:] = np.asarray(style.paper, dtype=np.float32)
    shade = 1 + style.texture * _low_freq_noise(rng, H, W, max(32, int(400 * scale)))
    shade += 0.3 * style.texture * _low_freq_noise(rng, H, W, max(4, int(30 * scale)))
    shade += 0.5 * style.texture * rng.standard_normal((H, W)).astype(np.float32)  # grain
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    shade *= 1 - 0.12 * (((xx / W - 0.5) ** 2 + (yy / H - 0.5) ** 2) * 2)  # vignette
    paper *= shade[:, :, None]
    for _ in range(style.stains):
        stain = np.zeros((H, W), dtype=np.float32)
        c = (int(rng.uniform(0, W)), int(rng.uniform(0, H)))
        axes = (int(rng.uniform(0.03, 0.15) * W), int(rng.uniform(0.03, 0.15) * H))
        cv2.ellipse(stain, c, axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
        stain = cv2.GaussianBlur(stain, (0, 0), max(axes) / 3)
        tint = np.array([0.8, 1.0, 1.3], np.float32)  # darker in blue: a brownish stain
        paper *= 1 - rng.uniform(0.05, 0.2) * stain[:, :, None] * tint
    if style.show_through:
        back = cv2.GaussianBlur(alpha[:, ::-1], (0, 0), 2.5 * scale + 0.5)
        shift = int(rng.uniform(-0.03, 0.03) * W)
        back = np.roll(back, shift, axis=1)
        paper *= (1 - style.show_through * back)[:, :, None]
    ink = np.asarray(style.ink, dtype=np.float32)
    img = paper * (1 - alpha[:, :, None]) + ink * alpha[:, :, None]
    if style.scanner_border:
        b = int(style.scanner_border * W)
        side = rng.integers(2)
        sl = slice(0, b) if side == 0 else slice(W - b, W)
        img[:, sl] = img[:, sl] * 0.15 + 20
    return np.clip(img, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# dataset


@dataclass
class _PageJob:
    image_id: str
    folder: str
    book: int
    page: int
    empty: bool


def _render_job(args) -> tuple[str, str, int]:
    job, style, chars, weights, cfg, layouts, out = args
    rng = np.random.default_rng([cfg.seed, job.book, job.page, 1])
    layout = layouts[int(rng.integers(len(layouts)))] if layouts else None
    image, codes, boxes = render_page(style, chars, weights, cfg.height, rng, layout, job.empty, cfg.glyph_scale)
    path = Path(out) / job.folder / f"{job.image_id}.jpg"
    ok = cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                     [cv2.IMWRITE_JPEG_QUALITY, style.jpeg_quality])
    if not ok:
        raise OSError(f"{path}: could not write image")
    return job.image_id, format_labels(codes, boxes), len(codes)


def check(cfg: SynthConfig) -> None:
    out = Path(cfg.out_dir)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise FileExistsError(f"{out}: exists and is not empty (use --overwrite)")
    for name, v in (("books", cfg.books), ("pages-per-book", cfg.pages_per_book), ("classes", cfg.classes)):
        if v < 1:
            raise ValueError(f"--{name} must be at least 1")
    if cfg.height < 200:
        raise ValueError("--height must be at least 200")
    if not 0.2 <= cfg.glyph_scale <= 10:
        raise ValueError("--glyph-scale must be between 0.2 and 10")
    if cfg.test_books < 0 or (cfg.test_books and cfg.test_books > cfg.test_pages):
        raise ValueError(f"--test-books must be within 0..--test-pages ({cfg.test_pages}), got {cfg.test_books}")


def split_fonts(cfg: SynthConfig, fonts: list[Font]) -> tuple[list[Font], list[Font]]:
    """(fonts of the training books, fonts of the test books): all of them, or with
    ``--holdout-font`` the typeface held out for the test books alone."""
    if not cfg.holdout_font:
        return fonts, fonts
    key = cfg.holdout_font.lower()
    held = [f for f in fonts if key in f.typeface.lower() or key in f.family.lower() or key in str(f.path).lower()]
    if not held:
        raise FontError(f"--holdout-font {cfg.holdout_font!r} matches none of: "
                        + ", ".join(sorted({f.typeface for f in fonts})))
    train_fonts = [f for f in fonts if f not in held]
    if not train_fonts:
        raise FontError(f"--holdout-font {cfg.holdout_font!r} holds out every font; nothing left to train on")
    return train_fonts, held


def plan_books(cfg: SynthConfig, train_fonts: list[Font], test_fonts: list[Font]) -> tuple[list[dict], list[_PageJob]]:
    """The books (id, split, style; test books after the training ones) and every page to render."""
    n_test_books = (cfg.test_books or max(1, math.ceil(cfg.test_pages / 5))) if cfg.test_pages else 0
    books = []
    for b in range(cfg.books + n_test_books):
        split = "train" if b < cfg.books else "test"
        style = make_style(np.random.default_rng([cfg.seed, b, 0]), train_fonts if split == "train" else test_fonts)
        books.append({"book_id": f"9{cfg.seed % 1000:03d}{b:05d}", "split": split, "style": style})
    jobs = []
    for b, book in enumerate(books[: cfg.books]):
        for p in range(cfg.pages_per_book):
            jobs.append(_PageJob(_page_id(book["book_id"], p), "train_images", b, p,
                                 np.random.default_rng([cfg.seed, b, p, 0]).random() < EMPTY_PAGE_RATE))
    for k in range(cfg.test_pages):
        b = cfg.books + k % n_test_books
        p = k // n_test_books
        jobs.append(_PageJob(_page_id(books[b]["book_id"], p), "test_images", b, p,
                             np.random.default_rng([cfg.seed, b, p, 0]).random() < EMPTY_PAGE_RATE))
    return books, jobs


def render_pages(jobs: list[_PageJob], books: list[dict], chars, weights, cfg: SynthConfig, layouts, folder: Path,
                 progress: bool) -> dict[str, tuple[str, int]]:
    """Every page's image written into ``folder``; image id -> (labels, characters)."""
    (folder / "train_images").mkdir()
    (folder / "test_images").mkdir()
    args = [(j, books[j.book]["style"], chars, weights, cfg, layouts, str(folder)) for j in jobs]
    workers = cfg.workers or os.cpu_count() or 1
    results = {}
    with tqdm(total=len(jobs), desc="pages", unit="page", disable=not progress) as bar:
        if workers > 1 and len(jobs) > 1:
            with get_context("spawn").Pool(min(workers, len(jobs))) as pool:
                for image_id, labels, n in pool.imap_unordered(_render_job, args):
                    results[image_id] = (labels, n)
                    bar.update()
        else:
            for a in args:
                image_id, labels, n = _render_job(a)
                results[image_id] = (labels, n)
                bar.update()
    return results


def write_tables(folder: Path, train_ids: list[str], test_ids: list[str], results: dict, chars: list[str]) -> None:
    """train.csv, test_labels.csv (the test pages' truth), sample_submission.csv,
    unicode_translation.csv and reading_order.csv."""
    frame = lambda ids: pd.DataFrame({"image_id": ids, "labels": [results[i][0] or None for i in ids]})
    write_csv_atomic(frame(train_ids), folder / "train.csv")
    write_csv_atomic(frame(test_ids), folder / "test_labels.csv")
    dummy = f"{char_to_code(chars[0])} 1 1"
    write_csv_atomic(pd.DataFrame({"image_id": test_ids, "labels": dummy}), folder / "sample_submission.csv")
    write_csv_atomic(pd.DataFrame({"Unicode": [char_to_code(c) for c in chars], "char": chars}),
                     folder / "unicode_translation.csv")
    # the pages are written column by column, right to left, top to bottom: their true reading order
    order = labels_table(frame(train_ids + test_ids)).rename(columns={"code": "unicode"})
    order.insert(1, "char_id", order.groupby("image_id").cumcount() + 1)
    order.insert(1, "block_id", 1)
    write_csv_atomic(order, folder / "reading_order.csv")


def generate(cfg: SynthConfig, progress: bool = True) -> dict:
    """Write a complete dataset folder; returns a summary. The folder appears whole or not at all:
    it is made under a temporary name beside ``cfg.out_dir`` and renamed."""
    check(cfg)
    t0 = time.time()
    rng = np.random.default_rng([cfg.seed, 0])
    fonts = find_fonts(cfg.fonts)
    train_fonts, test_fonts = split_fonts(cfg, fonts)
    chars, weights = choose_classes(cfg.classes, fonts, rng, cfg.labels_source)
    layouts = real_column_layouts(Path(cfg.labels_source)) if cfg.labels_source else None
    books, jobs = plan_books(cfg, train_fonts, test_fonts)
    out = Path(cfg.out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        results = render_pages(jobs, books, chars, weights, cfg, layouts, tmp, progress)
        train_ids = [j.image_id for j in jobs if j.folder == "train_images"]
        test_ids = [j.image_id for j in jobs if j.folder == "test_images"]
        write_tables(tmp, train_ids, test_ids, results, chars)
        counts = np.array([results[i][1] for i in train_ids + test_ids])
        summary = {
            "train pages": len(train_ids),
            "test pages": len(test_ids),
            "characters": int(counts.sum()),
            "characters per page (median)": float(np.median(counts)),
            "classes": len(chars),
            "fonts": sorted({f.typeface for f in fonts}),
            "held-out typeface fonts": [str(f) for f in test_fonts] if cfg.holdout_font else [],
            "seconds": round(time.time() - t0, 1),
        }
        meta = {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
            "summary": summary,
            "books": [{"book_id": b["book_id"], "split": b["split"], "style": asdict(b["style"])} for b in books],
        }
        meta["config"]["fonts"] = [str(f) for f in cfg.fonts]
        write_json_atomic(meta, tmp / "synth_meta.json")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _page_id(book: str, page: int) -> str:
    return f"{book}_{page // 2 + 1:05d}_{page % 2 + 1}"


@one_line_errors(FontError, FileExistsError, ValueError)
def main(argv: Sequence[str] | None = None) -> int:
    p = parser("python -m kzlib synth", __doc__)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--books", type=int, default=6)
    p.add_argument("--pages-per-book", type=int, default=10)
    p.add_argument("--test-pages", type=int, default=10)
    p.add_argument("--classes", type=int, default=300)
    p.add_argument("--height", type=int, default=1500, help="page height in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labels-source", type=Path, help="real labels (train.csv format) for class frequencies and column layouts")
    p.add_argument("--font", type=Path, action="append", default=[], help="font file (repeatable); default: the system's Japanese fonts")
    p.add_argument("--holdout-font", help="typeface kept out of training books (name, family or path substring); test books use only it")
    p.add_argument("--glyph-scale", type=float, default=1.0,
                   help="glyph size relative to the real distribution (e.g. 2 for small test pages)")
    p.add_argument("--test-books", type=int, default=0,
                   help="books the test pages are dealt over (default: one per 5 test pages); a page's image "
                        "depends only on the seed, its book and its number, so --test-books 1 --test-pages 20 "
                        "gives the 5-page test book's pages and 15 more of that book")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    cfg = SynthConfig(a.out_dir, a.books, a.pages_per_book, a.test_pages, a.classes, a.height, a.seed,
                      a.labels_source, a.font, a.holdout_font, a.glyph_scale, a.workers, a.overwrite,
                      a.test_books)
    summary = generate(cfg, progress=sys.stderr.isatty())
    for k, v in summary.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

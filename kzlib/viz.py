"""Pictures of pages with their characters: boxes (train.csv format) or points (submissions),
each labelled with its character in a Japanese font.

    python -m kzlib.viz DATA_DIR IMAGE_ID --out page.png [--labels FILE] [--boxes BOXES_CSV] [--split train|test] [--height 1400]

Without ``--labels`` the page's boxes come from DATA_DIR/train.csv (train pages) or, for a test
page, from DATA_DIR/test_labels.csv when the folder has one (synthetic data).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from kzlib.cli import one_line_errors, parser
from kzlib.data import DataDir, DataError, code_to_char, is_empty, read_labels_csv
from kzlib.images import image_size, read_image, write_png
from kzlib.fonts import FontError, label_font

BOX_COLOUR = (220, 30, 30)
TEXT_COLOUR = (20, 40, 220)
DETECTION_COLOUR = (0, 160, 60)


def parse_any(labels: object) -> tuple[list[str], np.ndarray]:
    """Codes and coordinates of a boxes string (5 fields) or a points string (3 fields)."""
    if is_empty(labels):
        return [], np.empty((0, 4))
    t = str(labels).split()
    fields = 5 if len(t) % 5 == 0 and (len(t) % 3 or not t[3].startswith("U+")) else 3
    table = np.array(t, dtype=object).reshape(-1, fields)
    return table[:, 0].tolist(), table[:, 1:].astype(np.float64)


def draw_labels(image: np.ndarray, codes: Sequence[str], coords: np.ndarray, scale: float = 1.0,
                colour: tuple[int, int, int] = BOX_COLOUR) -> np.ndarray:
    """Draw boxes (coords x y w h) or points (coords x y), scaled by ``scale``, with the characters
    (codes that are not ``U+XXXX``, e.g. empty strings, draw no text)."""
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    coords = np.asarray(coords, dtype=np.float64) * scale
    size = int(np.clip(np.median(coords[:, 3]) * 0.45 if coords.shape[1] == 4 and len(coords) else 18, 10, 48))
    try:
        font = label_font(size)
    except FontError:
        font = None
    width = max(1, round(image.shape[0] / 700))
    for code, c in zip(codes, coords):
        ch = code_to_char(code) if code.startswith("U+") else code
        if len(c) == 4:
            x, y, w, h = c
            draw.rectangle([x, y, x + w, y + h], outline=colour, width=width)
            tx, ty = x + w + 1, y
        else:
            x, y = c
            r = max(2, width * 2)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
            tx, ty = x + r + 1, y - size / 2
        if font is not None and ch:
            draw.text((tx, ty), ch, font=font, fill=TEXT_COLOUR)
    return np.asarray(pil)


def render(data_dir: Path, image_id: str, split: str, labels_file: Path | None, height: int,
           boxes_file: Path | None = None) -> np.ndarray:
    d = DataDir(data_dir)
    if labels_file is None:
        labels_file = d.train_csv if split == "train" else d.root / "test_labels.csv"
    path = d.image_path(image_id, split)
    h0 = image_size(path)[1]
    small = read_image(path, height=min(height, h0))  # reduced decode when it applies
    scale = small.shape[0] / h0
    codes, coords = [], np.empty((0, 4))
    if labels_file.exists():
        df = read_labels_csv(labels_file)
        row = df.loc[df["image_id"] == image_id, "labels"]
        if len(row) == 0:
            raise DataError(f"{labels_file}: no row for image {image_id}")
        codes, coords = parse_any(row.iloc[0])
    picture = draw_labels(small, codes, coords, scale)
    if boxes_file is not None:  # a detector's boxes (image_id,x,y,w,h,...) drawn over the truth
        det = pd.read_csv(boxes_file, dtype={"image_id": str})
        det = det[det["image_id"] == image_id]
        picture = draw_labels(picture, [""] * len(det), det[["x", "y", "w", "h"]].to_numpy(), scale, DETECTION_COLOUR)
    return picture


@one_line_errors()
def main(argv: Sequence[str] | None = None) -> int:
    p = parser("python -m kzlib viz", __doc__)
    p.add_argument("data_dir", type=Path)
    p.add_argument("image_id")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--labels", type=Path, help="labels (train.csv format) or a submission (points)")
    p.add_argument("--boxes", type=Path, help="detector boxes CSV (oof_boxes.csv / test_boxes.csv), drawn in green")
    p.add_argument("--split", choices=("train", "test"), default=None, help="default: where the image is")
    p.add_argument("--height", type=int, default=1400, help="height of the picture")
    a = p.parse_args(argv)
    split = a.split or ("test" if DataDir(a.data_dir).image_path(a.image_id, "test").exists() else "train")
    write_png(a.out, render(a.data_dir, a.image_id, split, a.labels, a.height, a.boxes))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reading order (``kzlib.order``) on many boxes: one synthetic page of N boxes, and the detector's
boxes of real test pages when given; seconds each, and whether the order equals the earlier
quadratic implementation's (``tests/reference_order.py``, run when --reference).

    .venv/bin/python benchmarks/order_speed.py [--boxes 100000] [--reference] [--boxes-csv test_boxes.csv]

The synthetic page: columns of characters (1-2 glyph widths apart, slanted a little, with gaps),
reading aids (small boxes) beside a tenth of them, and stray marks.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from kzlib.order import reading_order  # noqa: E402


def synthetic_page(n: int, seed: int = 0) -> np.ndarray:
    """About ``n`` boxes (x, y, w, h) in columns read right to left."""
    rng = np.random.default_rng(seed)
    per_column = 60
    columns = max(1, int(np.ceil(n / per_column / 1.1)))
    boxes = []
    for c in range(columns):
        x = 60.0 * c + rng.normal(0, 3)
        slant = rng.normal(0, 0.02)
        y = rng.uniform(0, 40)
        for k in range(per_column):
            w, h = rng.uniform(32, 44), rng.uniform(30, 46)
            if rng.random() < 0.03:
                y += rng.uniform(60, 140)  # a gap in the column
            boxes.append((x + slant * y + rng.normal(0, 2), y, w, h))
            if rng.random() < 0.1:  # a reading aid beside it
                boxes.append((x + slant * y + w + 2, y + rng.uniform(0, h / 2), w * 0.4, h * 0.4))
            y += h + rng.uniform(2, 10)
    strays = max(1, n // 200)
    boxes = boxes[:max(n - strays, 0)]
    for _ in range(strays):  # stray marks
        boxes.append((rng.uniform(0, 60 * columns), rng.uniform(0, 3500), rng.uniform(5, 15), rng.uniform(5, 15)))
    b = np.array(boxes)
    return b[rng.permutation(len(b))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--boxes", type=int, default=100_000)
    p.add_argument("--reference", action="store_true", help="also run the quadratic implementation and compare")
    p.add_argument("--boxes-csv", type=Path, help="a boxes file (image_id,x,y,w,h,...): every page of it")
    a = p.parse_args()
    pages = {f"synthetic {a.boxes}": synthetic_page(a.boxes)}
    if a.boxes_csv:
        df = pd.read_csv(a.boxes_csv, dtype={"image_id": str})
        pages.update({i: g[["x", "y", "w", "h"]].to_numpy(float) for i, g in df.groupby("image_id")})
    for name, boxes in pages.items():
        t0 = time.perf_counter()
        o = reading_order(boxes)
        t = time.perf_counter() - t0
        line = f"{name}: {len(boxes)} boxes, {o.column.max() + 1 if len(boxes) else 0} columns, {t:.2f} s"
        if a.reference:
            import reference_order

            t0 = time.perf_counter()
            r = reference_order.reading_order(boxes)
            same = bool((r.order == o.order).all() and (r.column == o.column).all() and (r.small == o.small).all())
            line += f"; quadratic {time.perf_counter() - t0:.2f} s, same order: {same}"
        print(line, flush=True)


if __name__ == "__main__":
    main()

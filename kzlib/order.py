"""Reading order of a page's characters from their boxes alone: vertical columns read top to
bottom, columns right to left.

    python -m kzlib.order LABELS_CSV --out OUT_CSV        (train.csv format in; one row per box out)

It works on boxes only, so it orders true boxes, a model's boxes, or anybody's:

1. **Columns as chains.** Each box is linked to the nearest box below it that overlaps it
   horizontally (by at least 30% of the narrower box) within a gap of ~1.5 character heights, small
   boxes (under 60% of the page's typical size) only to small ones; a box keeps the one
   predecessor that fits it best. The chains follow slanted and wandering columns.
2. **Columns joined across gaps.** A chain that starts below the end of another, within a few
   character heights and overlapping it horizontally, continues it (a column broken by a picture
   or a wide gap).
3. **Split lines.** Narrow chains of small characters that sit inside another column's width, in one
   of its gaps or below its end (a column split into two lines of small annotation text), are read
   inside that column, right line first.
4. **Columns right to left** by their median centre; a short title column or a stray mark is a
   column of its own.

Chains of characters much smaller than the page's (furigana-like reading aids between columns)
are flagged ``small`` so a reader can keep them apart from the text.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from kzlib.cli import one_line_errors, parser
from kzlib.data import parse_labels, read_labels_csv
from kzlib.io import write_csv_atomic

LINK_GAP = 1.5      # character heights between two boxes of one column
JOIN_GAP = 4.0      # character heights a column may skip (a picture, a wide gap)
MIN_OVERLAP = 0.3   # horizontal overlap, as a fraction of the narrower box
SMALL = 0.6         # a box (or chain) under this fraction of the page's typical size is "small"
SIZE_RATIO = 3.0    # two columns joined across a gap differ in character size by less than this factor


@dataclass
class Order:
    """``order[k]`` is the box read k-th; ``column[i]`` the reading-order column of box i (0 = the
    rightmost), ``small[i]`` whether box i belongs to a column of small characters."""
    order: np.ndarray
    column: np.ndarray
    small: np.ndarray


def _overlap(a0, a1, b0, b1) -> np.ndarray:
    return np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None)


def _chains(x0, x1, y0, y1, H, small) -> list[list[int]]:
    """Boxes linked to the best box below them in the same column."""
    n = len(x0)
    w = x1 - x0
    best_prev = {}
    for i in range(n):
        gap = y0 - y1[i]                                    # from box i down to every box
        ov = _overlap(x0[i], x1[i], x0, x1) / np.maximum(1e-9, np.minimum(w[i], w))
        ok = (gap > -0.5 * np.minimum(y1[i] - y0[i], y1 - y0)) & (gap < LINK_GAP * H) & (ov >= MIN_OVERLAP)
        ok &= small == small[i]  # small characters make lines of their own (read inside their column later)
        ok &= (y0 + y1) / 2 > (y0[i] + y1[i]) / 2
        ok[i] = False
        if not ok.any():
            continue
        cand = np.flatnonzero(ok)
        score = np.maximum(gap[cand], 0) / H + (1 - ov[cand]) + np.abs((x0[cand] + x1[cand]) - (x0[i] + x1[i])) / (2 * H)
        j = int(cand[np.argmin(score)])
        s = float(score.min())
        if j not in best_prev or s < best_prev[j][1]:
            best_prev[j] = (i, s)
    nxt = {i: j for j, (i, _) in best_prev.items()}
    # a box may be the best predecessor of one successor only
    starts = [i for i in range(n) if i not in {j for j in nxt.values()}]
    chains, seen = [], set()
    for s in sorted(starts, key=lambda i: y0[i]):
        chain, k = [], s
        while k is not None and k not in seen:
            chain.append(k)
            seen.add(k)
            k = nxt.get(k)
        chains.append(chain)
    for i in range(n):  # cycles cannot happen (links go down), but keep every box
        if i not in seen:
            chains.append([i])
    return chains


def reading_order(boxes_xywh: np.ndarray) -> Order:
    """The reading order of boxes ``[N, 4]`` (x, y, w, h)."""
    b = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    n = len(b)
    if n == 0:
        return Order(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool))
    x0, y0 = b[:, 0], b[:, 1]
    x1, y1 = x0 + b[:, 2], y0 + b[:, 3]
    size = np.maximum(b[:, 2], b[:, 3])
    H = float(np.median(b[:, 3]))
    typical = float(np.median(size))
    small_box = size < SMALL * typical
    chains = _chains(x0, x1, y0, y1, H, small_box)

    def extent(c):
        return x0[c].min(), x1[c].max(), y0[c].min(), y1[c].max()

    # 2. join a chain to the column above it across a wider gap
    changed = True
    while changed:
        changed = False
        chains.sort(key=lambda c: y0[c[0]])
        for a in range(len(chains)):
            for b_ in range(len(chains)):
                if a == b_ or not chains[a] or not chains[b_]:
                    continue
                end, start = chains[a][-1], chains[b_][0]
                gap = y0[start] - y1[end]
                ov = _overlap(x0[end], x1[end], x0[start], x1[start]) / max(1e-9, min(x1[end] - x0[end], x1[start] - x0[start]))
                sa, sb = np.median(size[chains[a]]), np.median(size[chains[b_]])
                similar = (sa < SMALL * typical) == (sb < SMALL * typical) and 1 / SIZE_RATIO < sb / sa < SIZE_RATIO
                if 0 <= gap < JOIN_GAP * H and ov >= MIN_OVERLAP and similar:
                    chains[a] = chains[a] + chains[b_]
                    chains[b_] = []
                    changed = True
        chains = [c for c in chains if c]

    small_chain = [float(np.median(size[c])) < SMALL * typical for c in chains]
    # 3. small characters (and split lines of them) read inside the column they sit in
    inserted: dict[int, list[tuple[int, int, int]]] = {}  # main chain -> [(position, small chain, box)]
    centre_y = (y0 + y1) / 2
    for s, c in enumerate(chains):
        if not small_chain[s]:
            continue
        cx = float(np.median((x0[c] + x1[c]) / 2))
        best = None
        for m, main in enumerate(chains):
            if m == s or small_chain[m]:
                continue
            mx0, mx1, my0, my1 = extent(main)
            if not (mx0 - 0.1 * H <= cx <= mx1 + 0.1 * H) or not (my0 - H <= y0[c[0]] <= my1 + JOIN_GAP * H):
                continue
            d = abs(cx - float(np.median((x0[main] + x1[main]) / 2)))
            if best is None or d < best[0]:
                best = (d, m)
        if best is not None:  # each run of it between two of the column's boxes goes in there
            m = best[1]
            for i in c:
                pos = int((centre_y[chains[m]] < centre_y[i]).sum())  # after the column's boxes above it
                inserted.setdefault(m, []).append((pos, s, i))
    used = {s for subs in inserted.values() for _, s, _ in subs}
    columns, flags = [], []
    for m, main in enumerate(chains):
        if m in used:
            continue
        seq = list(main)
        for pos in sorted({p for p, _, _ in inserted.get(m, [])}, reverse=True):
            here = [(s, i) for p, s, i in inserted[m] if p == pos]
            lines = sorted({s for s, _ in here}, key=lambda s: -np.median((x0 + x1)[chains[s]]))  # right line first
            seq[pos:pos] = [i for line in lines for s, i in here if s == line]
        columns.append(seq)
        flags.append(small_chain[m])
    # 4. columns right to left
    centre = [float(np.median((x0[c] + x1[c]) / 2)) for c in columns]
    ranked = np.argsort(-np.asarray(centre), kind="stable")
    order, column, small = [], np.zeros(n, np.int64), np.zeros(n, bool)
    for k, ci in enumerate(ranked):
        for i in columns[ci]:
            order.append(i)
            column[i] = k
            small[i] = flags[ci]
    return Order(np.asarray(order, np.int64), column, small)


def successor_accuracy(true_order: Sequence[int], predicted_order: Sequence[int]) -> float:
    """The fraction of characters whose next character (or the end) is the true one."""
    true_next = {a: b for a, b in zip(true_order, list(true_order[1:]) + [None])}
    pred_next = {a: b for a, b in zip(predicted_order, list(predicted_order[1:]) + [None])}
    return float(np.mean([true_next[a] == pred_next.get(a, "missing") for a in true_next])) if true_next else 1.0


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance between two sequences."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def order_table(df: pd.DataFrame, source: str = "labels") -> pd.DataFrame:
    """``image_id,order,column,unicode,x,y,w,h`` (order 1..n per page) from a labels frame."""
    rows = []
    for image_id, labels in zip(df["image_id"], df["labels"]):
        codes, boxes = parse_labels(labels, image_id=image_id, source=source)
        o = reading_order(boxes)
        for k, i in enumerate(o.order, 1):
            x, y, w, h = boxes[i]
            rows.append((image_id, k, int(o.column[i]), codes[i], int(x), int(y), int(w), int(h)))
    return pd.DataFrame(rows, columns=["image_id", "order", "column", "unicode", "x", "y", "w", "h"])


@one_line_errors()
def main(argv: Sequence[str] | None = None) -> int:
    p = parser("kzlib order", __doc__)
    p.add_argument("labels", type=Path, help="boxes in the train.csv format (image_id,labels)")
    p.add_argument("--out", type=Path, required=True, help="CSV: image_id,order,column,unicode,x,y,w,h")
    a = p.parse_args(argv)
    table = order_table(read_labels_csv(a.labels), str(a.labels))
    write_csv_atomic(table, a.out)
    print(f"wrote {a.out}: {len(table)} characters of {table['image_id'].nunique() if len(table) else 0} pages")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
CANDIDATES = 64     # boxes looked at below each box, per strip (the nearest by top): pairs grow as n, not n^2


@dataclass
class Order:
    """``order[k]`` is the box read k-th; ``column[i]`` the reading-order column of box i (0 = the
    rightmost), ``small[i]`` whether box i belongs to a column of small characters."""
    order: np.ndarray
    column: np.ndarray
    small: np.ndarray


def _overlap(a0, a1, b0, b1) -> np.ndarray:
    return np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None)


class _Strips:
    """Items (boxes, or chains by one of their boxes) filed by vertical strips of the page and sorted
    by their top in each: the items that touch an x-range and whose top lies in a y-window are found
    by binary search, without looking at the others. An item is filed in every strip its x-range
    [lo, hi] touches. One composite key, strip rank x span + top, keeps every strip's items sorted
    in one array, so many windows are searched at once (``pairs``)."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray, top: np.ndarray, width: float):
        self.width = max(float(width), 1e-6)
        first, counts = self._strips_of(lo, hi)
        items = np.repeat(np.arange(len(lo)), counts)
        strips = np.repeat(first, counts) + _ranks_within(counts)
        self.ids = np.unique(strips)  # the strips that hold something, ascending
        self.low = float(top.min()) if len(top) else 0.0
        self.span = (float(top.max()) - self.low if len(top) else 0.0) * 3 + 1.0
        key = np.searchsorted(self.ids, strips) * self.span + (top[items] - self.low)
        order = np.argsort(key, kind="stable")
        self.items, self.keys = items[order], key[order]

    def _strips_of(self, lo, hi):
        first = np.floor(np.asarray(lo, np.float64) / self.width).astype(np.int64)
        last = np.maximum(np.floor(np.asarray(hi, np.float64) / self.width).astype(np.int64), first)
        return first, last - first + 1

    def pairs(self, lo, hi, top_min, top_max, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(query, item) of every item touching [lo[q], hi[q]] whose top is in (top_min[q],
        top_max[q]), each pair once, sorted by query then item; with ``limit``, only the first
        ``limit`` items by top in each strip (a page of thousands of overlapping boxes in one
        column stays linear)."""
        lo, hi = np.atleast_1d(np.asarray(lo, np.float64)), np.atleast_1d(np.asarray(hi, np.float64))
        first, counts = self._strips_of(lo, hi)
        q = np.repeat(np.arange(len(lo)), counts)
        strips = np.repeat(first, counts) + _ranks_within(counts)
        rank = np.searchsorted(self.ids, strips)
        held = (rank < len(self.ids)) & (self.ids[np.minimum(rank, len(self.ids) - 1)] == strips)
        q, rank = q[held], rank[held]
        half = self.span / 3  # windows are clipped to the strip's own range of keys
        a = np.searchsorted(self.keys, rank * self.span + np.clip(np.atleast_1d(top_min)[q] - self.low, -half, 2 * half),
                            "right")
        b = np.searchsorted(self.keys, rank * self.span + np.clip(np.atleast_1d(top_max)[q] - self.low, -half, 2 * half),
                            "left")
        n = np.maximum(b - a, 0)
        if limit is not None:
            n = np.minimum(n, limit)
        hits = np.repeat(a, n) + _ranks_within(n)
        m = len(self.items) + 1
        found = np.unique(np.repeat(q, n) * m + self.items[hits])  # an item found through two strips: once
        return found // m, found % m

    def query(self, lo: float, hi: float, top_min: float, top_max: float, limit: int | None = None) -> np.ndarray:
        """Items touching [lo, hi] whose top is in (top_min, top_max), ascending, each once."""
        return self.pairs(lo, hi, top_min, top_max, limit)[1]


def _ranks_within(counts: np.ndarray) -> np.ndarray:
    """0, 1, ... counts[0]-1, 0, 1, ... counts[1]-1, ...: positions within runs of these lengths."""
    counts = np.asarray(counts, np.int64)
    return np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)


def _chains(x0, x1, y0, y1, H, small) -> list[list[int]]:
    """Boxes linked to the best box below them in the same column: for each box the candidates that
    overlap it horizontally (by MIN_OVERLAP of the narrower), start within LINK_GAP character
    heights below its end (a little overlap allowed), are of its kind (small or not) and lie below
    its centre, scored by gap, overlap and centre offset; the best one (the first of equal scores)
    is its successor unless another box claims that one with a lower score (the first of equal
    scores wins). All pairs at once, found through ``_Strips``."""
    n = len(x0)
    w, h = x1 - x0, y1 - y0
    strips = _Strips(x0, x1, y0, np.median(w) if n else 1.0)
    i, j = strips.pairs(x0, x1, y1 - 0.5 * h, y1 + LINK_GAP * H, CANDIDATES)
    keep = i != j
    i, j = i[keep], j[keep]
    gap = y0[j] - y1[i]
    ov = _overlap(x0[i], x1[i], x0[j], x1[j]) / np.maximum(1e-9, np.minimum(w[i], w[j]))
    ok = (gap > -0.5 * np.minimum(h[i], h[j])) & (gap < LINK_GAP * H) & (ov >= MIN_OVERLAP)
    ok &= small[j] == small[i]  # small characters make lines of their own (read inside their column later)
    ok &= (y0[j] + y1[j]) / 2 > (y0[i] + y1[i]) / 2
    i, j, gap, ov = i[ok], j[ok], gap[ok], ov[ok]
    score = np.maximum(gap, 0) / H + (1 - ov) + np.abs((x0[j] + x1[j]) - (x0[i] + x1[i])) / (2 * H)
    # each box's best candidate: lowest score, the lowest index of equal ones (pairs come sorted by (i, j))
    order = np.lexsort((j, score, i))
    first = np.ones(len(order), bool)
    first[1:] = i[order][1:] != i[order][:-1]
    pick = order[first]
    i, j, score = i[pick], j[pick], score[pick]
    # each successor keeps the proposer of lowest score, the lowest index of equal ones
    order = np.lexsort((i, score, j))
    first = np.ones(len(order), bool)
    first[1:] = j[order][1:] != j[order][:-1]
    nxt = {int(a): int(b) for a, b in zip(i[order][first], j[order][first])}
    # a box may be the best predecessor of one successor only
    has_prev = set(nxt.values())
    starts = [k for k in range(n) if k not in has_prev]
    chains, seen = [], set()
    for s in sorted(starts, key=lambda k: y0[k]):
        chain, k = [], s
        while k is not None and k not in seen:
            chain.append(k)
            seen.add(k)
            k = nxt.get(k)
        chains.append(chain)
    for k in range(n):  # cycles cannot happen (links go down), but keep every box
        if k not in seen:
            chains.append([k])
    return chains


def _join_across_gaps(chains: list[list[int]], x0, x1, y0, y1, H, size, typical) -> list[list[int]]:
    """A chain that starts below the end of another, within JOIN_GAP character heights, overlapping
    it horizontally and of a similar character size, continues it (a column broken by a picture or
    a wide gap); passes until nothing joins. In a pass the chains are taken in order of their first
    box's top, each against the others in that order; only chains whose start lies within reach of
    its end are looked at (``_Strips`` of the starts)."""
    w = x1 - x0
    changed = True
    while changed:
        changed = False
        chains.sort(key=lambda c: y0[c[0]])
        first = np.array([c[0] for c in chains])
        medians = [float(np.median(size[c])) for c in chains]
        strips = _Strips(x0[first], x1[first], y0[first], np.median(w) if len(w) else 1.0)
        ends = np.array([c[-1] for c in chains])
        q, found = strips.pairs(x0[ends], x1[ends], y1[ends] - 1e-9, y1[ends] + JOIN_GAP * H, CANDIDATES)
        near = np.split(found, np.searchsorted(q, np.arange(1, len(chains))))  # candidates of each end, once
        for a in range(len(chains)):
            if not chains[a]:
                continue
            after = -1  # positions up to here are behind in this pass's scan for chain a
            while True:
                end = chains[a][-1]
                cand = near[a] if end == ends[a] else strips.query(x0[end], x1[end], y1[end] - 1e-9,
                                                                    y1[end] + JOIN_GAP * H, CANDIDATES)
                joined = None
                for b in cand[cand > after]:
                    b = int(b)
                    if b == a or not chains[b]:
                        continue
                    start = first[b]
                    gap = y0[start] - y1[end]
                    ov = _overlap(x0[end], x1[end], x0[start], x1[start]) / max(1e-9, min(w[end], w[start]))
                    sa, sb = medians[a], medians[b]
                    similar = (sa < SMALL * typical) == (sb < SMALL * typical) and 1 / SIZE_RATIO < sb / sa < SIZE_RATIO
                    if 0 <= gap < JOIN_GAP * H and ov >= MIN_OVERLAP and similar:
                        joined = b
                        break
                if joined is None:
                    break
                chains[a] = chains[a] + chains[joined]
                chains[joined] = []
                medians[a] = float(np.median(size[chains[a]]))
                after = joined
                changed = True
        chains = [c for c in chains if c]
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
    # 1. columns as chains; 2. joined across gaps
    chains = _join_across_gaps(_chains(x0, x1, y0, y1, H, small_box), x0, x1, y0, y1, H, size, typical)
    small_chain = [float(np.median(size[c])) < SMALL * typical for c in chains]
    # 3. small characters (and split lines of them) read inside the column they sit in
    inserted = _insert_small(chains, small_chain, x0, x1, y0, y1, H)
    used = {s for subs in inserted.values() for _, s, _ in subs}
    columns, flags = [], []
    centre2 = x0 + x1
    for m, main in enumerate(chains):
        if m in used:
            continue
        seq = list(main)
        for pos in sorted({p for p, _, _ in inserted.get(m, [])}, reverse=True):
            here = [(s, i) for p, s, i in inserted[m] if p == pos]
            lines = sorted({s for s, _ in here}, key=lambda s: -np.median(centre2[chains[s]]))  # right line first
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


def _insert_small(chains, small_chain, x0, x1, y0, y1, H) -> dict[int, list[tuple[int, int, int]]]:
    """Where each chain of small characters is read: inside the column (a chain of ordinary ones)
    whose x-extent, widened by 0.1 H, holds its median centre and whose y-extent reaches its first
    box, the nearest such column by centre; each of its boxes after the column's boxes above it.
    Returns main chain -> [(position, small chain, box)]. Columns are found through ``_Strips`` of
    their x-extents."""
    mains = [m for m, c in enumerate(chains) if not small_chain[m]]
    inserted: dict[int, list[tuple[int, int, int]]] = {}
    if not mains:
        return inserted
    ext = np.array([(x0[chains[m]].min(), x1[chains[m]].max(), y0[chains[m]].min(), y1[chains[m]].max())
                    for m in mains])
    centres = np.array([float(np.median((x0[chains[m]] + x1[chains[m]]) / 2)) for m in mains])
    strips = _Strips(ext[:, 0] - 0.1 * H, ext[:, 1] + 0.1 * H, np.zeros(len(mains)), max(H, 1.0))
    centre_y = (y0 + y1) / 2
    smalls = [s for s in range(len(chains)) if small_chain[s]]
    cxs = np.array([float(np.median((x0[chains[s]] + x1[chains[s]]) / 2)) for s in smalls])
    q, found = strips.pairs(cxs, cxs, np.full(len(smalls), -np.inf), np.full(len(smalls), np.inf))
    near = np.split(found, np.searchsorted(q, np.arange(1, len(smalls)))) if smalls else []
    for s, cx, cand in zip(smalls, cxs, near):
        c = chains[s]
        best = None
        for k in cand:  # ascending: the first of equal distances wins
            mx0, mx1, my0, my1 = ext[k]
            if not (mx0 - 0.1 * H <= cx <= mx1 + 0.1 * H) or not (my0 - H <= y0[c[0]] <= my1 + JOIN_GAP * H):
                continue
            d = abs(cx - centres[k])
            if best is None or d < best[0]:
                best = (d, mains[k])
        if best is not None:  # each run of it between two of the column's boxes goes in there
            m = best[1]
            for i in c:
                pos = int((centre_y[chains[m]] < centre_y[i]).sum())  # after the column's boxes above it
                inserted.setdefault(m, []).append((pos, s, i))
    return inserted


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

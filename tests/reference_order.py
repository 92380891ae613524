"""The reading order as kzlib.order computed it before it was made O(n log n): a quadratic search
over every pair of boxes and chains. Kept as the reference the fast one must equal
(tests/test_order.py); never used by the kit."""

from dataclasses import dataclass

import numpy as np

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

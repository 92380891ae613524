"""Reading-order accuracy of ``kzlib.order`` against known orders: true boxes in, order out.

    .venv/bin/python benchmarks/reading_order.py ../shared/data/kuzushiji-sample/reading_order.csv [demo/data/reading_order.csv ...]

Each file is in CODH's form (``image_id,block_id,char_id,unicode,x,y,w,h``; the true order is
block_id, then char_id). Prints per file: pages, characters, the fraction of characters whose
successor is right, and the mean normalised edit distance of the page text (0 = identical).
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kzlib.order import edit_distance, reading_order, successor_accuracy  # noqa: E402


def evaluate(path: Path) -> dict:
    df = pd.read_csv(path, dtype={"image_id": str})
    accs, dists, n = [], [], 0
    for _, g in df.groupby("image_id", sort=False):
        g = g.sort_values(["block_id", "char_id"]).reset_index(drop=True)
        o = reading_order(g[["x", "y", "w", "h"]].to_numpy())
        accs.append(successor_accuracy(list(range(len(g))), list(o.order)) * len(g))
        text_true, text_pred = g["unicode"].tolist(), g["unicode"].to_numpy()[o.order].tolist()
        dists.append(edit_distance(text_true, text_pred) / max(1, len(g)))
        n += len(g)
    return {"file": str(path), "pages": len(dists), "characters": n, "successor_accuracy": round(sum(accs) / n, 4),
            "normalised_edit_distance": round(float(np.mean(dists)), 4)}


if __name__ == "__main__":
    print(pd.DataFrame([evaluate(Path(p)) for p in sys.argv[1:]]).to_string(index=False))

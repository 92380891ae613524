"""Compare a dataset's label statistics with the real ones (sizes relative to page height).

    .venv/bin/python benchmarks/synth_stats.py DATA_DIR [REAL_LABELS_CSV]

Real pages have no images in train_labels_777.csv; their height is taken as 3500 px (scans are
~3000-3900 px high), so real fractions are approximate.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kzlib.data import DataDir, labels_table, read_labels_csv  # noqa: E402
from kzlib.images import image_size  # noqa: E402


def stats(table, heights, pages):
    h = table["h"].to_numpy() / heights
    w = table["w"].to_numpy() / heights
    per_page = table.groupby("image_id").size().reindex(pages, fill_value=0).to_numpy()
    q = lambda a: " / ".join(f"{v:.4f}" for v in np.percentile(a, [10, 50, 90]))
    return (f"box h/H p10/50/90 {q(h)}; box w/H {q(w)}; chars/page median {np.median(per_page):.0f} "
            f"p90 {np.percentile(per_page, 90):.0f} max {per_page.max()}; empty pages {np.mean(per_page == 0):.1%}")


def main():
    d = DataDir(Path(sys.argv[1]))
    df = read_labels_csv(d.train_csv)
    t = labels_table(df)
    hs = {i: image_size(d.image_path(i))[1] for i in df["image_id"]}
    print("synthetic:", stats(t, t["image_id"].map(hs).to_numpy(), df["image_id"]))
    real = Path(sys.argv[2] if len(sys.argv) > 2 else "../shared/data/kuzushiji-sample/train_labels_777.csv")
    if real.exists():
        rdf = read_labels_csv(real)
        rt = labels_table(rdf)
        print("real (H=3500):", stats(rt, 3500.0, rdf["image_id"]))


if __name__ == "__main__":
    main()

"""Glyph sizes per book: how far apart books are, i.e. the scale range a detector and a classifier
must cover for a book they have not seen.

    .venv/bin/python benchmarks/book_glyph_sizes.py ../shared/data/kuzushiji-sample/train_labels_777.csv [demo/data/train.csv ...]

Per file: every book's median box height (pixels of its scans; train_labels_777.csv has no images,
its scans are ~3000-3900 px high), and the spread of the books' medians: min, max, max/min and the
range relative to the median of all boxes.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kzlib.data import labels_table, read_labels_csv  # noqa: E402
from kzlib.folds import book_id  # noqa: E402


def main():
    for path in sys.argv[1:]:
        t = labels_table(read_labels_csv(path))
        t["book"] = t["image_id"].map(book_id)
        books = t.groupby("book")["h"].agg(["median", "count"]).sort_values("median")
        m, overall = books["median"], t["h"].median()
        print(f"{path}: {len(books)} books, {len(t)} boxes; median box height of all boxes {overall:.0f} px")
        print("  per book (median h, boxes): " + ", ".join(f"{b} {r['median']:.0f} ({r['count']})"
                                                         for b, r in books.iterrows()))
        print(f"  book medians {m.min():.0f}-{m.max():.0f} px: max/min {m.max() / m.min():.2f}; "
              f"{m.min() / overall:.2f}x-{m.max() / overall:.2f}x the median of all boxes; "
              f"10th-90th percentile of books {m.quantile(0.1) / overall:.2f}x-{m.quantile(0.9) / overall:.2f}x")


if __name__ == "__main__":
    main()

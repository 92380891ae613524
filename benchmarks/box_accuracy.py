"""A classifier's accuracy on the boxes that hit a character, apart from the detector's misses and
false positives: each box of a detailed CSV takes the class of the true box it overlaps most (IoU
>= 0.5, as the classifier's own training targets are made); boxes without one are left out.

    .venv/bin/python benchmarks/box_accuracy.py demo/data/test_labels.csv \
        demo/run/classify/resnet18/fold0/test_detailed.csv.gz [more detailed CSVs]

Prints, per file, the boxes, how many hit a character, and the accuracy of ``pred`` on those.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from kzlib.data import SEG_FP, labels_table, read_labels_csv  # noqa: E402
from kzlib.detailed import read_detailed  # noqa: E402
from kzlib.detect.predict import match_true  # noqa: E402


def accuracy_on_hits(truth, detailed) -> tuple[int, float]:
    """(boxes that hit a character, accuracy of their ``pred``)."""
    hits = correct = 0
    by_page = {k: g for k, g in truth.groupby("image_id")}
    for image_id, boxes in detailed.groupby("image_id"):
        gt = by_page.get(image_id)
        if gt is None:
            continue
        true = np.asarray(match_true(boxes[list("xywh")].to_numpy(float), gt[list("xywh")].to_numpy(float),
                                     gt["code"].tolist()))
        hit = true != SEG_FP
        hits += int(hit.sum())
        correct += int((boxes["pred"].to_numpy()[hit] == true[hit]).sum())
    return hits, correct / max(hits, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("labels", type=Path, help="image_id,labels CSV of the pages (train.csv, test_labels.csv)")
    ap.add_argument("detailed", type=Path, nargs="+")
    a = ap.parse_args()
    truth = labels_table(read_labels_csv(a.labels), source=a.labels)
    for path in a.detailed:
        df = read_detailed(path)
        hits, acc = accuracy_on_hits(truth, df)
        print(f"{path}: {len(df)} boxes, {hits} hit a character, accuracy on those {acc:.3f}")


if __name__ == "__main__":
    main()

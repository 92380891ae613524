"""Benchmark: score real pages against centre points derived from their own boxes.

    .venv/bin/python benchmarks/metric_speed.py [LABELS_CSV]   (default: ../shared/data/kuzushiji-sample/train_labels_777.csv)

Prints the time of kzlib.metric.score (parsing included) and of the official per-box loop
(tests/official_metric.py), and checks that both give the same counts.
"""

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from kzlib.data import read_labels_csv  # noqa: E402
from kzlib.metric import score  # noqa: E402
from official_metric import official_counts  # noqa: E402


def centre_points(labels: object, rng: np.random.Generator) -> object:
    if not isinstance(labels, str):
        return labels
    t = np.array(labels.split(), dtype=object).reshape(-1, 5)
    xy = t[:, 1:].astype(float)
    cx, cy = xy[:, 0] + xy[:, 2] / 2, xy[:, 1] + xy[:, 3] / 2
    keep = rng.random(len(t)) > 0.1  # drop 10% so that fn > 0
    return " ".join(f"{c} {int(x)} {int(y)}" for c, x, y in zip(t[keep, 0], cx[keep], cy[keep]))


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/kuzushiji-sample/train_labels_777.csv")
    sol = read_labels_csv(path)
    rng = np.random.default_rng(0)
    sub = pd.DataFrame({"image_id": sol["image_id"], "labels": [centre_points(s, rng) for s in sol["labels"]]})
    n = int(sum(len(s.split()) // 5 for s in sol["labels"].dropna()))
    times = []
    for _ in range(7):
        t = time.perf_counter()
        result = score(sub, sol)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    ref = official_counts(sub["labels"].tolist(), sol["labels"].tolist())
    t_ref = time.perf_counter() - t
    same = ref == (result["tp"], result["fp"], result["fn"])
    print(f"pages {len(sol)}, true boxes {n}")
    print(f"kzlib.metric.score: median {np.median(times):.3f} s (min {min(times):.3f}) f1 {result['f1']:.4f}")
    print(f"official per-box loop: {t_ref:.3f} s; identical counts: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()

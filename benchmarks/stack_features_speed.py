"""Level-2 feature building speed on a large synthetic detailed file (vectorised pandas/numpy).

    .venv/bin/python benchmarks/stack_features_speed.py [--boxes 100000] [--groups 2] [--top-k 5]

Writes G detailed files of the same random boxes (pages of 150 boxes, 4,788 classes), then times
``kzlib.stack.features.build_from_files`` (reading, blending, candidate rows) and prints boxes/s.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kzlib.detailed import write_detailed  # noqa: E402
from kzlib.stack.features import build_from_files  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--boxes", type=int, default=100_000)
    p.add_argument("--groups", type=int, default=2)
    p.add_argument("--top-k", type=int, default=5)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    classes = np.array([f"U+{c:04X}" for c in range(0x4E00, 0x4E00 + 4788)] + ["seg_fp"], dtype=object)
    n = a.boxes
    base = pd.DataFrame({"image_id": [f"100{p // 150:05d}_{p % 7:05d}_1" for p in range(n)],
                         "x": rng.integers(0, 2000, n).astype(float), "y": rng.integers(0, 3000, n).astype(float),
                         "w": rng.integers(20, 90, n).astype(float), "h": rng.integers(20, 90, n).astype(float)})
    true = classes[rng.integers(0, len(classes), n)]
    with tempfile.TemporaryDirectory() as tmp:
        groups = {}
        for g in range(a.groups):
            idx = np.stack([rng.choice(len(classes), a.top_k, replace=False) for _ in range(n)])
            logits = np.sort(rng.normal(0, 4, (n, a.top_k)), axis=1)[:, ::-1]
            df = base.assign(pred=classes[idx[:, 0]], true=true,
                             top_k_classes=[" ".join(r) for r in classes[idx]],
                             top_k_logits=[" ".join(f"{v:.4f}" for v in r) for r in logits])
            write_detailed(df, Path(tmp) / f"g{g}.csv.gz")
            groups[f"kind{g}"] = [Path(tmp) / f"g{g}.csv.gz"]
        t0 = time.time()
        rows = build_from_files(groups)
        dt = time.time() - t0
    print(f"{n} boxes x {a.groups} groups -> {len(rows)} candidate rows, {rows.shape[1]} columns in {dt:.2f} s: "
          f"{n / dt:,.0f} boxes/s, {len(rows) / dt:,.0f} rows/s")


if __name__ == "__main__":
    main()

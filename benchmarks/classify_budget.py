"""The classifier alone on true boxes: wall time and held-out accuracy/F1 of configs, to compare
optimisers, schedules and speed settings at a CPU budget.

    .venv/bin/python benchmarks/classify_budget.py --data demo/data --config a.json b.json ... [--fold 0 --n-folds 2]

Each config (ClassifyConfig fields, JSON) trains on the fold's training pages with their true boxes
(as a perfect detector's OOF boxes) and is validated on the held-out book once at the end.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from kzlib.classify.config import ClassifyConfig  # noqa: E402
from kzlib.classify.train import train  # noqa: E402
from kzlib.config import load_config  # noqa: E402
from kzlib.data import labels_table, read_labels_csv  # noqa: E402


def true_boxes(data: Path, out: Path) -> Path:
    t = labels_table(read_labels_csv(data / "train.csv"))
    t = t.rename(columns={"code": "true"}).assign(score=1.0)
    t[["image_id", "x", "y", "w", "h", "score", "true"]].to_csv(out, index=False)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--config", type=Path, nargs="+", required=True)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--n-folds", type=int, default=2)
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        boxes = true_boxes(a.data, Path(tmp) / "boxes.csv")
        for c in a.config:
            cfg = load_config(ClassifyConfig, c)
            cfg.n_folds, cfg.device = a.n_folds, "cpu"
            t0 = time.time()
            r = train(a.data, boxes, Path(tmp) / c.stem, cfg, a.fold)
            log = pd.read_csv(Path(tmp) / c.stem / "log.csv")
            rows.append({"config": c.name, "seconds": round(time.time() - t0), "epochs": cfg.epochs,
                         "train_acc": round(log["train_accuracy"].iloc[-1], 3),
                         "val_acc": round(log["accuracy"].dropna().iloc[-1], 3), "val_f1": round(r["best_f1"], 3)})
            print(json.dumps(rows[-1]), flush=True)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()

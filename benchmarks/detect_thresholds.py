"""Class-agnostic F1 of a detector run on its held-out pages at several score thresholds.

    .venv/bin/python benchmarks/detect_thresholds.py RUN_DIR DATA_DIR [--thresholds 0.3 0.4 0.5 0.6]
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kzlib.detect.predict import agnostic_f1, detect_pages, load_run  # noqa: E402
from kzlib.pages import split_pages  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("run", type=Path)
    p.add_argument("data", type=Path)
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    a = p.parse_args()
    split = json.loads((a.run / "split.json").read_text())
    _, val = split_pages(a.data, split["fold"], split["n_folds"], split["val_ids"])
    det = load_run(a.run, score_threshold=min(a.thresholds))
    cfg, model, dev = det.cfg, det.model, det.device
    detections = detect_pages(model, val, cfg, dev)
    for t in a.thresholds:
        kept = [(b[s >= t], s[s >= t]) for b, s in detections]
        r = agnostic_f1(val, kept)
        print(f"score >= {t:.2f}: F1 {r['f1']:.4f} precision {r['precision']:.4f} recall {r['recall']:.4f}")


if __name__ == "__main__":
    main()

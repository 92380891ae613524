"""Pseudolabel thresholds on a run_local work folder: for each --min-gap, the fraction of the
validation boxes kept and the accuracy of their labels (the blend of the base kinds, per fold),
and the fraction of test boxes kept.

    .venv/bin/python benchmarks/pseudolabel_thresholds.py WORK_DIR --kinds resnet18 resnet34 [--folds 2]
"""

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kzlib.detailed import blend_files  # noqa: E402
from kzlib.pseudolabel import report, select  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("work", type=Path)
    p.add_argument("--kinds", nargs="+", required=True)
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--gaps", type=float, nargs="+", default=[0, 1, 2, 3, 5, 8])
    p.add_argument("--max-second", type=float, default=10.0)
    a = p.parse_args()
    run = lambda kind, k: a.work / "classify" / kind / f"fold{k}"  # noqa: E731
    valid = pd.concat([blend_files([run(kind, k) / "detailed.csv.gz" for kind in a.kinds]) for k in range(a.folds)],
                      ignore_index=True)
    test = blend_files([run(kind, k) / "test_detailed.csv.gz" for kind in a.kinds for k in range(a.folds)])
    rows = []
    for gap in a.gaps:
        v = report(valid, select(valid, gap, a.max_second))
        t = report(test, select(test, gap, a.max_second))
        rows.append({"min_gap": gap, "valid_kept": v["kept_fraction"], "valid_kept_accuracy": v.get("kept_accuracy"),
                     "valid_all_accuracy": v.get("all_accuracy"), "test_kept": t["kept_fraction"]})
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.3f}"))


if __name__ == "__main__":
    main()

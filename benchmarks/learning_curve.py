"""The demo chain with more training: the detector's and the classifier's epochs times 1, 2, 4 ...
on the same data, everything else as the preset. Shows whether the demo's remaining gap is budget
or method.

    .venv/bin/python benchmarks/learning_curve.py --data demo/data --out bench/curve [--preset demo]
        [--factors 1 2 4] [--reuse 1=demo/run]

Each factor runs `kzlib run` into OUT/x{factor} (resumable: rerun to continue); ``--reuse F=WORK``
takes an existing run of the same preset for factor F (e.g. the `make demo` run for 1x). Prints one
row per factor: epochs, stage seconds, the detector's class-agnostic F1 and every model's F1 on the
folds' held-out pages and on the test book, and writes OUT/curve.csv.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from kzlib.preset import preset_path  # noqa: E402


def scaled_preset(preset: dict, factor: float) -> dict:
    """The preset with the detector's and every base classifier's epochs times ``factor``
    (validated once, at the end, as the demo); pseudolabel fine-tunes unchanged."""
    p = json.loads(json.dumps(preset))
    p["detect"]["epochs"] = max(1, round(p["detect"].get("epochs", 1) * factor))
    for kind in p["kinds"].values():
        kind["epochs"] = max(1, round(kind.get("epochs", 1) * factor))
        kind["validate_every"] = kind["epochs"]
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--factors", type=float, nargs="+", default=[1, 2, 4])
    ap.add_argument("--reuse", nargs="*", default=[], metavar="F=WORK")
    a = ap.parse_args()
    base = json.loads(preset_path(a.preset).read_text())
    reuse = {float(k): Path(v) for k, v in (r.split("=", 1) for r in a.reuse)}
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for f in a.factors:
        preset = scaled_preset(base, f)
        work = reuse.get(f) or a.out / f"x{f:g}"
        if f not in reuse:
            path = a.out / f"preset_x{f:g}.json"
            path.write_text(json.dumps(preset, indent=1))
            print(f"== x{f:g}: {work}", flush=True)
            subprocess.run([sys.executable, str(ROOT / "run_local.py"), "--data", str(a.data), "--work", str(work),
                            "--preset", str(path)], check=True)
        summary = pd.read_csv(work / "summary.csv").set_index("model")
        times = pd.read_csv(work / "stage_times.csv")
        row = {"factor": f, "detector epochs": preset["detect"]["epochs"],
               "classifier epochs": next(iter(preset["kinds"].values()))["epochs"],
               "stage seconds": round(times["seconds"].sum())}
        for model, r in summary.iterrows():
            row[f"{model} valid"] = round(r["valid_f1"], 4)
            row[f"{model} test"] = round(r["test_f1"], 4)
        rows.append(row)
    table = pd.DataFrame(rows)
    table.to_csv(a.out / "curve.csv", index=False)
    print(table.T.to_string(header=False))


if __name__ == "__main__":
    main()

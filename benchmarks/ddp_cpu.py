"""Data-parallel training on the CPU, for the record: one epoch of the demo preset's classifier and
detector with 1 process (all cores) and with 2 processes under torchrun (gloo, one thread each),
same global batch. Prints crops/s of each.

    .venv/bin/python benchmarks/ddp_cpu.py --data demo/data [--preset demo] [--out /tmp/ddp]

The classifier trains on the true boxes (as a perfect detector's OOF boxes). The multi-GPU path is
measured with a preset of ``"gpus": N`` through ``run_local.py`` on the GPU machine.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from kzlib.config import save_config  # noqa: E402
from kzlib.data import labels_table, read_labels_csv  # noqa: E402
from kzlib.preset import load_preset, preset_path  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--out", type=Path, default=Path("/tmp/kzlib-ddp-bench"))
    a = ap.parse_args()
    cfg = load_preset(preset_path(a.preset))
    a.out.mkdir(parents=True, exist_ok=True)
    boxes = a.out / "true_boxes.csv"
    t = labels_table(read_labels_csv(a.data / "train.csv")).rename(columns={"code": "true"}).assign(score=1.0)
    t[["image_id", "x", "y", "w", "h", "score", "true"]].to_csv(boxes, index=False)
    kind = next(iter(cfg.kinds))
    jobs = {"classifier": ("kzlib.classify", replace(cfg.classify_config(kind), epochs=1, validate_every=100),
                           ["--boxes", str(boxes)]),
            "detector": ("kzlib.detect", replace(cfg.detect_config(), epochs=1), [])}
    rows = []
    for name, (module, c, extra) in jobs.items():
        for n in (1, 2):
            out = a.out / f"{name}-{n}"
            shutil.rmtree(out, ignore_errors=True)
            cfg_file = a.out / f"{name}.json"
            save_config(c, cfg_file)
            launcher = [sys.executable] if n == 1 else \
                [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // n))}
            t0 = time.time()
            subprocess.run(launcher + ["-m", module, "train", str(a.data), "--out", str(out), "--config",
                                       str(cfg_file), "--fold", "0", *extra], check=True, env=env,
                           stdout=subprocess.DEVNULL)
            log = pd.read_csv(out / "log.csv")
            rows.append({"network": name, "processes": n, "threads each": env["OMP_NUM_THREADS"],
                         "crops/s (training)": round(float(log["train_images_per_s"].iloc[-1]), 2),
                         "wall s": round(time.time() - t0, 1)})
            print(rows[-1], flush=True)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()

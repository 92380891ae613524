"""Issue 24's battery of bad inputs, rerun: each case, its exit code and the line the user sees.

    .venv/bin/python benchmarks/nothing_silent.py --work demo/run --data demo/data [--tmp /tmp/battery]

``--work`` is a finished runner work folder on ``--data`` (``make demo`` makes one). Each case runs
the kit's own command line in a scratch folder and prints: case, exit code, the last line of stderr
(or what was written, where the case is about outputs). The disk-full case is pinned by
tests/test_runs.py (a writer failing the way torch's zip writer does) and the order speed by
benchmarks/order_speed.py; both are left out here.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

PY = [sys.executable, "-m", "kzlib"]


def run(args, **kw) -> tuple[int, str]:
    r = subprocess.run(PY + [str(a) for a in args], capture_output=True, text=True, **kw)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    return r.returncode, (lines[-1] if lines else "(nothing on stderr)")[:220]


def say(case: str, rc: int, line: str) -> None:
    print(json.dumps({"case": case, "exit": rc, "says": line}, ensure_ascii=False), flush=True)


def pages_csv(out: Path) -> str:
    if not (out / "pages.csv").is_file():
        return "no pages.csv"
    p = pd.read_csv(out / "pages.csv", keep_default_na=False)
    return "; ".join(f"{r.page}: {r.error or 'read'}" for r in p.itertuples())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--tmp", type=Path, default=Path("/tmp/battery"))
    a = p.parse_args()
    t = a.tmp
    shutil.rmtree(t, ignore_errors=True)
    t.mkdir(parents=True)
    page = sorted((a.data / "test_images").iterdir())[0]
    bundle = t / "bundle"
    rc, line = run(["export", a.work, "--out", bundle, "--folds", "best"])
    say("export of a finished work folder (--folds best)", rc, line)

    # 1. a file name that is not UTF-8
    odd = t / "odd"
    odd.mkdir()
    shutil.copyfile(page, os.path.join(os.fsencode(odd), b"\xff\xfe page.jpg"))
    rc, _ = run(["read", odd, "--model", bundle, "--out", t / "out1"])
    say("1. a page whose file name is not UTF-8", rc, pages_csv(t / "out1"))

    # 2. a tampered bundle; a foreign manifest
    tampered = t / "tampered"
    shutil.copytree(bundle, tampered)
    weights = next(f for f in sorted(tampered.rglob("*.pth")) if "classify" in str(f))
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    say("2a. a classifier's weights altered", *run(["read", page, "--model", tampered, "--out", t / "out2a"]))
    foreign = t / "foreign"
    shutil.copytree(bundle, foreign)
    m = json.loads((foreign / "manifest.json").read_text())
    m["format"] = 99
    (foreign / "manifest.json").write_text(json.dumps(m))
    say("2b. a manifest of an unknown format", *run(["read", page, "--model", foreign, "--out", t / "out2b"]))

    # 3. two pages with the same stem; --out inside the input with --png, run twice
    same = t / "same"
    same.mkdir()
    shutil.copyfile(page, same / "p.jpg")
    import cv2

    cv2.imwrite(str(same / "p.png"), cv2.imread(str(page)))
    rc, line = run(["read", same, "--model", bundle, "--out", same / "out", "--png"])
    rc2, line2 = run(["read", same, "--model", bundle, "--out", same / "out", "--png"])
    say("3. p.jpg and p.png, --out inside the input with --png, twice", max(rc, rc2),
        pages_csv(same / "out") + f"; submission.csv {'yes' if (same / 'out' / 'submission.csv').is_file() else 'no'}")

    # 4. export of a stale work folder (train.csv edited after the run)
    stale_data, stale_work = t / "stale_data", t / "stale_work"
    shutil.copytree(a.data, stale_data)
    shutil.copytree(a.work, stale_work)
    train = pd.read_csv(stale_data / "train.csv", keep_default_na=False)
    train.iloc[:-1].to_csv(stale_data / "train.csv", index=False)
    for f in stale_work.rglob("split.json"):  # a run's split names the data folder it trained on
        f.write_text(f.read_text().replace(str(a.data.resolve()), str(stale_data.resolve())))
    say("4. export of a work folder whose train.csv changed", *run(["export", stale_work, "--out", t / "b4"]))

    # 6. "gpus": 2 with a batch that does not split; with a CPU device
    tiny = json.loads((Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "preset_tiny.json").read_text())
    odd_batch = dict(tiny, gpus=2, device="cuda")
    odd_batch["kinds"]["a"]["batch_size"] = 3
    (t / "gpus_batch.json").write_text(json.dumps(odd_batch))
    say("6a. gpus 2, a batch of 3", *run(["run", "--data", a.data, "--work", t / "w6", "--preset",
                                           t / "gpus_batch.json", "--dry-run"]))
    cpu = dict(tiny, gpus=2, device="cpu")
    for k in cpu["kinds"].values():
        k["batch_size"] = 2
    (t / "gpus_cpu.json").write_text(json.dumps(cpu))
    say("6b. gpus 2 on a CPU device", *run(["run", "--data", a.data, "--work", t / "w6b", "--preset",
                                             t / "gpus_cpu.json", "--dry-run"]))

    # 7. a folder with a link loop; a 1x1 image
    loop = t / "loop"
    (loop / "sub").mkdir(parents=True)
    os.symlink(loop, loop / "sub" / "back")
    shutil.copyfile(page, loop / "page.jpg")
    cv2.imwrite(str(loop / "tiny.png"), np.zeros((1, 1, 3), np.uint8))
    rc, _ = run(["read", loop, "--model", bundle, "--out", t / "out7"])
    say("7. a link loop and a 1x1 image beside a page", rc, pages_csv(t / "out7"))

    # 8. random bytes where a weights file should be
    wdir = t / "weights"
    wdir.mkdir()
    (wdir / "resnet152_imagenet1k_v1.pth").write_bytes(os.urandom(4096))
    r = subprocess.run(PY + ["weights", "list", "--dir", str(wdir)], capture_output=True, text=True)
    line = next((x for x in r.stdout.splitlines() if "resnet152" in x), r.stdout.strip()[-200:])
    say("8. weights list on random bytes named like a registered file", r.returncode, line.strip())


if __name__ == "__main__":
    main()

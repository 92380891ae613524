"""Issue 24's battery of bad inputs, rerun, and issue 33's (``--round 3``: bundles from strangers and
bad input, round three): each case, its exit code and the line the user sees.

    .venv/bin/python benchmarks/nothing_silent.py --work demo/run --data demo/data [--tmp /tmp/battery] [--round 3]

``--work`` is a finished runner work folder on ``--data`` (``make demo`` makes one). Each case runs
the kit's own command line in a scratch folder and prints: case, exit code, the last line of stderr
(or what was written, where the case is about outputs). The disk-full case is pinned by
tests/test_runs.py (a writer failing the way torch's zip writer does) and the order speed by
benchmarks/order_speed.py; both are left out here.

Round three runs the kit as ``python -m kzlib`` with this environment, so ``PYTHONPATH=OLD_TREE``
runs an older kit on the same cases (the "before" of BENCHMARKS.md). Its full-disk cases mount a
small tmpfs (root only; said and skipped elsewhere); the cases that ran out of memory run under an
address-space limit (4 GiB; 6 GiB for ``read``, whose threads reserve more), so the old kit fails
there instead of taking the machine.
"""

import argparse
import hashlib
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

PY = [sys.executable, "-m", "kzlib"]


def run(args, **kw) -> tuple[int, str]:
    r = subprocess.run(PY + [str(a) for a in args], capture_output=True, text=True, **kw)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    return r.returncode, ascii_line(lines[-1] if lines else "(nothing on stderr)")[:220]


def ascii_line(text: str) -> str:
    """The line as the terminal got it, with control characters shown (``\\x1b``)."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def capped(limit: int = 4 << 30):
    """A subprocess preexec: at most ``limit`` bytes of address space (a runaway allocation fails)."""
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


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
    p.add_argument("--round", choices=("all", "3"), default="all", help="3: issue 33's cases only")
    p.add_argument("--only", nargs="*", default=(), help="with --round 3: only the cases of these numbers (33.1 ...)")
    a = p.parse_args()
    t = a.tmp
    shutil.rmtree(t, ignore_errors=True)
    t.mkdir(parents=True)
    if a.round == "3":
        round_three(a.work, a.data, t, a.only)
        return
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
    round_three(a.work, a.data, t / "r3")


class Payload:
    """Unpickling it opens (creates) a file: a stranger's code, harmless here."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def poison(path: Path, marker: Path) -> None:
    """A checkpoint (or any file) replaced by a torch file that holds the payload beside weights."""
    import torch

    state = {"model": {"w": torch.zeros(2)}, "config": {}, "epoch": 0, "evil": Payload(marker)}
    if path.is_file() or path.is_symlink():
        try:
            state = {**torch.load(path, weights_only=True), "evil": Payload(marker)}
        except Exception:
            pass
        path.unlink()
    torch.save(state, path)


def pwned(marker: Path) -> str:
    ran = marker.exists()
    marker.unlink(missing_ok=True)
    return "PWNED created" if ran else "nothing ran"


def tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def round_three(work: Path, data: Path, t: Path, only=()) -> None:
    """Issue 33's cases: each says its exit code and the last line of stderr (or what happened);
    ``only``: the case numbers to run (all when empty)."""
    want = lambda case: not only or any(case == o or case.startswith(o + ".") for o in only)  # noqa: E731
    t.mkdir(parents=True, exist_ok=True)
    page = sorted((data / "test_images").iterdir())[0]
    marker = t / "PWNED"

    # 1. a pickled payload in a bundle, in a work folder used as --model, on export
    bundle = t / "bundle"
    say("33.0 export --folds best", *run(["export", work, "--out", bundle, "--folds", "best"]))
    m = json.loads((bundle / "manifest.json").read_text())
    det = m["detectors"][0]
    poison(bundle / det / "best.pth", marker)  # the recipe: the file and its SHA-256 in the manifest
    m["files"][f"{det}/best.pth"] = sha(bundle / det / "best.pth")
    (bundle / "manifest.json").write_text(json.dumps(m))
    w = t / "work"
    shutil.copytree(work, w, copy_function=os.link)
    poison(w / "detect" / "fold0" / "best.pth", marker)
    if want("33.1"):
        for extra in ([], ["--trust"]):
            rc, line = run(["read", page, "--model", bundle, "--out", t / "o1", *extra])
            say(f"33.1a read a poisoned bundle {' '.join(extra)}".strip(), rc, f"{pwned(marker)}; {line}")
        (bundle / "manifest.json").write_text(json.dumps({**m, "format": 2}))  # as an older kit wrote it
        rc, line = run(["read", page, "--model", bundle, "--out", t / "o1d"])
        say("33.1a the same, its manifest of format 2 (an older kit's bundle)", rc, f"{pwned(marker)}; {line}")
        for extra in ([], ["--trust"]):
            rc, line = run(["read", page, "--model", w, "--out", t / "o1w", *extra])
            say(f"33.1b read --model a poisoned work folder {' '.join(extra)}".strip(), rc, f"{pwned(marker)}; {line}")
        rc, line = run(["export", w, "--out", t / "b1"])
        said = f"{pwned(marker)}; {line}"
        if rc == 0:  # what it shipped, read by whoever downloads it
            run(["read", page, "--model", t / "b1", "--out", t / "o1c"])
            said += f"; the bundle read: {pwned(marker)}"
        say("33.1c export a poisoned work folder", rc, said)

    clean = t / "clean"
    run(["export", work, "--out", clean, "--folds", "best"])
    m = json.loads((clean / "manifest.json").read_text())
    det = m["detectors"][0]
    # 2. a manifest without files; a detector outside the bundle; a link out of it
    if want("33.2"):
        evil = t / "evil" / "detect" / "fold0"
        shutil.copytree(clean / det, evil)
        cases = {"33.2a manifest without files": {k: v for k, v in m.items() if k != "files"},
                 "33.2b detectors ../evil/detect/fold0": {**m, "detectors": ["../evil/detect/fold0"]},
                 "33.2c a detector at an absolute path": {**m, "detectors": [str(evil)]}}
        for case, manifest in cases.items():
            (clean / "manifest.json").write_text(json.dumps(manifest))
            say(case, *run(["read", page, "--model", clean, "--out", t / "o2"]))
        (clean / "manifest.json").write_text(json.dumps(m))
        weights = next(f for f in sorted((clean / det).iterdir()) if f.suffix in (".pth", ".safetensors"))
        shutil.copyfile(weights, evil / weights.name)
        weights.unlink()
        weights.symlink_to(evil / weights.name)
        say(f"33.2d {weights.name} a link out of the bundle", *run(["read", page, "--model", clean, "--out", t / "o2d"]))
        weights.unlink()
        shutil.copyfile(evil / weights.name, weights)

    # 3. two volumes, one output folder, the same page name
    if want("33.3"):
        others = sorted((data / "test_images").iterdir())
        for vol, src in (("vol1", others[0]), ("vol2", others[-1])):
            (t / vol).mkdir()
            shutil.copyfile(src, t / vol / "0001.jpg")
        run(["read", t / "vol1", "--model", clean, "--out", t / "o3"])
        rc, _ = run(["read", t / "vol2", "--model", clean, "--out", t / "o3"])
        doc = json.loads((t / "o3" / "0001.json").read_text())
        say("33.3 read vol1 then vol2 into one --out (both 0001.jpg)", rc, f"0001.json is of {Path(doc['file']).parent.name}")

    # 4. a pickle planted as a prediction part
    if want("33.4"):
        run_dir = w / "detect" / "fold1"
        parts = run_dir / "parts"
        parts.mkdir(exist_ok=True)
        for name in ("test_boxes-00000.pkl", "test_boxes-00000.parquet"):
            (parts / name).write_bytes(pickle.dumps(Payload(marker)))
        r = subprocess.run(PY[:2] + ["kzlib.detect", "predict", str(run_dir), str(data), "--split", "test"],
                           capture_output=True, text=True)
        lines = [x for x in r.stderr.splitlines() + r.stdout.splitlines() if "warning" in x or "error" in x]
        say("33.4 a pickle planted in detect/foldK/parts/", r.returncode,
            f"{pwned(marker)}; {ascii_line(lines[-1])[:160] if lines else 'nothing said'}")

    # 5-7. a strip, a 3-page TIFF, 12-bit data in a 16-bit PNG
    if want("33.5"):
        from PIL import Image
        import numpy as np

        odd = t / "odd"
        odd.mkdir()
        Image.new("L", (50_000, 40), 255).save(odd / "strip.png")
        shutil.copyfile(page, odd / "page.jpg")
        t0 = time.time()
        r = subprocess.run(PY + ["read", str(odd), "--model", str(clean), "--out", str(t / "o5")], capture_output=True,
                           text=True, preexec_fn=capped(6 << 30))
        say("33.5 a 50,000x40 strip beside a page (6 GiB cap)", r.returncode,
            f"{time.time() - t0:.0f} s; {pages_csv(t / 'o5')}")
        tif = t / "tif"
        tif.mkdir()
        im = Image.open(page).convert("RGB")
        im.save(tif / "scan.tif", save_all=True, append_images=[im.rotate(180), im])
        rc, _ = run(["read", tif, "--model", clean, "--out", t / "o6"])
        say("33.6 a 3-page TIFF", rc, pages_csv(t / "o6"))
        ramp = np.linspace(0, 4095, 256 * 256).reshape(256, 256).astype(np.uint16)
        Image.fromarray(ramp).save(t / "deep.png")
        Image.fromarray(ramp).save(t / "deep.tif")
        code = ("import sys; from pathlib import Path; from kzlib.images import read_image; from kzlib.read import upright\n"
                "for f in sys.argv[1:]: print(Path(f).suffix, round(float(read_image(upright(Path(f), Path(f).parent / "
                "'cache', Path(f).stem + Path(f).suffix)).mean()), 1))")
        r = subprocess.run([sys.executable, "-c", code, str(t / "deep.png"), str(t / "deep.tif")], capture_output=True,
                           text=True)
        say("33.7 12-bit data in a 16-bit PNG and TIFF: mean grey (0-255)", r.returncode,
            "; ".join(r.stdout.split("\n")).strip("; ") or ascii_line(r.stderr.strip().splitlines()[-1]))

    # 8. reading order of 10^5 tall overlapping boxes in one column
    if want("33.8"):
        n = 100_000
        labels = " ".join(f"U+3042 0 {i} 10 1000" for i in range(n))
        pd.DataFrame({"image_id": ["col"], "labels": [labels]}).to_csv(t / "tall.csv", index=False)
        t0 = time.time()
        r = subprocess.run(PY + ["order", str(t / "tall.csv"), "--out", str(t / "tall_order.csv")], capture_output=True,
                           text=True, preexec_fn=capped())
        said = [x for x in r.stderr.splitlines() if x.strip()]
        say("33.8 kzlib order: 10^5 tall overlapping boxes, one column (4 GiB cap)", r.returncode,
            f"{time.time() - t0:.0f} s; " + (ascii_line(said[-1])[:120] if said else r.stdout.strip()[:120]))

    # 10-11. a full disk under export and read (a 16 MiB tmpfs)
    if want("33.10"):
        disk = t / "disk"
        if tmpfs(disk, "16m"):
            try:
                rc, line = run(["export", work, "--out", disk / "B", "--folds", "best"])
                left = sorted(p.name for p in disk.iterdir())
                say("33.10 export to a full disk", rc, f"{line}; left: {left or 'nothing'}")
                shutil.rmtree(disk / ".B.building", ignore_errors=True)
                three = t / "three"
                three.mkdir()
                for k in range(3):
                    shutil.copyfile(page, three / f"p{k}.jpg")
                (disk / "out").mkdir()
                with open(disk / "fill", "wb") as fh:  # the disk full but for a few bytes
                    try:
                        while True:
                            fh.write(b"\0" * 65536)
                            fh.flush()
                    except OSError:
                        pass
                r = subprocess.run(PY + ["read", str(three), "--model", str(clean), "--out", str(disk / "out")],
                                   capture_output=True, text=True)
                errors = [x for x in r.stderr.splitlines() if x.startswith("error")]
                say("33.11 read 3 pages to a full disk", r.returncode,
                    f"{len(errors)} error line(s); {ascii_line(errors[-1])[:160] if errors else ''}")
            finally:
                subprocess.run(["umount", str(disk)], capture_output=True)
        else:
            say("33.10-11 a full disk", -1, "skipped: cannot mount a tmpfs here (tests/test_read.py pins both)")

    # 12. manifests without detectors / n_tta, detectors [], a JSON list
    if want("33.12"):
        for case, manifest in (("no detectors", {k: v for k, v in m.items() if k != "detectors"}),
                               ("no n_tta", {k: v for k, v in m.items() if k != "n_tta"}),
                               ("detectors []", {**m, "detectors": []}), ("a JSON list", [m])):
            (clean / "manifest.json").write_text(json.dumps(manifest))
            say(f"33.12 manifest: {case}", *run(["read", page, "--model", clean, "--out", t / "o12"]))
        (clean / "manifest.json").write_text(json.dumps(m))

    # 13. a coordinate of 10^20; a box at 2^62
    if want("33.13"):
        known = pd.read_csv(data / "unicode_translation.csv")["Unicode"].iloc[0]
        for case, box in (("a coordinate of 10^20", f"{known} 100000000000000000000 10 10 10"),
                          ("a box at 2^62", f"{known} {2**62} 10 {2**62} 10")):
            d13 = t / "d13"
            shutil.rmtree(d13, ignore_errors=True)
            shutil.copytree(data, d13)
            train = pd.read_csv(d13 / "train.csv", keep_default_na=False)
            train.loc[0, "labels"] = f"{box} {train.loc[0, 'labels']}".strip()
            train.to_csv(d13 / "train.csv", index=False)
            r = subprocess.run(PY + ["data", "check", str(d13)], capture_output=True, text=True)
            said = [x for x in (r.stderr + r.stdout).splitlines() if "range" in x or "Error" in x or x.strip() == "ok"]
            say(f"33.13 data check: {case}", r.returncode, ascii_line(said[-1] if said else r.stdout.strip()[-160:])[:200])

    # 14-15. --folds a / 0-1; --device gpu
    if want("33.14"):
        for folds in ("a", "0-1"):
            say(f"33.14 run --folds {folds}", *run(["run", "--data", data, "--work", t / "w14", "--preset", "demo",
                                                    "--folds", folds, "--dry-run"]))
        say("33.15 read --device gpu", *run(["read", page, "--model", clean, "--out", t / "o15", "--device", "gpu"]))
        say("33.15 run --device gpu", *run(["run", "--data", data, "--work", t / "w15", "--preset", "demo", "--device",
                                            "gpu", "--dry-run"]))

    # 16-17. a picture named with # % ?; a name with terminal escape codes
    if want("33.16"):
        named = t / "named"
        named.mkdir()
        shutil.copyfile(page, named / "a#b%41?.jpg")
        (named / "\x1b[2J\x1b[31mred.jpg").write_bytes(b"")
        r = subprocess.run(PY + ["read", str(named), "--model", str(clean), "--out", str(t / "o16"), "--png"],
                           capture_output=True, text=True)
        index = (t / "o16" / "index.html").read_text() if (t / "o16" / "index.html").is_file() else ""
        src = next((x.split("src='")[1].split("'")[0] for x in index.splitlines() if "<img src='" in x and "a" in x), "-")
        from urllib.parse import unquote

        say("33.16 --png with a#b%41?.jpg: the index's <img src>", r.returncode,
            f"{src} ({'found' if (t / 'o16' / unquote(src.split('#')[0].split('?')[0])).is_file() else 'missing'})")
        errors = [x for x in r.stderr.splitlines() if x.startswith("error")]
        say("33.17 a name with escape codes: the line printed", r.returncode,
            ascii_line(errors[0])[:160] + (" (raw escape codes)" if errors and "\x1b" in errors[0] else ""))

if __name__ == "__main__":
    main()
